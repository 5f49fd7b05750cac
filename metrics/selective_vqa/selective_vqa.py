"""Selective-prediction metrics of "Reliable VQA" (Whitehead et al., 2022), scored exactly as its evaluation script.

Self-contained on purpose: `evaluate.load("metrics/selective_vqa")` copies this one file.
"""

import math
from itertools import accumulate

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{whitehead2022reliable,
  title={Reliable Visual Question Answering: Abstain Rather Than Answer Incorrectly},
  author={Whitehead, Spencer and Petryk, Suzanne and Shakib, Vedaad and Gonzalez, Joseph and Darrell, Trevor
          and Rohrbach, Anna and Rohrbach, Marcus},
  booktitle={ECCV},
  year={2022}
}
"""

_DESCRIPTION = """\
Risk-coverage AUC, coverage at risk and Effective Reliability, a re-implementation of facebookresearch/reliable_vqa
`eval_scripts/reliable_vqa_eval.py` (`ReliabilityEval`: setRiskCoverage, computeCatR, computeThresholdAtCost,
computePhiAtCost). Inputs are a confidence and a per-question score in [0, 1] (the VQA accuracy, 1 - risk).

- auc: questions ranked by confidence (high -> low); after the k-th, coverage = k/N and risk = mean(1 - score) of
  the first k; trapezoidal area under risk(coverage) (sklearn.metrics.auc). Lower is better.
- cov@r: the largest coverage whose risk is <= r that does not split a group of tied confidences; 0 if none.
- phi@c (Effective Reliability): answered questions (confidence >= threshold) add their score, or -c when the score
  is 0; abstentions add 0; divided by N. The threshold is fitted on a SEPARATE threshold split (see below).
All values are fractions (the script prints percentages rounded to 2 decimals: multiply by 100 to compare).

Quirks reproduced on purpose:
- Tied confidences: the script sorts by score first and then (stably) by confidence, so within a tie the
  higher-scoring questions come first. The curve (and so auc) is optimistic on ties; remaining ties keep input
  order. Each question is its own point, ties are not merged.
- The curve starts at coverage 1/N, not 0: auc integrates over [1/N, 1]. N = 1 has no area: ValueError here
  (sklearn raises too).
- cov@r scans from full coverage down to the LAST point with risk <= r, so a non-monotone curve can give a coverage
  whose lower-coverage points exceed r. If that cut falls inside a tie group, it moves down past the group (and on,
  while risk > r).
- Per-question scores are kept as percentages rounded to 2 decimals (round(100 * s, 2)) for the tie order and for
  phi (1/3 counts as 0.3333), and a score that rounds to 0 costs -c. The risk curve uses the unrounded scores.
- Threshold fitting (per cost c, on the threshold split): rank by confidence (ties in INPUT order, no score
  tie-break there), take the prefix sums of (score or -c), and choose the confidence at the LAST position holding
  the maximum, i.e. the lowest threshold among the best. Positions inside a tie group are candidates although `>=`
  then answers the whole group. Abstaining on everything (phi = 0) is never a candidate: the threshold is at least
  the lowest confidence that reaches the maximum prefix sum, even when every prefix sum is negative.
- Without a threshold split the script computes no phi; here the phi keys are then left out.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[float]): confidence of each answer on the evaluation split (any finite numbers).
    references (list[float]): score of each answer in [0, 1] (e.g. the per-question `vqa_accuracy` scores).
    threshold_predictions (list[float], optional): confidences on the threshold split, to fit the phi threshold.
    threshold_references (list[float], optional): scores on the threshold split.
Returns:
    auc, cov@0.01, cov@0.05, cov@0.1, cov@0.2 (floats in [0, 1]); phi@1, phi@10, phi@100 (floats in [-c, 1],
    present when a threshold split is given).
Example:
    >>> metric = evaluate.load("metrics/selective_vqa")
    >>> metric.compute(predictions=[0.9, 0.8, 0.7, 0.6], references=[1.0, 1.0, 0.0, 1.0],
    ...                threshold_predictions=[0.9, 0.75, 0.5], threshold_references=[1.0, 1.0, 0.0])["phi@1"]
    0.5
"""

RISK_TOLERANCES = (0.01, 0.05, 0.1, 0.2)
COSTS = (1, 10, 100)


def _percent(score: float) -> float:
    """The script stores each question's accuracy as a percentage rounded to 2 decimals."""
    return round(100.0 * score, 2)


def _reward(score: float, cost: float) -> float:
    """What an answered question adds to phi: its (rounded) score, or -cost when that is 0."""
    rounded = _percent(score) / 100
    return -cost if rounded == 0.0 else rounded


def rank_by_confidence(confidences: list[float], scores: list[float]) -> list[int]:
    """Indices in the script's order: confidence high -> low, ties by rounded score high -> low, then input order."""
    return sorted(range(len(confidences)), key=lambda i: (-confidences[i], -_percent(scores[i])))


