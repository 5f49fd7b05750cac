"""MiniLlavaDataCollator: labels cover exactly the assistant answers + end-of-turn for each chat template we support,
padding / image slots / prompts are -100, the model's loss uses only those positions, and dropped rows are counted."""

import logging

import pytest
import torch
from PIL import Image

from processing.collator import IGNORE_INDEX, MiniLlavaDataCollator

END_OF_TURN = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>"}
ASSISTANT_HEADER = {"qwen2": "<|im_start|>assistant\n", "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
AFTER_END_OF_TURN = {"qwen2": "\n", "llama": ""}  # what the template renders after the end-of-turn token (unlabelled)
LLMS, POSITIONS = ("qwen2", "llama"), ("user_turn", "prefix")


@pytest.fixture(scope="module")
def built(build):
    cache = {}

    def get(llm="qwen2", image_position="user_turn"):
        if (llm, image_position) not in cache:
            cache[llm, image_position] = build(llm=llm, image_position=image_position)
        return cache[llm, image_position]

    return get


def image(color=(200, 30, 30), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def user(text, n_images=0):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def make_row(question="What is the invoice total?", answer="250 Acme Corp", n_images=1, id="row-0"):
    images = [image((40 * i, 90, 200)) for i in range(n_images)]
    return {"id": id, "images": images, "messages": [user(question, n_images), assistant(answer)], "answers": [answer]}


def spans(labels_row: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of labelled positions."""
    runs, start = [], None
    for i, label in enumerate(labels_row.tolist() + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def expected_ids(tokenizer, answer: str, llm: str) -> list[int]:
    """Computed without the chat template: the answer's own tokens + the end-of-turn id."""
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[llm])
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn]


def check_row(batch, b, processor, llm, answers):
    """Row b's labels are exactly one span per answer, each right after the assistant header; all else is -100."""
    tok, ids, labels = processor.tokenizer, batch["input_ids"][b], batch["labels"][b]
    real = int(batch["attention_mask"][b].sum())
    runs = spans(labels)
    assert len(runs) == len(answers)
    for (start, end), answer in zip(runs, answers):
        assert labels[start:end].tolist() == ids[start:end].tolist() == expected_ids(tok, answer, llm)
        assert tok.decode(labels[start:end]) == answer + END_OF_TURN[llm]
        assert tok.decode(ids[:start]).endswith(ASSISTANT_HEADER[llm])  # the header itself is unlabelled
    assert tok.decode(ids[runs[-1][1] : real]) == AFTER_END_OF_TURN[llm]
    assert (labels[batch["input_ids"][b] == processor.image_token_id] == IGNORE_INDEX).all()
    assert (labels[real:] == IGNORE_INDEX).all() and (batch["attention_mask"][b, real:] == 0).all()


@pytest.mark.parametrize("image_position", POSITIONS)
@pytest.mark.parametrize("llm", LLMS)
def test_labels_are_exactly_answer_plus_end_of_turn(built, llm, image_position):
    model, processor = built(llm, image_position)
    batch = MiniLlavaDataCollator(processor)([make_row()])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "labels"}
    check_row(batch, 0, processor, llm, ["250 Acme Corp"])
    slots = (batch["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    assert len(slots) == processor.num_image_tokens and slots.max() < spans(batch["labels"][0])[0][0]
    if image_position == "prefix":
        assert slots.tolist() == list(range(processor.num_image_tokens))
    # The model's own stop ids (which include the pad id) label the same positions.
    stops = MiniLlavaDataCollator(processor, stop_token_ids=model.generation_config.eos_token_id)([make_row()])
    assert torch.equal(stops["labels"], batch["labels"])


@pytest.mark.parametrize("image_position", POSITIONS)
@pytest.mark.parametrize("llm", LLMS)
def test_multi_turn_labels_every_assistant_turn(built, llm, image_position):
    _, processor = built(llm, image_position)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer the question using a single word."}]},
        user("What kind of document is this?", n_images=1),
        assistant("invoice"),
        user("Is there a logo?", n_images=1),  # second image in a later turn: "prefix" puts its slots first too
        assistant("Yes"),
    ]
    row = {"id": "multi", "images": [image(), image((0, 0, 255))], "messages": messages}
    batch = MiniLlavaDataCollator(processor)([row])
    check_row(batch, 0, processor, llm, ["invoice", "Yes"])
    n_placeholders = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n_placeholders == 2 * processor.num_image_tokens and len(batch["pixel_values"]) == 2
    labelled = processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])
    assert "logo" not in labelled and "document" not in labelled and "single" not in labelled


