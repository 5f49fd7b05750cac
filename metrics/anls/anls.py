"""DocVQA ANLS, scored exactly as lmms-eval's `anls` metric (the Qwen-VL / RRC definition).

Self-contained on purpose: `evaluate.load("metrics/anls")` copies this one file.
"""

import datasets
import evaluate

_CITATION = """\
@inproceedings{biten2019scene,
  title={Scene Text Visual Question Answering},
  author={Biten, Ali Furkan and Tito, Ruben and Mafla, Andres and Gomez, Lluis and Rusinol, Marcal
          and Valveny, Ernest and Jawahar, C.V. and Karatzas, Dimosthenis},
  booktitle={ICCV},
  year={2019}
}
"""

_DESCRIPTION = """\
Average Normalized Levenshtein Similarity, a re-implementation of EvolvingLMMs-Lab/lmms-eval
`lmms_eval/api/metrics.py::anls` (which cites Qwen-VL `eval_mm/infographicsvqa_eval.py`); docvqa_val uses it.

Per gold answer: d = Levenshtein(norm(gold), norm(prediction)) / max(len(raw gold), len(raw prediction)), with
norm(s) = lower-case, whitespace runs collapsed to one space, ends stripped. Score = 1 - min over golds of d,
set to 0 when it is below the threshold 0.5.

Quirks reproduced on purpose:
- The threshold is `score < 0.5 -> 0`: exactly 0.5 is kept ("ab" vs "ax" scores 0.5). Some ANLS write-ups use
  `>= 0.5` on the distance instead; that flips the boundary case.
- The denominator uses the RAW strings (before stripping / collapsing), measured after `.upper()`: padding
  whitespace lengthens it ("a  b" vs "ab": 1 - 1/4 = 0.75, while "a b" vs "ab" gives 1 - 1/3), and characters
  whose upper case is longer count extra ("ß" vs "s": 1 - 1/len("SS") = 0.5, kept).
- When both strings are empty the distance is taken as 0, so "" vs "" scores 1; an empty prediction against a
  non-empty gold scores 0.
- No other normalisation: punctuation, articles and number formats all count as edits ("1O.25" vs "10.25" = 0.8).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): one answer per question; "" is valid.
    references (list[list[str]]): the gold answers of each question, at least one each.
Returns:
    anls (float): mean ANLS in [0, 1].
    scores (list[float]): per-question ANLS.
Example:
    >>> metric = evaluate.load("metrics/anls")
    >>> metric.compute(predictions=["1O.25"], references=[["10.25"]])
    {'anls': 0.8, 'scores': [0.8]}
"""

THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit insert / delete / substitute costs (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _collapse(text: str) -> str:
    return " ".join(text.lower().split())


def anls_score(prediction: str, golds: list[str], threshold: float = THRESHOLD) -> float:
    """ANLS of one prediction against its golds (best gold wins; below `threshold` -> 0; quirks in module doc)."""
    _check_golds(golds)
    distances = []
    for gold in golds:
        # Raw lengths after upper(), as the reference measures them: not the normalised strings compared.
        length = max(len(gold.upper()), len(prediction.upper()))
        edits = levenshtein(_collapse(gold), _collapse(prediction))
        distances.append(0.0 if length == 0 else float(edits) / float(length))
    score = 1 - min(distances)
    return 0.0 if score < threshold else score


def anls_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-question ANLS; raises ValueError on mismatched or empty inputs."""
    _check_inputs(predictions, references)
    return [anls_score(pred, golds) for pred, golds in zip(predictions, references)]


def _check_golds(golds) -> None:
    if isinstance(golds, str):
        raise ValueError(f"golds must be a list of strings, got the string {golds!r}: wrap it as [{golds!r}].")
    if len(golds) == 0:
        raise ValueError("an example has an empty list of gold answers: give at least one gold answer per example.")


def _check_inputs(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists: pass one list of gold "
            "answers per prediction."
        )
    for index, golds in enumerate(references):
        if isinstance(golds, str) or len(golds) == 0:
            raise ValueError(
                f"references[{index}] is {golds!r}: each example needs a non-empty list of gold strings, e.g. ['yes']."
            )


_FEATURES = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)
_REFERENCE_URLS = ["https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/api/metrics.py"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Anls(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=_REFERENCE_URLS,
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (checked first: equal lengths, non-empty golds)."""
        # Checked before Arrow sees the batch, so the error names the fix instead of a schema mismatch.
        _check_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references):
        scores = anls_scores(predictions, references)
        if not scores:
            raise ValueError("got no predictions: pass at least one example (a mean of nothing would hide it).")
        return {"anls": sum(scores) / len(scores), "scores": scores}
