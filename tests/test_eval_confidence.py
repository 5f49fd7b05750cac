"""Confidence from token log-probs and the abstention-threshold fit, on hand-built tensors and toy splits."""

import math

import pytest
import torch

from metrics.confidence import (
    answer_logprobs,
    confidence_from_logprobs,
    fit_abstain_threshold,
    is_abstained,
    threshold_candidates,
)

STOP = 3


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs))  # softmax(log p) = p when p sums to 1


def test_confidence_is_geometric_mean_of_answer_token_probs_stop_excluded():
    # Row 0 says tokens 1, 2 then stops (3); row 1 says 0 then stops; what follows a stop never counts.
    tokens = torch.tensor([[1, 2, STOP], [0, STOP, 1]])
    logits = (
        _logits([[0.1, 0.5, 0.2, 0.2], [0.8, 0.05, 0.05, 0.1]]),  # step 0: p(1)=0.5 (row 0), p(0)=0.8 (row 1)
        _logits([[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7]]),  # step 1: p(2)=0.25; row 1 stops
        _logits([[0.1, 0.1, 0.1, 0.7], [0.1, 0.9, 0.0, 0.0]]),  # step 2: row 0 stops; row 1 ignored
    )
    logprobs = answer_logprobs(tokens, logits, stop_ids=[STOP, 99])
    assert [len(row) for row in logprobs] == [2, 1]
    assert logprobs[0] == pytest.approx([math.log(0.5), math.log(0.25)])
    assert confidence_from_logprobs(logprobs[0]) == pytest.approx(math.sqrt(0.5 * 0.25))  # 0.35355...
    assert confidence_from_logprobs(logprobs[1]) == pytest.approx(0.8)


def test_confidence_of_an_empty_answer_is_zero():
    tokens = torch.tensor([[STOP, 1]])
    logprobs = answer_logprobs(tokens, (_logits([[0.1, 0.1, 0.1, 0.7]]), _logits([[0.1, 0.7, 0.1, 0.1]])), [STOP])
    assert logprobs == [[]]
    assert confidence_from_logprobs(logprobs[0]) == 0.0


@pytest.mark.parametrize(
    "answer, confidence, threshold, expected",
    [
        ("Unanswerable.", 0.99, 0.0, True),  # the abstention string, normalised as metrics/abstention does
        (" unanswerable ", 0.99, 0.5, True),
        ("", 0.99, 0.0, True),  # saying nothing is not an answer
        ("42", 0.49, 0.5, True),  # below the threshold
        ("42", 0.5, 0.5, False),  # at the threshold: answered (abstain iff confidence < threshold)
        ("it is unanswerable", 0.9, 0.0, False),
    ],
)
def test_is_abstained(answer, confidence, threshold, expected):
    assert is_abstained(answer, confidence, threshold) is expected


def test_threshold_candidates_are_zero_midpoints_and_abstain_all():
    assert threshold_candidates([0.6, 0.2, 0.9, 0.3, 0.6]) == pytest.approx([0.0, 0.25, 0.45, 0.75, 0.95])
    assert threshold_candidates([1.0, 0.5]) == pytest.approx([0.0, 0.75])  # nothing above 1 to abstain on all


def test_fit_threshold_toy_case_hand_computed():
    # a: right (0.9); b: wrong (0.6); c: unanswerable but answered (0.3); d: said "unanswerable" (0.2), right.
    answers = ["yes", "no", "cat", "Unanswerable."]
    confidences = [0.9, 0.6, 0.3, 0.2]
    answerable = [True, True, False, False]
    scores = [1.0, 0.0, 0.0, 1.0]
    # Mean reward per candidate (answer: score or -1; abstention: 1 if unanswerable else 0; d always abstains: +1):
    # t=0 and t=0.25: +1 -1 -1 +1 = 0;  t=0.45 (c abstains): +1 -1 +1 +1 = 2/4;  t=0.75 (b too): +1 0 +1 +1 = 3/4;
    # t=0.95 (a too): 0 0 +1 +1 = 2/4.  -> 0.75
    threshold, reward = fit_abstain_threshold(answers, confidences, answerable, scores)
    assert threshold == pytest.approx(0.75)
    assert reward == pytest.approx(0.75)
    # A wrong answer costing 0 makes answering b free: t=0.45 and t=0.75 tie at 3/4 -> the lower threshold wins.
    threshold, reward = fit_abstain_threshold(answers, confidences, answerable, scores, cost=0.0)
    assert (threshold, reward) == (pytest.approx(0.45), pytest.approx(0.75))