def test_image_inside_an_assistant_turn_is_never_labelled(built):
    # The placeholders inside the answer must neither end the span nor be labels.
    _, processor = built("llama")
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Yes"}, {"type": "image"}]}
    row = {"id": "a-img", "images": [image()], "messages": [user("Is there a logo?"), answer]}
    batch = MiniLlavaDataCollator(processor)([row])
    labels, image_mask = batch["labels"][0], batch["input_ids"][0] == processor.image_token_id
    runs = spans(labels)
    assert image_mask.sum() == processor.num_image_tokens and (labels[image_mask] == IGNORE_INDEX).all()
    assert len(runs) == 2 and runs[1][0] == runs[0][1] + processor.num_image_tokens
    tok = processor.tokenizer
    assert tok.decode(labels[labels != IGNORE_INDEX]) == "Yes\n<|eot_id|>"
    assert runs[1][1] == int(batch["attention_mask"][0].sum())


@pytest.mark.parametrize("llm", LLMS)
def test_text_only_row(built, llm):
    _, processor = built(llm)
    row = {"id": "text", "messages": [user("What is the date?"), assistant("March 12")]}  # no images key at all
    batch = MiniLlavaDataCollator(processor)([row])
    assert "pixel_values" not in batch and not (batch["input_ids"] == processor.image_token_id).any()
    check_row(batch, 0, processor, llm, ["March 12"])
    assert MiniLlavaDataCollator(processor)([{**row, "images": []}])["labels"].equal(batch["labels"])


@pytest.mark.parametrize("image_position", POSITIONS)
@pytest.mark.parametrize("llm", LLMS)
def test_batch_of_different_lengths_is_right_padded(built, llm, image_position):
    _, processor = built(llm, image_position)
    rows = [
        make_row(answer="no", id="short"),
        make_row("Who is the vendor and what is the total amount due on this invoice?", "Globex, 1000", 2, "two"),
        {"id": "text", "images": [], "messages": [user("Describe the image briefly."), assistant("A receipt.")]},
    ]
    collator = MiniLlavaDataCollator(processor)
    batch = collator(rows)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3 and batch["input_ids"].shape[1] == int(lengths.max())
    for b, answer in enumerate(["no", "Globex, 1000", "A receipt."]):
        check_row(batch, b, processor, llm, [answer])
        assert batch["attention_mask"][b, : lengths[b]].all()  # right padding: real tokens first
        assert (batch["input_ids"][b, lengths[b] :] == processor.pad_token_id).all()
    n_placeholders = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert n_placeholders == [processor.num_image_tokens * n for n in (1, 2, 0)]
    assert len(batch["pixel_values"]) == 3
    assert collator.stats == {"seen": 3, "kept": 3, "truncated": 0, "all_masked": 0, "skipped": {}}


@pytest.mark.parametrize("llm", LLMS)
def test_model_loss_is_cross_entropy_over_exactly_the_labelled_positions(built, llm):
    model, processor = built(llm)
    rows = [make_row(), make_row("Is there a logo?", "Yes", 0, "b"), make_row("Qty?", "12", 2, "c")]
    batch = MiniLlavaDataCollator(processor)(rows)
    with torch.no_grad():
        out = model(**batch)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    expected = -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
    n_answer_tokens = sum(len(expected_ids(processor.tokenizer, a, llm)) for a in ("250 Acme Corp", "Yes", "12"))
    assert int(keep.sum()) == n_answer_tokens
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)


