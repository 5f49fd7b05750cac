"""Verifiable rewards for GRPO (TRL's `reward_funcs`): a sampled answer scored against the row's gold answers.

On an answerable row an answer earns its exact match (1 or 0) and an abstention costs `abstain_cost`; on an
unanswerable row an abstention earns 1 and an answer 0. The cost must be > 0: with abstaining free, an abstention
ties a wrong answer on every answerable prompt the model cannot read yet, and GRPO drifts into abstaining everywhere
(seen here: over-abstention 31 -> 70 of 153). Abstention is read by the one rule the model ships with
(`is_abstained`: the abstention answer, or nothing).
"""

from metrics.confidence import is_abstained
from metrics.exact_match.exact_match import exact_match_score


def completion_text(completion) -> str:
    """A TRL completion: a string, or (conversational) a list of messages whose last is the assistant's."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, list):  # multimodal parts
        return "".join(part.get("text") or "" for part in content if part.get("type") == "text")
    return content


def abstention_reward(text: str, golds: list[str], answerable: bool, abstain_cost: float) -> float:
    abstained = is_abstained(text, 1.0, 0.0)
    if not answerable:
        return 1.0 if abstained else 0.0
    return -abstain_cost if abstained else exact_match_score(text, golds)


def make_abstention_reward(abstain_cost: float):
    """The GRPO reward function for `abstain_cost`; reads the dataset's `answers` and `answerable` columns."""
    if not abstain_cost > 0:
        raise ValueError(
            f"abstain_cost={abstain_cost!r}: must be > 0, or abstaining costs nothing on answerable rows and GRPO "
            "learns to abstain everywhere; 0.5 is the default."
        )

    def abstention_exact_match(completions, answers, answerable, **kwargs) -> list[float]:
        return [
            abstention_reward(completion_text(c), golds, ok, abstain_cost)
            for c, golds, ok in zip(completions, answers, answerable, strict=True)
        ]

    return abstention_exact_match