def test_fit_threshold_bad_inputs():
    with pytest.raises(ValueError, match="empty split"):
        fit_abstain_threshold([], [], [], [])
    with pytest.raises(ValueError, match="2 answers, 1 confidences"):
        fit_abstain_threshold(["a", "b"], [0.5], [True, True], [1.0, 0.0])


def _generated(processor, answers: list[str], probs: list[float], prompt: list[int], stop: int):
    """A generate() output (return_dict_in_generate + output_logits) whose rows say `answers`, each token with
    probability `probs[row]`, then `stop`; logits are built so those are the raw-softmax probabilities."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    rows = [processor.tokenizer(a, add_special_tokens=False)["input_ids"] + [stop] for a in answers]
    width = max(len(r) for r in rows)
    rows = [r + [stop] * (width - len(r)) for r in rows]
    vocab = len(processor.tokenizer)
    steps = []
    for t in range(width):
        step = torch.full((len(rows), vocab), -1e4)
        for b, row in enumerate(rows):
            step[b, row[t]] = math.log(probs[b])
            step[b, (row[t] + 1) % vocab] = math.log(1 - probs[b])  # the rest of the mass on one other token
        steps.append(step)
    sequences = torch.tensor([prompt + r for r in rows])
    return GenerateDecoderOnlyOutput(sequences=sequences, logits=tuple(steps))


def test_processor_post_process_answers_gives_answer_confidence_and_plain_reason(build):
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    from processing.processing_minillava import ABSTAIN_REASONS

    _, processor = build("siglip", "qwen2")
    stop = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = [processor.image_token_id] * 3
    generated = _generated(processor, ["250", "unanswerable", "Acme Corp", ""], [0.9, 0.95, 0.4, 0.9], prompt, stop)
    config = GenerationConfig(eos_token_id=[stop], abstain_threshold=0.5, abstain_answer="unanswerable")
    results = processor.post_process_answers(generated, prompt_length=len(prompt), generation_config=config)
    assert [r["answer"] for r in results] == ["250", "unanswerable", "Acme Corp", ""]
    n_tokens = [len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ("250", "Acme Corp")]
    assert [r["num_tokens"] for r in results] == [n_tokens[0], results[1]["num_tokens"], n_tokens[1], 0]
    for result, p in zip(results, [0.9, 0.95, 0.4]):
        assert result["confidence"] == pytest.approx(p, rel=1e-5)
    assert results[3]["confidence"] == 0.0
    # The model's own word first: a confident "unanswerable" is an abstention, not an answer.
    assert [r["reason"] for r in results] == [None, "model_said_so", "not_confident", "empty"]
    assert [r["abstained"] for r in results] == [False, True, True, True]
    assert all(r["threshold"] == 0.5 for r in results) and set(ABSTAIN_REASONS) >= {"model_said_so", "not_confident"}
    # An explicit threshold (the Space's slider) overrides the saved one.
    loose = processor.post_process_answers(generated, len(prompt), config, threshold=0.3)
    assert [r["reason"] for r in loose] == [None, "model_said_so", None, "empty"]
    with pytest.raises(ValueError, match="output_logits=True"):
        processor.post_process_answers(GenerateDecoderOnlyOutput(sequences=generated.sequences), len(prompt))
