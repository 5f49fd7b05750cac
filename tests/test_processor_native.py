"""MiniLlavaProcessor through the native transformers workflows: chat messages carrying images (path, URL, base64,
PIL), custom templates and assistant masks, tokenizer kwargs, typed image tags, image modes, save/load."""

import base64
import functools
import http.server
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from processing import MiniLlavaProcessor
from processing.processing_minillava import build_chat_template

QUESTION = "What is the total?"
ANSWER = "The total is 42."
CHATML_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"

# ChatML with the answer (and its end-of-turn) marked for `return_assistant_tokens_mask`.
CHATML_GENERATION = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def draw_page(mode: str = "RGB", size=(64, 48)) -> Image.Image:
    """Black "TOTAL 42" + a red box; RGB on white, RGBA on a fully transparent (0, 0, 0, 0) background."""
    background = (0, 0, 0, 0) if mode == "RGBA" else "white"
    ink = (0, 0, 0, 255) if mode == "RGBA" else (0, 0, 0)
    red = (255, 0, 0, 255) if mode == "RGBA" else (255, 0, 0)
    page = Image.new(mode, size, background)
    draw = ImageDraw.Draw(page)
    draw.text((4, 4), "TOTAL 42", fill=ink, font=ImageFont.load_default_imagefont())  # bitmap font: no blending
    draw.rectangle((40, 30, 59, 43), fill=red)
    return page


def user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def expected_ids(processor, text: str) -> list[int]:
    """`text` tokenized with each image token replaced by num_image_tokens placeholder ids (built independently)."""
    ids = []
    pieces = text.split(processor.image_token)
    for i, piece in enumerate(pieces):
        ids += processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        if i < len(pieces) - 1:
            ids += [processor.image_token_id] * processor.num_image_tokens
    return ids


def pixels(processor, image) -> torch.Tensor:
    """Reference pixel_values of one image through a direct processor call."""
    return processor(images=[image], text=processor.image_token, return_tensors="pt")["pixel_values"]


def chat(processor, messages, **kwargs):
    kwargs = {"return_tensors": "pt", "processor_kwargs": {"padding": True}, **kwargs}
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
    )


@pytest.fixture(scope="module")
def qwen(build):
    return build("siglip", "qwen2")[1]