def risk_coverage_curve(confidences: list[float], scores: list[float]) -> tuple[list[float], list[float], list[int]]:
    """(coverages, risks, order): one point per question in `rank_by_confidence` order."""
    order = rank_by_confidence(confidences, scores)
    risks = [total / k for k, total in enumerate(accumulate(1.0 - scores[i] for i in order), start=1)]
    coverages = [k / len(order) for k in range(1, len(order) + 1)]
    return coverages, risks, order


def risk_coverage_auc(coverages: list[float], risks: list[float]) -> float:
    """Trapezoidal area under risk(coverage), as sklearn.metrics.auc computes it."""
    if len(coverages) < 2:
        raise ValueError(f"the risk-coverage AUC needs at least 2 questions, got {len(coverages)}: score more.")
    return float(np.trapezoid(risks, coverages))


def coverage_at_risk(coverages: list[float], risks: list[float], ranked_confidences: list[float], tolerance: float):
    """Largest coverage with risk <= tolerance whose cut does not split tied confidences (script's scan)."""
    last = len(risks)
    index = last - 1
    while index >= 0 and risks[index] > tolerance:
        index -= 1
    if -1 < index < last - 1 and ranked_confidences[index] == ranked_confidences[index + 1]:
        while index > -1 and (ranked_confidences[index] == ranked_confidences[index + 1] or risks[index] > tolerance):
            index -= 1
    return coverages[index] if index > -1 else 0.0


def fit_phi_threshold(confidences: list[float], scores: list[float], cost: float) -> float:
    """Confidence threshold maximising phi@cost on a threshold split (lowest one among the best; quirks in doc)."""
    _check_pair(confidences, scores, "threshold_predictions", "threshold_references", minimum=1)
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])  # stable: ties stay in input order
    prefix_phis = list(accumulate(_reward(scores[i], cost) for i in order))
    best = max(prefix_phis)
    last_best = max(k for k, phi in enumerate(prefix_phis) if phi == best)
    return confidences[order[last_best]]


def effective_reliability(confidences: list[float], scores: list[float], cost: float, threshold: float) -> float:
    """phi@cost: answer when confidence >= threshold; a score of 0 costs -cost; abstaining adds 0; mean over all."""
    order = rank_by_confidence(confidences, scores)  # the script sums in this order; it matters for the last bit
    total = 0.0
    for i in order:
        if confidences[i] >= threshold:
            total += _reward(scores[i], cost)
    return total / len(order)


def selective_scores(
    confidences: list[float],
    scores: list[float],
    threshold_confidences: list[float] | None = None,
    threshold_scores: list[float] | None = None,
    risk_tolerances=RISK_TOLERANCES,
    costs=COSTS,
) -> dict[str, float]:
    """{"auc", "cov@<r>" per tolerance, "phi@<c>" per cost (only with a threshold split)} as fractions."""
    _check_pair(confidences, scores, "predictions", "references", minimum=2)
    coverages, risks, order = risk_coverage_curve(confidences, scores)
    ranked_confidences = [confidences[i] for i in order]
    result = {"auc": risk_coverage_auc(coverages, risks)}
    for tolerance in risk_tolerances:
        result[f"cov@{tolerance}"] = coverage_at_risk(coverages, risks, ranked_confidences, tolerance)
    if (threshold_confidences is None) != (threshold_scores is None):
        raise ValueError(
            "got only one of threshold_predictions / threshold_references: pass both (the confidences and scores "
            "of the threshold split) or neither."
        )
    if threshold_confidences is not None:
        for cost in costs:
            threshold = fit_phi_threshold(threshold_confidences, threshold_scores, cost)
            result[f"phi@{cost}"] = effective_reliability(confidences, scores, cost, threshold)
    return result


def _check_pair(confidences, scores, conf_name: str, score_name: str, minimum: int) -> None:
    if len(confidences) != len(scores):
        raise ValueError(
            f"got {len(confidences)} {conf_name} but {len(scores)} {score_name}: pass one confidence per score."
        )
    if len(scores) < minimum:
        raise ValueError(f"{score_name} has {len(scores)} values: at least {minimum} are needed.")
    for index, confidence in enumerate(confidences):
        if not math.isfinite(confidence):
            raise ValueError(f"{conf_name}[{index}] is {confidence!r}: confidences must be finite numbers.")
    for index, score in enumerate(scores):
        if not 0.0 <= score <= 1.0:
            raise ValueError(
                f"{score_name}[{index}] is {score!r}: scores must be fractions in [0, 1] (divide percentages by 100)."
            )


_FEATURES = datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")})
_REFERENCE_URLS = ["https://github.com/facebookresearch/reliable_vqa/blob/main/eval_scripts/reliable_vqa_eval.py"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SelectiveVqa(evaluate.Metric):
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
        """Add a batch of confidences and scores (checked first: equal lengths, finite, scores in [0, 1])."""
        _check_pair(predictions, references, "predictions", "references", minimum=0)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, threshold_predictions=None, threshold_references=None):
        return selective_scores(predictions, references, threshold_predictions, threshold_references)
