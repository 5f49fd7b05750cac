"""The abstention threshold fitted on a held-out split. The answer -> confidence -> abstain functions themselves ship
with the model's remote code (processing/answers.py), so run_eval.py and the Space use one
implementation; they are re-exported here for the harness.
"""

from processing.processing_minillava import (
    ABSTAIN_ANSWER,
    answer_logprobs,
    confidence_from_logprobs,
    is_abstained,
    normalize_abstention,
)

__all__ = [
    "ABSTAIN_ANSWER",
    "answer_logprobs",
    "confidence_from_logprobs",
    "is_abstained",
    "normalize_abstention",
    "abstention_reward",
    "threshold_candidates",
    "fit_abstain_threshold",
]


def abstention_reward(abstained: bool, answerable: bool, score: float, cost: float) -> float:
    """What one question adds to the fit objective: an abstention earns 1 on an unanswerable question and 0 on an
    answerable one; an answer earns its score, or -cost when the score is 0 (a hallucination or a wrong answer)."""
    if abstained:
        return 0.0 if answerable else 1.0
    return score if score > 0 else -cost


def threshold_candidates(confidences: list[float]) -> list[float]:
    """0.0 (never abstain on confidence), the midpoints between consecutive distinct confidences, and a value above
    the largest one (abstain on everything) when that is still <= 1. Midpoints keep a margin on both sides."""
    values = sorted(set(confidences))
    candidates = [0.0] + [(low + high) / 2 for low, high in zip(values, values[1:])]
    if values and values[-1] < 1.0:
        candidates.append((values[-1] + 1.0) / 2)
    return sorted(set(candidates))


def fit_abstain_threshold(
    answers: list[str],
    confidences: list[float],
    answerable: list[bool],
    scores: list[float],
    cost: float = 1.0,
    abstain_answer: str = ABSTAIN_ANSWER,
) -> tuple[float, float]:
    """(threshold, mean reward) maximising the mean `abstention_reward` over a held-out split; ties -> the lowest
    threshold (abstain least). `scores` are the raw answers' scores against the golds, in [0, 1].

    Why this objective and not abstention F1: F1 ignores whether the answered questions were right (a threshold that
    abstains on every question still has F1 > 0), while this one is Effective Reliability (Whitehead et al., 2022)
    extended with credit for abstaining on unanswerable questions, so it trades hallucinations against lost answers.
    """
    if not confidences:
        raise ValueError("cannot fit an abstention threshold on an empty split: give a held-out split with rows.")
    if not len(answers) == len(confidences) == len(answerable) == len(scores):
        raise ValueError(
            f"got {len(answers)} answers, {len(confidences)} confidences, {len(answerable)} answerable labels and "
            f"{len(scores)} scores: pass one of each per question."
        )
    best = None
    for threshold in threshold_candidates(confidences):
        rewards = [
            abstention_reward(is_abstained(a, c, threshold, abstain_answer), ok, s, cost)
            for a, c, ok, s in zip(answers, confidences, answerable, scores)
        ]
        mean = sum(rewards) / len(rewards)
        if best is None or mean > best[1]:  # strict: the first (lowest) threshold wins ties
            best = (threshold, mean)
    return best
