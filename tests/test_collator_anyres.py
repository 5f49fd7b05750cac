"""MiniLlavaDataCollator with AnyRes (LLaVA-NeXT image splitting): each row's images planned by the processor (its
max_image_tokens budget per row), the batch identical to the processor's own __call__, labels exactly the answers,
too_long / truncate on the planned counts, packed == padded, and one SFTTrainer step."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from processing.collator import IGNORE_INDEX, MiniLlavaDataCollator

PAGE, SCREENSHOT = (1754, 1240), (1080, 2400)  # (height, width): a tall A4 scan, a wide phone screenshot
IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grids")


def blocks_image(size, seed: int) -> Image.Image:
    """Random 16-px blocks at full size: every tile differs, so a misplaced tile changes the loss."""
    height, width = size
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    return small.resize((width, height), Image.NEAREST)


def conversation(question, answer, images, inline=False):
    """A user turn with the images first, then the answer; `inline` puts the PIL images into the parts, as
    processor.apply_chat_template loads them."""
    parts = [{"type": "image", "image": image} if inline else {"type": "image"} for image in images]
    return [
        {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def make_row(id, question, answer, images):
    return {"id": id, "images": images, "messages": conversation(question, answer, images)}


@pytest.fixture(scope="module")
def images():
    return {"page": blocks_image(PAGE, 0), "screenshot": blocks_image(SCREENSHOT, 1)}


@pytest.fixture(scope="module")
def rows(images):
    return [
        make_row("page", "What is the invoice total?", "250 Acme Corp", [images["page"]]),
        make_row("screenshot", "Which button is bottom right?", "Save", [images["screenshot"]]),
    ]


@pytest.fixture(scope="module")
def anyres(build):
    return build(seed=2, max_tiles=4)


def processor_batch(processor, rows) -> dict:
    """The same conversations through the processor's own __call__ (apply_chat_template, images inline), right-padded,
    with labels built here without the collator: each answer's ids + the end-of-turn id, found at the row's end."""
    convs = [conversation(*(m["content"][-1]["text"] for m in r["messages"]), r["images"], inline=True) for r in rows]
    batch = processor.apply_chat_template(
        convs,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right"},
    )
    tokenizer, end_of_turn = processor.tokenizer, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for b, row in enumerate(rows):
        answer = tokenizer(row["messages"][-1]["content"][0]["text"], add_special_tokens=False)["input_ids"]
        target = [*answer, end_of_turn]
        # Qwen2's template closes the turn with "<|im_end|>\n": the answer ends two tokens before the row's end.
        end = int(batch["attention_mask"][b].sum()) - 1
        assert batch["input_ids"][b, end - len(target) : end].tolist() == target
        labels[b, end - len(target) : end] = torch.tensor(target)
    return {**batch, "labels": labels}


def test_batch_equals_the_processors_call_with_labels_exactly_the_answers(anyres, build, rows):
    model, processor = anyres
    config = model.config
    batch = MiniLlavaDataCollator(processor)(rows)
    reference = processor_batch(processor, rows)
    assert set(batch) == set(reference)
    for key, value in reference.items():
        assert torch.equal(batch[key], value), key
    # Mixed grids share the batch; each image holds exactly the placeholders its size calls for.
    assert batch["image_grids"].tolist() == [list(config.image_grid(*PAGE)), list(config.image_grid(*SCREENSHOT))]
    assert batch["image_grids"].tolist() == [[2, 2], [1, 3]] and batch["image_sizes"].tolist() == [
        [*PAGE],
        [*SCREENSHOT],
    ]
    slots = (batch["input_ids"] == config.image_token_id).sum(-1).tolist()
    assert slots == [config.count_image_tokens(*PAGE), config.count_image_tokens(*SCREENSHOT)] == [272, 216]
    assert batch["pixel_values"].shape == (2, 5, 3, 128, 128)  # base tile + at most 4, the screenshot's last is zero
    assert batch["pixel_values"][1, 4].abs().sum() == 0 and batch["pixel_values"][1, 3].abs().sum() > 0
    # The single-tile collator labels the same answer token ids (only the image blocks differ in length).
    _, single = build(seed=2)
    single_batch = MiniLlavaDataCollator(single)(rows)
    assert (single_batch["input_ids"] == config.image_token_id).sum(-1).tolist() == [config.num_image_tokens] * 2
    for b in range(len(rows)):
        assert batch["labels"][b][batch["labels"][b] != IGNORE_INDEX].tolist() == (
            single_batch["labels"][b][single_batch["labels"][b] != IGNORE_INDEX].tolist()
        )
    with torch.no_grad():
        ours, theirs = model(**batch).loss, model(**reference).loss
    assert model.dtype == torch.float32 and math.isfinite(ours.item())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_placeholders_come_from_the_processors_expansion(anyres, rows, monkeypatch):
    """One implementation of placeholder expansion: the collator hands the row's planned counts to the processor's
    expand_image_tokens and tokenizes what it returns."""
    _, processor = anyres
    expand, seen = type(processor).expand_image_tokens, []

    def spy(self, text, **kwargs):
        seen.append(kwargs.get("counts"))
        return "!" + expand(self, text, **kwargs)

    monkeypatch.setattr(type(processor), "expand_image_tokens", spy)
    ids = MiniLlavaDataCollator(processor)(rows[:1])["input_ids"][0].tolist()
    exclamation = processor.tokenizer("!", add_special_tokens=False)["input_ids"]
    assert ids[: len(exclamation)] == exclamation
    planned = [n for _, n in processor.plan_canvases([rows[0]["images"][0].size[::-1]])]
    assert seen and all(counts == planned for counts in seen)


def test_budget_shrinks_each_rows_grids_as_the_processor_does(build, images, caplog):
    model, processor = build(seed=2, max_tiles=4, max_image_tokens=400)
    page, screenshot = images["page"], images["screenshot"]
    rows = [
        make_row("both", "Compare the two.", "same total", [page, screenshot]),  # 272 + 216 > 400: shrinks
        make_row("page", "What is the invoice total?", "250 Acme Corp", [page]),  # 272 <= 400: its full grid
    ]
    collator = MiniLlavaDataCollator(processor)
    batch = collator(rows)
    reference = processor_batch(processor, rows)
    for key in ("input_ids", "attention_mask", "labels", *IMAGE_KEYS):
        assert torch.equal(batch[key], reference[key]), key
    # The budget is per row: the page gets 2x1 next to the screenshot but its full 2x2 alone.
    assert batch["image_grids"].tolist() == [[2, 1], [1, 3], [2, 2]]
    assert list(model.config.image_grid(*PAGE)) == [2, 2]
    slots = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert slots == [172 + 216, 272] and all(n <= 400 for n in slots)
    assert collator.check_row(rows[0]) is None
    # A row whose images exceed the budget even on 1x1 grids is dropped as image_budget, by check_row too.
    over = make_row("four", "All four?", "yes", [page, screenshot, page, screenshot])
    assert collator.check_row(over)[0] == "image_budget" and "max_image_tokens=400" in collator.check_row(over)[1]
    kept = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    assert torch.equal(kept([over, rows[1]])["input_ids"], MiniLlavaDataCollator(processor)([rows[1]])["input_ids"])
    assert kept.stats["skipped"] == {"image_budget": 1} and kept.stats["kept"] == 1


def test_too_long_and_truncate_count_the_planned_placeholders(anyres, rows):
    model, processor = anyres
    image_id = model.config.image_token_id
    ids = MiniLlavaDataCollator(processor)(rows[:1])["input_ids"][0].tolist()
    assert len(ids) > 272  # the page alone takes 272 placeholders (64 single tile)
    # skip: a max_length one below the planned length drops the row, by check_row and __call__ alike.
    skip = MiniLlavaDataCollator(processor, max_length=len(ids) - 1, max_skip_fraction=1.0)
    assert skip.check_row(rows[0]) == ("too_long", f"{len(ids)} tokens > max_length={len(ids) - 1}")
    assert MiniLlavaDataCollator(processor, max_length=len(ids)).check_row(rows[0]) is None
    # truncate: never through the image block; just after it the row trains with every placeholder.
    last_image = len(ids) - 1 - ids[::-1].index(image_id)
    cut = MiniLlavaDataCollator(processor, max_length=last_image, too_long="truncate", max_skip_fraction=1.0)
    assert cut.check_row(rows[0])[0] == "image_beyond_max_length"
    with pytest.raises(RuntimeError, match="image_beyond_max_length"):
        cut(rows[:1])
    keep = MiniLlavaDataCollator(processor, max_length=len(ids) - 2, too_long="truncate")
    assert keep.check_row(rows[0]) is None
    batch = keep(rows[:1])
    assert batch["input_ids"][0].tolist() == ids[:-2] and keep.stats["truncated"] == 1
    assert int((batch["input_ids"] == image_id).sum()) == model.config.count_image_tokens(*PAGE)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)  # the model matches every image's features to its block


def test_packed_batch_gives_the_padded_batchs_per_token_loss(anyres, rows, images):
    model, processor = anyres
    mixed = [
        *rows,
        make_row("text", "Is there a logo?", "Yes", []),
        make_row("two", "Same vendor?", "no", [images["screenshot"], images["page"]]),
    ]
    padded = MiniLlavaDataCollator(processor)(mixed)
    packed = MiniLlavaDataCollator(processor, padding_free=True)(mixed)
    for key in IMAGE_KEYS:
        assert torch.equal(packed[key], padded[key]), key
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert packed["cu_seq_lens_q"].tolist() == [0, *np.cumsum(lengths).tolist()]
    with torch.no_grad():
        padded_out = model(**padded)
        packed_out = model(**packed)  # no use_cache: the model keeps the packed rows apart itself
    torch.testing.assert_close(packed_out.loss, padded_out.loss, rtol=1e-5, atol=1e-5)
    bounds = packed["cu_seq_lens_q"].tolist()
    for b, n in enumerate(lengths):
        torch.testing.assert_close(packed_out.logits[0, bounds[b] : bounds[b + 1]], padded_out.logits[b, :n])


@pytest.mark.slow
@pytest.mark.parametrize("padding_free", [False, True])
def test_sft_trainer_trains_a_step_on_anyres_rows(build, rows, one_step_trainer, padding_free):
    model, processor = build(seed=2, max_tiles=4)  # its own copy: training changes it
    trainer = one_step_trainer(model, processor, MiniLlavaDataCollator(processor, padding_free=padding_free), rows)
    with torch.no_grad():
        expected = model(**MiniLlavaDataCollator(processor)(rows)).loss
    newline = model.model.image_newline.detach().clone()
    trainer.train()
    (logged,) = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(logged) and logged == pytest.approx(expected.item(), rel=1e-4)
    assert not torch.equal(model.model.image_newline, newline)  # the row newline learnt from the AnyRes grids
