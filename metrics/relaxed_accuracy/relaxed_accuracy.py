"""ChartQA relaxed accuracy, scored exactly as lmms-eval's `relaxed_correctness` (from Qwen-VL's evaluate_vqa.py).

Self-contained on purpose: `evaluate.load("metrics/relaxed_accuracy")` copies this one file.
"""

import datasets
import evaluate

_CITATION = """\
@inproceedings{masry2022chartqa,
  title={ChartQA: A Benchmark for Question Answering about Charts with Visual and Logical Reasoning},
  author={Masry, Ahmed and Long, Do Xuan and Tan, Jia Qing and Joty, Shafiq and Hoque, Enamul},
  booktitle={Findings of ACL},
  year={2022}
}
"""

_DESCRIPTION = """\
Relaxed accuracy of ChartQA, a re-implementation of EvolvingLMMs-Lab/lmms-eval
`lmms_eval/tasks/chartqa/utils.py::relaxed_correctness` (taken there from QwenLM/Qwen-VL `eval_mm/evaluate_vqa.py`).

Per gold: if both strings parse as floats and the gold's float is non-zero, correct when
|pred - gold| / |gold| <= 0.05; otherwise correct when the strings are equal ignoring case. With several golds the
best one counts (Qwen-VL's `evaluate_relaxed_accuracy` takes the max; lmms-eval passes ChartQA's single gold).

Quirks reproduced on purpose:
- Parsing is Python's `float()`: surrounding whitespace, "1e3", "1_000", "nan" and "inf" parse; "1,000", "$5",
  "5 kg" do not, and fall back to string equality.
- A trailing "%" divides by 100 (all trailing "%" are stripped: "12%%" -> 0.12). Only the side that carries it is
  scaled, so "12" vs "12%" is 12 vs 0.12: wrong, in either direction. "12%" vs "12%" is right.
- A gold of 0 (or "0%", "0.0") is falsy, so it is compared as a string: "0" vs "0.0" is wrong.
- A numeric gold with a non-numeric prediction is compared as a string (so "twelve" vs "12" is wrong).
- The 5% bound is inclusive (105 vs 100 is right). "inf" vs "inf" is wrong (inf / inf is NaN).
- No stripping of the prediction beyond what `float()` ignores: " Paris" vs "paris" is wrong.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): one answer per question; "" is valid.
    references (list[list[str]]): the gold answers of each question (ChartQA has one), at least one each.
Returns:
    relaxed_accuracy (float): share of questions answered correctly, in [0, 1].
    scores (list[float]): per-question 1.0 / 0.0.
Example:
    >>> metric = evaluate.load("metrics/relaxed_accuracy")
    >>> metric.compute(predictions=["12", "12.5"], references=[["12%"], ["12"]])
    {'relaxed_accuracy': 0.5, 'scores': [0.0, 1.0]}
"""

MAX_RELATIVE_CHANGE = 0.05


def parse_number(text: str) -> float | None:
    """The reference's `_to_float`: float(text), or float(text without trailing '%') / 100; None if unparsable."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, gold: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    """lmms-eval's `relaxed_correctness` for one gold (quirks in module doc)."""
    pred_number = parse_number(prediction)
    gold_number = parse_number(gold)
    # `gold_number` is tested for truth, not for None: a zero gold falls through to string equality.
    if pred_number is not None and gold_number:
        return abs(pred_number - gold_number) / abs(gold_number) <= max_relative_change
    return prediction.lower() == gold.lower()


def relaxed_accuracy_score(prediction: str, golds: list[str]) -> float:
    """1.0 if the prediction is relaxed-correct for any gold, else 0.0."""
    _check_golds(golds)
    return 1.0 if any(relaxed_correct(prediction, gold) for gold in golds) else 0.0


def relaxed_accuracy_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-question relaxed accuracy; raises ValueError on mismatched or empty inputs."""
    _check_inputs(predictions, references)
    return [relaxed_accuracy_score(pred, golds) for pred, golds in zip(predictions, references)]


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


_FEATURES = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)
_REFERENCE_URLS = ["https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/tasks/chartqa/utils.py"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RelaxedAccuracy(evaluate.Metric):
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

    # Copied from metrics.anls.anls.Anls._compute with anls->relaxed_accuracy
    def _compute(self, predictions, references):
        scores = relaxed_accuracy_scores(predictions, references)
        if not scores:
            raise ValueError("got no predictions: pass at least one example (a mean of nothing would hide it).")
        return {"relaxed_accuracy": sum(scores) / len(scores), "scores": scores}