def test_too_long_rows_are_skipped_counted_and_each_named(built, caplog):
    _, processor = built()
    short, long = make_row(id="short"), make_row(answer="Acme Corp " * 30, id="long")
    limit = len(MiniLlavaDataCollator(processor)([short])["input_ids"][0])
    collator = MiniLlavaDataCollator(processor, max_length=limit, max_skip_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="processing.collator"):
        batch = collator([long, short, {**long, "id": "long-2"}])
    assert batch["input_ids"].shape == (1, limit)
    check_row(batch, 0, processor, "qwen2", ["250 Acme Corp"])
    assert collator.stats == {"seen": 3, "kept": 1, "truncated": 0, "all_masked": 0, "skipped": {"too_long": 2}}
    assert len(caplog.records) == 2 and "'long'" in caplog.text and "'long-2'" in caplog.text
    assert "too_long" in caplog.text


def test_prompt_that_does_not_tokenize_as_a_prefix_is_skipped(built, monkeypatch, caplog):
    _, processor = built()
    # The generation prompt opens a "model" turn, the finished conversation an "assistant" turn: no token prefix.
    template = processor.chat_template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>model\\n'")
    assert template != processor.chat_template
    monkeypatch.setattr(processor, "chat_template", template)
    collator = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    with (
        caplog.at_level(logging.WARNING, logger="processing.collator"),
        pytest.raises(RuntimeError, match="All 1 rows of this batch were dropped.*tokenization_mismatch"),
    ):
        collator([make_row(id="mismatch")])
    assert collator.stats["skipped"] == {"tokenization_mismatch": 1}
    assert "'mismatch'" in caplog.text and "tokenization_mismatch" in caplog.text


def test_missing_end_of_turn_is_skipped(built):
    _, processor = built()
    collator = MiniLlavaDataCollator(processor, stop_token_ids=[processor.tokenizer.bos_token_id or 1])
    with pytest.raises(RuntimeError, match="no_end_of_turn.*stop_token_ids=model.generation_config"):
        collator([make_row()])


def test_image_count_mismatch_is_skipped(built):
    _, processor = built()
    collator = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    batch = collator([{**make_row(id="bad"), "images": []}, make_row()])
    assert len(batch["input_ids"]) == 1 and collator.stats["skipped"] == {"image_count_mismatch": 1}


def test_processor_expansion_takes_planned_counts_and_refuses_too_few(built):
    _, processor = built()
    token = processor.image_token
    text = f"a{token}b{token}c"
    assert processor.expand_image_tokens(text, counts=[2, 3, 9]) == f"a{token * 2}b{token * 3}c"
    assert processor.expand_image_tokens(text) == text.replace(token, token * processor.num_image_tokens)
    with pytest.raises(ValueError, match=r"2 image token\(s\) in the text but 1 placeholder count"):
        processor.expand_image_tokens(text, counts=[2])


def test_all_masked_rows_are_counted_and_dropped(built, caplog):
    _, processor = built()
    no_answer = {"id": "no-answer", "images": [image()], "messages": [user("What is the date?", 1)]}
    collator = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="processing.collator"):
        batch = collator([no_answer, make_row(), {**no_answer, "id": "no-answer-2"}])
    assert len(batch["input_ids"]) == 1 and len(batch["pixel_values"]) == 1
    assert collator.stats == {"seen": 3, "kept": 1, "truncated": 0, "all_masked": 2, "skipped": {}}
    assert len(caplog.records) == 2 and "'no-answer'" in caplog.text and "'no-answer-2'" in caplog.text
    assert "all_masked" in caplog.text


def test_exceeding_max_skip_fraction_raises(built):
    _, processor = built()
    good, long = make_row(), make_row(answer="Acme Corp " * 30, id="long")
    limit = len(MiniLlavaDataCollator(processor)([good])["input_ids"][0])
    # 1 dropped of 20 = 5%: tolerated; 2 of 20 = 10% > 5%: raises once 20 rows were seen, not before.
    collator = MiniLlavaDataCollator(processor, max_length=limit)
    for _ in range(4):
        collator([long if i == 0 and collator.stats["seen"] == 0 else good for i in range(5)])
    assert collator.stats["seen"] == 20 and collator.stats["skipped"] == {"too_long": 1}
    collator = MiniLlavaDataCollator(processor, max_length=limit)
    for _ in range(3):
        collator([long, good, good, good, good] if collator.stats["seen"] < 10 else [good] * 5)
    with pytest.raises(RuntimeError, match=r"dropped 2 of 20 rows \(10.0% > max_skip_fraction=5.0%\).*too_long"):
        collator([good] * 5)