@pytest.fixture(scope="module")
def llama(build):
    return build("clip", "llama")[1]


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    draw_page().save(root / "page.png")
    draw_page("RGBA").save(root / "page_rgba.png")
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a handler thread forever

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(page_dir):
    """Base URL of a local HTTP server over `page_dir` (127.0.0.1, ephemeral port, stopped after the module)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=page_dir))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:  # httpx honours proxy variables; a local URL must not go through one
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            mp.delenv(name, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# --- images given in chat messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["relative path", "path key", "url key", "base64 key", "PIL"])
def test_chat_image_sources_give_the_same_tensors_as_a_direct_call(qwen, page_dir, server, monkeypatch, source):
    monkeypatch.chdir(page_dir)
    part = {
        "relative path": {"type": "image", "image": "page.png"},
        "path key": {"type": "image", "path": str(page_dir / "page.png")},
        "url key": {"type": "image", "url": f"{server}/page.png"},
        "base64 key": {"type": "image", "base64": base64.b64encode((page_dir / "page.png").read_bytes()).decode()},
        "PIL": {"type": "image", "image": draw_page()},
    }[source]
    out = chat(qwen, [user(part, text_part(QUESTION))])
    text = CHATML_HEAD + f"<|image_pad|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert torch.equal(out["pixel_values"], qwen(images=[draw_page()], text=text, return_tensors="pt")["pixel_values"])
    assert out["pixel_values"].shape == (1, 3, 128, 128)
    assert out["input_ids"].tolist() == [expected_ids(qwen, text)]
    assert int((out["input_ids"] == qwen.image_token_id).sum()) == qwen.num_image_tokens == 64
    assert out["attention_mask"].tolist() == [[1] * out["input_ids"].shape[1]]


def test_batch_of_two_conversations(qwen, page_dir, server):
    other = Image.new("RGB", (30, 50), (0, 128, 255))
    conversations = [
        [user({"type": "image", "path": str(page_dir / "page.png")}, text_part(QUESTION))],
        [
            user(
                text_part("Compare"), {"type": "image", "url": f"{server}/page.png"}, {"type": "image", "image": other}
            )
        ],
    ]
    out = chat(qwen, conversations)
    texts = [
        CHATML_HEAD + f"<|image_pad|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
        CHATML_HEAD + "Compare\n<|image_pad|>\n<|image_pad|><|im_end|>\n<|im_start|>assistant\n",
    ]
    assert qwen.apply_chat_template(conversations, add_generation_prompt=True) == texts
    rows = [expected_ids(qwen, t) for t in texts]
    width = max(map(len, rows))
    pad = qwen.pad_token_id
    assert out["input_ids"].tolist() == [r + [pad] * (width - len(r)) for r in rows]  # right padding by default
    assert out["attention_mask"].tolist() == [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    assert (out["input_ids"] == qwen.image_token_id).sum(1).tolist() == [64, 128]
    reference = torch.cat([pixels(qwen, draw_page()), pixels(qwen, draw_page()), pixels(qwen, other)])
    assert torch.equal(out["pixel_values"], reference)  # images in reading order across the batch


# --- templates: custom, open final message, assistant masks, string output -------------------------------------------


def test_custom_chat_template_string_is_used(qwen):
    custom = (
        "{%- for message in messages %}{%- for part in message['content'] %}"
        "{%- if part['type'] == 'image' %}<|image_pad|>{%- else %}[{{ message['role'] }}] {{ part['text'] }}"
        "{%- endif %}{%- endfor %}{%- endfor %}"
    )
    messages = [user({"type": "image", "image": draw_page()}, text_part(QUESTION))]
    assert qwen.apply_chat_template(messages, chat_template=custom) == f"<|image_pad|>[user] {QUESTION}"
    out = qwen.apply_chat_template(
        messages, chat_template=custom, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["input_ids"].tolist() == [expected_ids(qwen, f"<|image_pad|>[user] {QUESTION}")]
    assert torch.equal(out["pixel_values"], pixels(qwen, draw_page()))


def test_tokenize_false_returns_the_rendered_string(qwen):
    messages = [user({"type": "image", "image": draw_page()}, text_part(QUESTION))]
    rendered = qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == CHATML_HEAD + f"<|image_pad|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_continue_final_message_leaves_the_answer_open(qwen):
    messages = [
        user({"type": "image", "image": draw_page()}, text_part(QUESTION)),
        {"role": "assistant", "content": [text_part("The total is")]},
    ]
    prefix = CHATML_HEAD + f"<|image_pad|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\nThe total is"
    assert qwen.apply_chat_template(messages, continue_final_message=True) == prefix
    out = qwen.apply_chat_template(
        messages, continue_final_message=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["input_ids"].tolist() == [expected_ids(qwen, prefix)]  # no <|im_end|> after the partial answer


def test_assistant_tokens_mask_covers_exactly_the_answer(qwen):
    template = build_chat_template(CHATML_GENERATION, qwen.image_token, "user_turn")
    answers = [ANSWER, "Blue"]
    conversations = [
        [user({"type": "image", "image": draw_page()}, text_part(QUESTION)), {"role": "assistant", "content": ANSWER}],
        [
            user(
                {"type": "image", "image": draw_page()}, {"type": "image", "image": draw_page()}, text_part("Colour?")
            ),
            {"role": "assistant", "content": "Blue"},
        ],
    ]
    out = qwen.apply_chat_template(
        conversations,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    masks = torch.as_tensor(out["assistant_masks"]).bool()
    assert masks.shape == out["input_ids"].shape
    assert (out["input_ids"] == qwen.image_token_id).sum(1).tolist() == [64, 128]
    for row, answer in enumerate(answers):
        answer_ids = qwen.tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = out["input_ids"][row].tolist()
        assert out["input_ids"][row][masks[row]].tolist() == answer_ids
        start = masks[row].nonzero()[0].item()
        assert masks[row].tolist() == [False] * start + [True] * len(answer_ids) + [False] * (
            len(ids) - start - len(answer_ids)
        )  # one contiguous span
        assert ids[start : start + len(answer_ids)] == answer_ids
        assert not masks[row][out["attention_mask"][row] == 0].any()
        assert not masks[row][out["input_ids"][row] == qwen.image_token_id].any()


# --- tokenizer kwargs reach the tokenizer ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_puts_pads_exactly_there(qwen, side):
    texts = [f"<|image_pad|>\n{QUESTION}", f"<|image_pad|>\n{QUESTION} Answer with a single word or phrase."]
    out = qwen(images=[draw_page(), draw_page()], text=texts, padding=True, padding_side=side, return_tensors="pt")
    rows = [expected_ids(qwen, t) for t in texts]
    gap = len(rows[1]) - len(rows[0])
    assert gap > 0
    pads = [qwen.pad_token_id] * gap
    row0 = pads + rows[0] if side == "left" else rows[0] + pads
    mask0 = [0] * gap + [1] * len(rows[0]) if side == "left" else [1] * len(rows[0]) + [0] * gap
    assert out["input_ids"].tolist() == [row0, rows[1]]
    assert out["attention_mask"].tolist() == [mask0, [1] * len(rows[1])]


def test_padding_to_max_length(qwen):
    text = f"<|image_pad|>\n{QUESTION}"
    ids = expected_ids(qwen, text)
    out = qwen(images=[draw_page()], text=text, padding="max_length", max_length=len(ids) + 7, return_tensors="pt")
    assert out["input_ids"].tolist() == [ids + [qwen.pad_token_id] * 7]
    assert out["attention_mask"].tolist() == [[1] * len(ids) + [0] * 7]


def test_truncation_that_cuts_only_text_works(qwen):
    text = f"<|image_pad|>\n{QUESTION}"
    ids = expected_ids(qwen, text)
    out = qwen(images=[draw_page()], text=text, truncation=True, max_length=len(ids) - 3, return_tensors="pt")
    assert out["input_ids"].tolist() == [ids[:-3]]
    assert int((out["input_ids"] == qwen.image_token_id).sum()) == 64


def test_truncation_into_image_placeholders_raises(qwen):
    text = f"{QUESTION}\n<|image_pad|>"
    kept = len(qwen.tokenizer(f"{QUESTION}\n", add_special_tokens=False)["input_ids"]) + 10  # 10 of 64 placeholders
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count between text and `input_ids`\. "):
        qwen(images=[draw_page()], text=text, truncation=True, max_length=kept)
    with pytest.raises(ValueError, match=r"Got ids=\[10\] and text=\[64\]\. Likely due to `truncation='max_length'`"):
        qwen(images=[draw_page()], text=text, truncation=True, max_length=kept)


def test_return_tensors_np_and_none(qwen):
    text = f"<|image_pad|>\n{QUESTION}"
    ids = expected_ids(qwen, text)
    reference = pixels(qwen, draw_page()).numpy()

    as_np = qwen(images=[draw_page()], text=text, return_tensors="np")
    assert all(isinstance(as_np[k], np.ndarray) for k in ("input_ids", "attention_mask", "pixel_values"))
    assert as_np["input_ids"].tolist() == [ids] and np.array_equal(as_np["pixel_values"], reference)

    as_lists = qwen(images=[draw_page()], text=text, return_tensors=None)
    assert as_lists["input_ids"] == [ids] and as_lists["attention_mask"] == [[1] * len(ids)]
    assert isinstance(as_lists["pixel_values"], list) and len(as_lists["pixel_values"]) == 1
    assert np.array_equal(as_lists["pixel_values"][0], reference[0])


def test_tokenizer_kwargs_reach_the_tokenizer_through_apply_chat_template(qwen):
    conversations = [
        [user({"type": "image", "image": draw_page()}, text_part(QUESTION))],
        [user({"type": "image", "image": draw_page()}, text_part(QUESTION + " Answer briefly."))],
    ]
    out = chat(qwen, conversations, return_tensors="np", processor_kwargs={"padding": True, "padding_side": "left"})
    assert isinstance(out["input_ids"], np.ndarray) and isinstance(out["pixel_values"], np.ndarray)
    rows = [expected_ids(qwen, t) for t in qwen.apply_chat_template(conversations, add_generation_prompt=True)]
    gap = len(rows[1]) - len(rows[0])
    assert gap > 0 and out["input_ids"].tolist() == [[qwen.pad_token_id] * gap + rows[0], rows[1]]


# --- a typed image tag inside a question -----------------------------------------------------------------------------


def test_typed_image_tag_is_plain_text_for_qwen(qwen):
    question = "Is <image> an HTML tag?"
    out = chat(qwen, [user({"type": "image", "image": draw_page()}, text_part(question))])
    text = CHATML_HEAD + f"<|image_pad|>\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert qwen.image_token == "<|image_pad|>"
    assert out["input_ids"].tolist() == [expected_ids(qwen, text)]
    assert int((out["input_ids"] == qwen.image_token_id).sum()) == 64


@pytest.mark.parametrize("backbone", ["llama", "qwen"])
def test_typed_image_token_is_a_count_error_that_names_the_fix(llama, qwen, backbone):
    """Typing the processor's own image token adds an image marker: the error says so and how to fix it."""
    processor = {"llama": llama, "qwen": qwen}[backbone]
    question = f"Is {processor.image_token} a tag?"
    token = re.escape(processor.image_token)
    with pytest.raises(
        ValueError, match=rf"Found total 2 {token} tokens and 1 images\..*sanitize_control_tokens=True"
    ):
        chat(processor, [user({"type": "image", "image": draw_page()}, text_part(question))])
    with pytest.raises(
        ValueError, match=rf"Found 1 {token} tokens in the text but no images.*sanitize_control_tokens"
    ):
        chat(processor, [user(text_part(question))])  # a text-only chat fails too


