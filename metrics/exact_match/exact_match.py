"""Exact match after a light, documented normalisation: the metric of our own (custom) evaluation set.

Self-contained on purpose: `evaluate.load("metrics/exact_match")` copies this one file. It is not the Hub's
`exact_match` (which does not load offline and has other options).
"""

import unicodedata

import datasets
import evaluate

_DESCRIPTION = """\
Exact match for the custom set. Both sides are normalised, then the prediction scores 1.0 if it equals any gold.

Normalisation (`normalize_answer`), in this order:
1. Unicode NFKC (full-width digits and ligatures become plain: "１２" -> "12", "ﬁ" -> "fi");
2. case-fold (stronger than lower(): "Straße" -> "strasse");
3. whitespace runs (spaces, tabs, newlines) collapse to one space, ends stripped;
4. trailing sentence punctuation ". ! ?" and quotes/whitespace around the answer are stripped
   ("Paris." -> "paris", "'yes'" -> "yes").
Nothing else: articles, inner punctuation, number formats and units still count ("1,000" != "1000",
"the cat" != "cat"). An empty prediction equals only a gold that also normalises to "".
The project's abstention answer "unanswerable" is an ordinary string here: abstaining is correct exactly when the
gold is "unanswerable".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): one answer per question; "" is valid.
    references (list[list[str]]): the gold answers of each question, at least one each.
Returns:
    exact_match (float): share of questions answered exactly, in [0, 1].
    scores (list[float]): per-question 1.0 / 0.0.
Example:
    >>> metric = evaluate.load("metrics/exact_match")
    >>> metric.compute(predictions=["  Paris. "], references=[["paris"]])
    {'exact_match': 1.0, 'scores': [1.0]}
"""

_EDGE_CHARS = " .!?\"'"


def normalize_answer(answer: str) -> str:
    """NFKC, case-fold, collapse whitespace, strip surrounding quotes and trailing . ! ?"""
    text = unicodedata.normalize("NFKC", answer).casefold()
    text = " ".join(text.split())
    return text.strip(_EDGE_CHARS)


def exact_match_score(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold, else 0.0."""
    _check_golds(golds)
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(gold) == pred for gold in golds) else 0.0


def exact_match_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-question exact match; raises ValueError on mismatched or empty inputs."""
    _check_inputs(predictions, references)
    return [exact_match_score(pred, golds) for pred, golds in zip(predictions, references)]


# Copied from metrics.anls.anls._check_golds
def _check_golds(golds) -> None:
    if isinstance(golds, str):
        raise ValueError(f"golds must be a list of strings, got the string {golds!r}: wrap it as [{golds!r}].")
    if len(golds) == 0:
        raise ValueError("an example has an empty list of gold answers: give at least one gold answer per example.")


# Copied from metrics.anls.anls._check_inputs
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


_CITATION = ""
_FEATURES = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)
_REFERENCE_URLS = []


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    # Copied from metrics.anls.anls.Anls._info
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=_REFERENCE_URLS,
        )

    # Copied from metrics.anls.anls.Anls.add_batch
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (checked first: equal lengths, non-empty golds)."""
        # Checked before Arrow sees the batch, so the error names the fix instead of a schema mismatch.
        _check_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    # Copied from metrics.anls.anls.Anls._compute with anls->exact_match
    def _compute(self, predictions, references):
        scores = exact_match_scores(predictions, references)
        if not scores:
            raise ValueError("got no predictions: pass at least one example (a mean of nothing would hide it).")
        return {"exact_match": sum(scores) / len(scores), "scores": scores}