def test_rejects_bad_arguments(built):
    _, processor = built()
    with pytest.raises(ValueError, match="padding_side"):
        MiniLlavaDataCollator(processor, padding_side="middle")
    with pytest.raises(ValueError, match=r"too_long must be one of \('skip', 'truncate'\), got 'cut'"):
        MiniLlavaDataCollator(processor, too_long="cut")
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        MiniLlavaDataCollator(processor)([{"id": "x", "question": "q"}])


def _png_bytes(color=(200, 30, 30)) -> bytes:
    import io

    buffer = io.BytesIO()
    image(color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "case, reason",
    [
        ("random_bytes", "unreadable_image"),
        ("truncated_png", "unreadable_image"),
        ("messages_none", "bad_messages"),
        ("empty_answer", "empty_answer"),
    ],
)
def test_a_bad_row_is_dropped_counted_and_named_never_raised(built, caplog, case, reason):
    _, processor = built()
    good = make_row(id="good")
    bad = make_row(id=f"bad-{case}")
    if case == "random_bytes":
        bad["images"] = [{"bytes": bytes(range(256)) * 4, "path": None}]
    elif case == "truncated_png":
        bad["images"] = [{"bytes": _png_bytes()[:60], "path": None}]
    elif case == "messages_none":
        bad["messages"] = None
    else:
        bad["messages"] = [user("What is the total?", 1), assistant("  ")]
    collator = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    assert collator.check_row(bad)[0] == reason and collator.check_row(good) is None
    with caplog.at_level(logging.WARNING, logger="processing.collator"):
        batch = collator([bad, good])
    assert len(batch["input_ids"]) == 1 and collator.stats["skipped"] == {reason: 1}
    assert f"'bad-{case}'" in caplog.text and reason in caplog.text
    check_row(batch, 0, processor, "qwen2", ["250 Acme Corp"])


def test_only_the_first_rows_per_reason_are_named(built, caplog):
    from processing.collator import LOGGED_ROWS_PER_REASON

    _, processor = built()
    bad = [{**make_row(id=f"bad-{i}"), "messages": None} for i in range(LOGGED_ROWS_PER_REASON + 3)]
    collator = MiniLlavaDataCollator(processor, max_skip_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="processing.collator"):
        collator([*bad, make_row()])
    assert len(caplog.records) == LOGGED_ROWS_PER_REASON and "only counted" in caplog.records[-1].getMessage()
    assert collator.stats["skipped"] == {"bad_messages": LOGGED_ROWS_PER_REASON + 3}


# ---- too_long="truncate" -----------------------------------------------------------------------------------------


def test_truncate_keeps_exactly_the_answer_tokens_before_the_cut(built):
    model, processor = built()
    answer = "Acme Corp " * 30
    row = make_row(answer=answer, id="long")
    full = MiniLlavaDataCollator(processor)([row])  # no max_length: the whole row
    start = spans(full["labels"][0])[0][0]
    limit = start + 7  # the cut lands inside the answer
    collator = MiniLlavaDataCollator(processor, max_length=limit, too_long="truncate")
    assert collator.check_row(row) is None  # the data check keeps what __call__ keeps
    batch = collator([row, make_row(answer="no", id="short")])
    assert batch["input_ids"].shape[1] == limit and int(batch["attention_mask"][0].sum()) == limit
    assert torch.equal(batch["input_ids"][0], full["input_ids"][0, :limit])
    # Labels computed without the collator: the answer's first 7 tokens (its end-of-turn was cut off), nothing else.
    answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert spans(batch["labels"][0]) == [(start, limit)]
    assert batch["labels"][0, start:limit].tolist() == answer_ids[:7]
    check_row(batch, 1, processor, "qwen2", ["no"])  # the short row is untouched
    assert collator.stats == {"seen": 2, "kept": 2, "truncated": 1, "all_masked": 0, "skipped": {}}
    with torch.no_grad():  # every image keeps all its placeholders, so the model accepts the batch
        assert torch.isfinite(model(**batch).loss)


