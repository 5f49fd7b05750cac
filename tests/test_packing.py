"""Padding-free packing: the collator's packed row is TRL's padding_free layout, and the model's loss and logits on it
equal those of each sample run alone (eager and sdpa), also through TRL's SFTTrainer."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from processing.collator import IGNORE_INDEX, MiniLlavaDataCollator

ROOT = Path(__file__).resolve().parents[1]


def user(text, n_images=0):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def image(color, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


# Mixed lengths and image counts (1, 0, 2 images; one two-turn row), so segment boundaries and image order matter.
ROWS = [
    {
        "id": "one-image",
        "images": [image((200, 30, 30))],
        "messages": [user("What is the invoice total?", 1), assistant("250 Acme Corp")],
    },
    {"id": "text-only", "images": [], "messages": [user("Is there a logo?"), assistant("Yes")]},
    {
        "id": "two-images",
        "images": [image((0, 90, 200)), image((40, 90, 20), (30, 30))],
        "messages": [user("Quantity and vendor?", 2), assistant("12 units from Globex, invoice 7781")],
    },
    {
        "id": "two-turns",
        "images": [image((90, 90, 90))],
        "messages": [
            user("What kind of document?", 1),
            assistant("receipt"),
            user("Paid?"),
            assistant("yes, in cash"),
        ],
    },
]


@pytest.fixture(scope="module")
def models(build):
    cache = {}

    def get(llm="qwen2", attn="sdpa"):
        if (llm, attn) not in cache:
            cache[llm, attn] = build(llm=llm, attn_implementation=attn)
        return cache[llm, attn]

    return get


def alone(processor, row) -> dict:
    """One row as its own unpadded batch (no attention_mask: nothing to mask)."""
    batch = MiniLlavaDataCollator(processor)([row])
    del batch["attention_mask"]
    return batch


def separate_reference(model, processor, rows):
    """(sum of token NLLs / number of label tokens over all rows, each row's logits), every row forwarded alone: the
    loss the Trainer would give a padded batch of these rows."""
    total, count, logits = 0.0, 0, []
    for row in rows:
        batch = alone(processor, row)
        out = model(**batch)
        target = batch["labels"][0, 1:]
        keep = target != IGNORE_INDEX
        logp = out.logits[0, :-1].log_softmax(-1)
        total = total + -logp[keep].gather(-1, target[keep, None]).sum()
        count += int(keep.sum())
        logits.append(out.logits[0])
    return total / count, logits


def test_packed_row_is_trls_padding_free_layout(models):
    _, processor = models()
    packed = MiniLlavaDataCollator(processor, padding_free=True)(ROWS)
    samples = [alone(processor, row) for row in ROWS]
    # TRL's own padding_free collator on the same per-row ids and labels gives every key but pixel_values.
    trl = DataCollatorForLanguageModeling(pad_token_id=processor.pad_token_id, padding_free=True)(
        [{"input_ids": s["input_ids"][0].tolist(), "labels": s["labels"][0].tolist()} for s in samples]
    )
    assert set(packed) == set(trl) | {"pixel_values"} and "attention_mask" not in packed
    for key, value in trl.items():
        assert torch.equal(torch.as_tensor(packed[key]), torch.as_tensor(value)), key
    lengths = [s["input_ids"].shape[1] for s in samples]
    assert packed["input_ids"].shape == packed["labels"].shape == packed["position_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert packed["cu_seq_lens_q"].tolist() == [0, lengths[0], sum(lengths[:2]), sum(lengths[:3]), sum(lengths)]
    starts = packed["cu_seq_lens_q"][:-1].long()
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()  # no target across a sample boundary
    assert torch.equal(packed["input_ids"][0], torch.cat([s["input_ids"][0] for s in samples]))
    assert torch.equal(packed["labels"][0], torch.cat([s["labels"][0] for s in samples]))  # their starts were -100
    assert torch.equal(packed["pixel_values"], torch.cat([s["pixel_values"] for s in samples if "pixel_values" in s]))


@pytest.mark.parametrize("llm, attn", [("qwen2", "eager"), ("qwen2", "sdpa"), ("llama", "sdpa")])
def test_packed_loss_and_logits_equal_each_sample_alone(models, llm, attn):
    model, processor = models(llm, attn)
    assert model.config.text_config._attn_implementation == attn and model.dtype == torch.float32
    packed = MiniLlavaDataCollator(processor, padding_free=True)(ROWS)
    with torch.no_grad():
        # use_cache=False as TRL passes it: masking_utils builds the block-diagonal mask only without a cache.
        out = model(**packed, use_cache=False)
        expected_loss, expected_logits = separate_reference(model, processor, ROWS)
    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-6, atol=1e-6)
    bounds = packed["cu_seq_lens_q"].tolist()
    for i, expected in enumerate(expected_logits):
        torch.testing.assert_close(out.logits[0, bounds[i] : bounds[i + 1]], expected, rtol=1e-6, atol=1e-6)
    # The padded batch of the same rows gives the same loss: packing changes the layout, not what is learned.
    with torch.no_grad():
        padded = model(**MiniLlavaDataCollator(processor)(ROWS))
    torch.testing.assert_close(padded.loss, expected_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_plain_forward_on_a_packed_batch_keeps_the_samples_apart(models, attn):
    """model(**packed) with no use_cache argument: the text config's use_cache=True would build an empty cache, and
    transformers then builds no per-sample mask from position_ids; the model turns the cache off itself."""
    model, processor = models("qwen2", attn)
    assert model.config.text_config.use_cache is True
    packed = MiniLlavaDataCollator(processor, padding_free=True)(ROWS)
    with torch.no_grad():
        out = model(**packed)
        expected, _ = separate_reference(model, processor, ROWS)
        padded = model(**MiniLlavaDataCollator(processor)(ROWS))
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    assert out.cache is None and padded.cache is not None  # only a forward without attention_mask drops its cache
    with pytest.raises(ValueError, match=r"use_cache=True with position_ids and no attention_mask.*use_cache=False"):
        model(**packed, use_cache=True)


@pytest.mark.slow
def test_sft_trainer_trains_a_packed_step_with_the_loss_of_each_sample_alone(build, one_step_trainer):
    model, processor = build(attn_implementation="sdpa")  # its own copy: training changes it
    collator = MiniLlavaDataCollator(processor, padding_free=True)
    trainer = one_step_trainer(model, processor, collator, ROWS)
    batch = collator(ROWS)
    model.eval()
    with torch.no_grad():
        expected, _ = separate_reference(model, processor, ROWS)
        direct = model(**batch, use_cache=False).loss
        fused = trainer.compute_loss(model, dict(batch))  # TRL's own path: fused LM head, use_cache=False
    torch.testing.assert_close(direct, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    projector = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    trainer.train()
    (logged,) = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(logged) and logged == pytest.approx(expected.item(), rel=1e-5)
    assert trainer._total_train_tokens == batch["input_ids"].shape[1]  # TRL counts a packed row's tokens, no pad
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, projector)


@pytest.mark.slow
def test_bench_packing_quick_runs_the_same_work_three_ways(backbones, build, tmp_path):
    """The benchmark's three candidates (ours packed, ours padded, transformers' LlavaNext padded) start from the same
    loss on the same AnyRes rows (else its ratios mean nothing), and each row's image tokens are its images' grids."""
    from bench import bench_packing

    folder = os.path.dirname(backbones["llm-qwen2"])
    out = tmp_path / "packing.json"
    returned = bench_packing.main(["--quick", "--repeats", "1", "--backbones", folder, "--json", str(out)])
    r = json.loads(out.read_text())["results"]
    assert r == json.loads(json.dumps(returned["results"], default=str))
    assert r["grids"] == "mixed" and r["baseline"] == "LlavaNextForConditionalGeneration"
    losses = r["initial_losses"]
    assert set(losses) == {"packed", "padded", "llava_padded"}
    assert max(losses.values()) - min(losses.values()) < 1e-4 and all(math.isfinite(x) for x in losses.values())
    assert r["useful_tokens"] < r["padded_tokens_computed"] and 0 < r["padding_fraction"] < 1
    assert r["row_length_min"] < r["row_length_max"]
    # The same rows (quick mode: 8 rows, seed 0, long answers scaled by 0.2): each row's placeholders are the sum of
    # its images' AnyRes counts, not one tile (64) per image.
    config = build(seed=0, max_tiles=bench_packing.MAX_TILES)[0].config
    rows = bench_packing.grid_rows(8, 0, long_scale=0.2)
    expected = [sum(config.count_image_tokens(i.height, i.width) for i in row["images"]) for row in rows]
    assert r["row_image_tokens"] == expected and r["image_tokens"] == sum(expected)
    assert len(set(expected)) >= 4 and 0 in expected and any(n % 64 for n in expected)
    assert len(r["image_grids"]) >= 3 and sum(r["image_grids"].values()) == sum(len(row["images"]) for row in rows)
    for name in ("packed", "padded", "llava_padded"):
        assert r[name]["useful_tokens_per_s"] == pytest.approx(r["useful_tokens"] / r[name]["median_s"])