def test_typed_llava_style_image_tag_is_plain_text_for_llama(llama):
    assert llama.image_token == "<|image|>"  # added: control-token shaped, so "<image>" in a question is just text
    out = chat(llama, [user({"type": "image", "image": draw_page()}, text_part("Is <image> an HTML tag?"))])
    assert int((out["input_ids"][0] == llama.image_token_id).sum()) == 64


@pytest.mark.parametrize("backbone", ["llama", "qwen"])
def test_sanitize_control_tokens_makes_a_typed_image_token_plain_text(llama, qwen, backbone):
    processor = {"llama": llama, "qwen": qwen}[backbone]
    question = f"Is {processor.image_token} a tag?"
    out = chat(
        processor, [user({"type": "image", "image": draw_page()}, text_part(question))], sanitize_control_tokens=True
    )
    ids = out["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 64
    assert processor.tokenizer.decode(ids[ids != processor.image_token_id]).count(question) == 1
    typed = processor.tokenizer.encode(question, add_special_tokens=False, split_special_tokens=True)
    assert processor.image_token_id not in typed
    assert any(ids[i : i + len(typed)].tolist() == typed for i in range(len(ids) - len(typed) + 1))
    no_images = chat(processor, [user(text_part(question))], sanitize_control_tokens=True)
    assert int((no_images["input_ids"] == processor.image_token_id).sum()) == 0 and "pixel_values" not in no_images


# --- image conversion ------------------------------------------------------------------------------------------------


def test_transparent_png_arrives_black_on_white(qwen, page_dir):
    rgba = Image.open(page_dir / "page_rgba.png")
    assert rgba.mode == "RGBA"
    reference = pixels(qwen, draw_page())
    assert not torch.equal(pixels(qwen, rgba.convert("RGB")), reference)  # a plain convert turns it all black
    assert torch.equal(pixels(qwen, rgba), reference)
    assert torch.equal(pixels(qwen, str(page_dir / "page_rgba.png")), reference)
    out = chat(qwen, [user({"type": "image", "path": str(page_dir / "page_rgba.png")}, text_part(QUESTION))])
    assert torch.equal(out["pixel_values"], reference)


@pytest.mark.parametrize("source", ["url", "base64"])
def test_transparent_png_from_url_or_base64_arrives_black_on_white(qwen, page_dir, server, source):
    encoded = base64.b64encode((page_dir / "page_rgba.png").read_bytes()).decode()
    image = f"{server}/page_rgba.png" if source == "url" else encoded
    assert torch.equal(pixels(qwen, image), pixels(qwen, draw_page()))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_is_made_upright(qwen, tmp_path, orientation):
    upright = draw_page()
    # What a camera stores for orientation 6 (display needs 90 deg clockwise) / 8 (90 deg counter-clockwise).
    stored_as = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    undo = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    upright.transpose(stored_as).save(path, exif=exif, quality=95)
    raw = Image.open(path)
    raw.load()
    assert raw.size == (48, 64) and raw.getexif()[0x0112] == orientation
    # The decoded JPEG turned upright by hand, as plain pixels (JPEG is lossy, so not `upright` itself; and a
    # transposed PIL image keeps the orientation tag in .info, which would be applied a second time).
    expected = Image.fromarray(np.asarray(raw.transpose(undo)))
    assert expected.size == upright.size
    assert not torch.equal(pixels(qwen, Image.fromarray(np.asarray(raw))), pixels(qwen, expected))  # bites
    assert torch.equal(pixels(qwen, str(path)), pixels(qwen, expected))
    out = chat(qwen, [user({"type": "image", "path": str(path)}, text_part(QUESTION))])
    assert torch.equal(out["pixel_values"], pixels(qwen, expected))


def test_16_bit_greyscale_png_is_scaled_not_clipped(qwen, tmp_path):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels.astype(np.uint16) * 257).save(path)  # 8-bit level k <-> 16-bit k * 257
    assert Image.open(path).mode == "I;16"
    expected = Image.fromarray(np.repeat(levels[..., None], 3, axis=2))
    clipped = pixels(qwen, Image.open(path).convert("RGB"))
    assert torch.equal(pixels(qwen, str(path)), pixels(qwen, expected))
    assert not torch.equal(clipped, pixels(qwen, expected))