def test_truncate_between_turns_drops_the_later_answer_only(built):
    _, processor = built()
    messages = [user("What kind of document is this?", 1), assistant("invoice"), user("Total?"), assistant("250")]
    row = {"id": "two-turns", "images": [image()], "messages": messages}
    full = MiniLlavaDataCollator(processor)([row])
    first, second = spans(full["labels"][0])
    limit = second[0] - 1  # past the first answer's end-of-turn, before the second answer
    batch = MiniLlavaDataCollator(processor, max_length=limit, too_long="truncate")([row])
    assert torch.equal(batch["labels"][0], full["labels"][0, :limit]) and spans(batch["labels"][0]) == [first]
    assert processor.tokenizer.decode(batch["labels"][0, first[0] : first[1]]) == "invoice<|im_end|>"


@pytest.mark.parametrize("where", ["inside", "before"])
def test_truncate_never_cuts_an_image_the_row_is_skipped_and_named(built, caplog, where):
    _, processor = built()  # user_turn layout: the image placeholders follow the user header
    row = make_row(answer="Acme Corp " * 30, id=f"cut-{where}")
    full = MiniLlavaDataCollator(processor)([row])
    slots = (full["input_ids"][0] == processor.image_token_id).nonzero().flatten().tolist()
    limit = slots[0] + 3 if where == "inside" else slots[0]  # through the block, or before the whole image
    collator = MiniLlavaDataCollator(processor, max_length=limit, too_long="truncate", max_skip_fraction=1.0)
    assert collator.check_row(row) == (
        "image_beyond_max_length",
        f"image placeholders reach position {slots[-1]} but max_length={limit} (row of {full['input_ids'].shape[1]} "
        "tokens)",
    )
    with (
        caplog.at_level(logging.WARNING, logger="processing.collator"),
        pytest.raises(RuntimeError, match="image_beyond_max_length: too_long='truncate' would cut through"),
    ):
        collator([row])
    assert collator.stats == {
        "seen": 1,
        "kept": 0,
        "truncated": 0,
        "all_masked": 0,
        "skipped": {"image_beyond_max_length": 1},
    }
    assert f"'cut-{where}'" in caplog.text


def test_truncate_that_keeps_no_answer_token_is_skipped(built):
    _, processor = built()
    row = make_row(question="Describe every line item of this invoice. " * 5, answer="ok", id="long-prompt")
    full = MiniLlavaDataCollator(processor)([row])
    start = spans(full["labels"][0])[0][0]
    collator = MiniLlavaDataCollator(processor, max_length=start, too_long="truncate", max_skip_fraction=1.0)
    assert collator.check_row(row) == (
        "answer_beyond_max_length",
        f"the first answer token is at {start} >= max_length={start}",
    )
    # One token more keeps the answer's first token.
    kept = MiniLlavaDataCollator(processor, max_length=start + 1, too_long="truncate")([row])
    assert spans(kept["labels"][0]) == [(start, start + 1)]


def test_skip_stays_the_default_and_truncate_changes_nothing_that_fits(built):
    _, processor = built()
    rows = [make_row(id="a"), make_row("Qty?", "12", 2, "b"), make_row(answer="Acme Corp " * 30, id="long")]
    limit = len(MiniLlavaDataCollator(processor)(rows[:2])["input_ids"][0])
    skip = MiniLlavaDataCollator(processor, max_length=limit, max_skip_fraction=1.0)
    assert skip.too_long == "skip" and skip.check_row(rows[2])[0] == "too_long"
    skipped = skip(rows)
    truncate = MiniLlavaDataCollator(processor, max_length=limit, too_long="truncate")
    truncated = truncate(rows)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(skipped[key], truncated[key][:2]), key
    assert torch.equal(skipped["pixel_values"], truncated["pixel_values"][:3])  # rows a, b: 1 + 2 images
    assert skip.stats["skipped"] == {"too_long": 1} and skip.stats["truncated"] == 0
    assert truncate.stats["skipped"] == {} and truncate.stats["truncated"] == 1
