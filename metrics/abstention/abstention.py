"""Abstention quality on data labelled answerable / unanswerable: precision, recall, F1 and hallucination rate.

Self-contained on purpose: `evaluate.load("metrics/abstention")` copies this one file. Companion of
`metrics/selective_vqa` (which scores confidences); this one scores the explicit "unanswerable" decisions.
"""

import datasets
import evaluate

_DESCRIPTION = """\
Abstention is the positive class. With A = abstained and U = the question is unanswerable (gold label):
- abstain_precision = |A and U| / |A|      (of the abstentions, the share that were right to abstain)
- abstain_recall    = |A and U| / |U|      (of the unanswerable questions, the share abstained on)
- abstain_f1        = harmonic mean of the two
- hallucination_rate = |not A and U| / |U| (unanswerable questions that got an answer; = 1 - recall)
- answerable_abstain_rate = |A and not U| / |not U| (over-abstention: answerable questions abstained on)
Undefined ratios are 0, never NaN: precision when nothing was abstained on, recall and hallucination_rate when no
question is unanswerable, answerable_abstain_rate when none is answerable, F1 when precision + recall = 0. Same
convention as sklearn's zero_division=0.

`is_abstention(answer)` turns generated answers into the boolean `predictions`: it compares with the project's
abstention answer "unanswerable" after case-folding and stripping whitespace and trailing ". ! ?" (so
"Unanswerable." counts, "I think it is unanswerable" does not).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[bool]): True where the model abstained.
    references (list[bool]): True where the question is answerable (the gold label).
Returns:
    abstain_precision, abstain_recall, abstain_f1, hallucination_rate, answerable_abstain_rate (floats in [0, 1]).
Example:
    >>> metric = evaluate.load("metrics/abstention")
    >>> metric.compute(predictions=[True, True, False, False, False], references=[False, True, False, True, True])
    {'abstain_precision': 0.5, 'abstain_recall': 0.5, 'abstain_f1': 0.5, 'hallucination_rate': 0.5,
     'answerable_abstain_rate': 0.3333333333333333}
"""

# The project's abstention answer and rule, copied from the processor's remote code (this file stands alone).
# Copied from processing.answers.ABSTAIN_ANSWER
ABSTAIN_ANSWER = "unanswerable"


# Copied from processing.answers.normalize_abstention
def normalize_abstention(answer: str) -> str:
    """Case-folded, whitespace and trailing . ! ? stripped: the one rule for reading an abstention."""
    return answer.casefold().strip().rstrip(".!?").strip()


# Copied from processing.answers.is_abstention
def is_abstention(answer: str, abstain_answer: str = ABSTAIN_ANSWER) -> bool:
    """True if an answer is the abstention answer ("Unanswerable." is, "I think it is unanswerable" is not)."""
    return normalize_abstention(answer) == abstain_answer.casefold()


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def abstention_scores(abstained: list[bool], answerable: list[bool]) -> dict[str, float]:
    """Abstention precision / recall / F1 and hallucination rate; undefined ratios are 0 (see module doc)."""
    if len(abstained) != len(answerable):
        raise ValueError(
            f"got {len(abstained)} abstention flags but {len(answerable)} answerable labels: pass one label per "
            "prediction."
        )
    abstained = [bool(flag) for flag in abstained]
    unanswerable = [not bool(flag) for flag in answerable]
    right_abstentions = sum(a and u for a, u in zip(abstained, unanswerable))
    hallucinations = sum(u and not a for a, u in zip(abstained, unanswerable))
    precision = _ratio(right_abstentions, sum(abstained))
    recall = _ratio(right_abstentions, sum(unanswerable))
    return {
        "abstain_precision": precision,
        "abstain_recall": recall,
        "abstain_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "hallucination_rate": _ratio(hallucinations, sum(unanswerable)),
        "answerable_abstain_rate": _ratio(
            sum(a and not u for a, u in zip(abstained, unanswerable)), unanswerable.count(False)
        ),
    }


_CITATION = ""
_FEATURES = datasets.Features({"predictions": datasets.Value("bool"), "references": datasets.Value("bool")})
_REFERENCE_URLS = []


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Abstention(evaluate.Metric):
    # Copied from metrics.anls.anls.Anls._info
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=_REFERENCE_URLS,
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of abstention flags and answerable labels (checked first: equal lengths)."""
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} references: pass one answerable label "
                "per abstention flag."
            )
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("got no predictions: pass at least one example.")
        return abstention_scores(predictions, references)