def test_16_bit_greyscale_keeps_its_absolute_levels(qwen):
    page = np.full((16, 16), 65535, dtype=np.uint16)
    page[4:8, 4:12] = 128 * 257  # mid-grey ink on white
    expected = np.full((16, 16, 3), 255, dtype=np.uint8)
    expected[4:8, 4:12] = 128
    assert torch.equal(pixels(qwen, Image.fromarray(page)), pixels(qwen, Image.fromarray(expected)))
    blank = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    assert torch.equal(pixels(qwen, blank), pixels(qwen, Image.new("RGB", (16, 16), "white")))


def test_palette_image_with_transparency_goes_on_white(qwen, tmp_path):
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    ImageDraw.Draw(palette).rectangle((0, 0, 15, 15), fill=1)
    ImageDraw.Draw(palette).rectangle((16, 16, 31, 31), fill=2)
    palette.info["transparency"] = 0  # index 0 (black) is transparent
    path = tmp_path / "palette.png"
    palette.save(path)
    expected = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(expected).rectangle((0, 0, 15, 15), fill=(255, 0, 0))
    ImageDraw.Draw(expected).rectangle((16, 16, 31, 31), fill=(0, 0, 255))
    assert Image.open(path).mode == "P" and Image.open(path).info["transparency"] == 0
    assert torch.equal(pixels(qwen, palette), pixels(qwen, expected))
    assert torch.equal(pixels(qwen, str(path)), pixels(qwen, expected))


