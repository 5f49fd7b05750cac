"""From generate()'s raw logits to an answer decision: per-token log-probs, a confidence, and the abstention rule
(the model said so, said nothing, or is not confident enough). Ships as remote code next to processing_minillava.py."""

import math

import torch

# What our recipes teach the model to say when the answer is not in the image; a model evaluated with run_eval.py
# carries its own in generation_config.abstain_answer, next to the fitted abstain_threshold.
ABSTAIN_ANSWER = "unanswerable"
# Why an answer is withheld, in plain words (the Space shows these; run_eval counts them).
ABSTAIN_REASONS = {
    "model_said_so": "the model said the answer is not in the image",
    "empty": "the model gave no answer",
    "not_confident": "the model was not confident enough",
}


def answer_logprobs(tokens: torch.Tensor, logits: tuple[torch.Tensor, ...], stop_ids) -> list[list[float]]:
    """Per row, the log-probs of the generated answer tokens up to (excluding) the first stop token.

    tokens: [B, T] new tokens from generate(); logits: T tensors [B, V], the RAW logits of each step
    (`output_logits=True`), so repetition penalties or other logits processors never change the confidence.
    """
    stop_ids = set(stop_ids)
    logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in logits], dim=1)  # [B, T, V]
    chosen = logprobs.gather(-1, tokens[:, : logprobs.shape[1], None].long().to(logprobs.device)).squeeze(-1)
    rows = []
    for row_tokens, row_logprobs in zip(tokens.tolist(), chosen.tolist()):
        kept = []
        for token, logprob in zip(row_tokens, row_logprobs):
            if token in stop_ids:
                break
            kept.append(logprob)
        rows.append(kept)
    return rows


def confidence_from_logprobs(logprobs: list[float]) -> float:
    """exp(mean token log-prob): the geometric-mean token probability, in [0, 1]; 0.0 for an empty answer."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0


def normalize_abstention(answer: str) -> str:
    """Case-folded, whitespace and trailing . ! ? stripped: the one rule for reading an abstention."""
    return answer.casefold().strip().rstrip(".!?").strip()


def is_abstention(answer: str, abstain_answer: str = ABSTAIN_ANSWER) -> bool:
    """True if an answer is the abstention answer ("Unanswerable." is, "I think it is unanswerable" is not)."""
    return normalize_abstention(answer) == abstain_answer.casefold()


def abstention_reason(answer: str, confidence: float, threshold: float, abstain_answer: str = ABSTAIN_ANSWER):
    """A key of ABSTAIN_REASONS when the answer is withheld, else None. The model's own word comes first: an
    "unanswerable" said with confidence 0.9 is the model abstaining, not a confident answer."""
    if is_abstention(answer, abstain_answer):
        return "model_said_so"
    if not normalize_abstention(answer):
        return "empty"
    return "not_confident" if confidence < threshold else None


def is_abstained(answer: str, confidence: float, threshold: float, abstain_answer: str = ABSTAIN_ANSWER) -> bool:
    """The final decision: the model said the abstention answer, said nothing, or is less confident than threshold."""
    return abstention_reason(answer, confidence, threshold, abstain_answer) is not None