# --- counts ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_tokens", "n_images"), [(2, 1), (1, 2)])
def test_image_count_mismatch_names_both_counts(qwen, n_tokens, n_images):
    with pytest.raises(ValueError, match=rf"Found total {n_tokens} <\|image_pad\|> tokens and {n_images} images\. "):
        qwen(images=[draw_page()] * n_images, text="<|image_pad|>" * n_tokens + QUESTION)


# --- save / load -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vision", "llm", "position"),
    [("siglip", "qwen2", "user_turn"), ("clip", "llama", "user_turn"), ("siglip", "qwen2", "prefix")],
)
def test_save_and_load_round_trip(build, tmp_path, vision, llm, position):
    processor = build(vision, llm, image_position=position)[1]
    processor.save_pretrained(tmp_path)
    loaded = MiniLlavaProcessor.from_pretrained(tmp_path)
    attributes = ("image_token", "image_token_id", "num_image_tokens", "image_position", "chat_template")
    assert {a: getattr(loaded, a) for a in attributes} == {a: getattr(processor, a) for a in attributes}
    assert loaded.image_position == position and loaded.pad_token_id == processor.pad_token_id
    messages = [user({"type": "image", "image": draw_page()}, text_part(QUESTION))]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert loaded.apply_chat_template(messages, add_generation_prompt=True) == rendered
    if position == "prefix":
        assert rendered.startswith(processor.image_token) and rendered.count(processor.image_token) == 1
    a, b = chat(processor, messages), chat(loaded, messages)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["input_ids"].tolist() == [expected_ids(processor, rendered)]
