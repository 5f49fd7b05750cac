"""MiniLlavaProcessor: exact sequence layout, padding, image modes, chat templates, bad input, save/load."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from processing import MiniLlavaProcessor
from processing.processing_minillava import to_rgb

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]


@pytest.fixture(scope="module")
def qwen(build):
    return build("siglip", "qwen2")[1]


def test_chatml_rendering_is_the_llms_own_template(qwen):
    assert qwen.image_token == "<|image_pad|>"  # reserved by the Qwen tokenizer: nothing added
    assert qwen.image_token_id == qwen.tokenizer.convert_tokens_to_ids("<|image_pad|>") < 1024
    assert qwen.apply_chat_template(QUESTION, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|image_pad|>\nWhat is the total?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama_rendering_is_the_llms_own_template(build):
    model, processor = build("clip", "llama")
    # No reserved image token in this tokenizer: `<|image|>` is added to the tokenizer only, past the embedding table.
    assert processor.image_token == "<|image|>"
    assert processor.image_token_id == model.config.image_token_id == model.config.text_config.vocab_size
    assert model.get_input_embeddings().num_embeddings == model.config.text_config.vocab_size  # never resized
    assert processor.apply_chat_template(QUESTION, add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>\nWhat is the total?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_reserved_llama3_special_token_is_reused(backbones, tmp_path):
    from transformers import AutoTokenizer

    from modeling_minillava.configuration_minillava import choose_image_token

    tokenizer = AutoTokenizer.from_pretrained(backbones["llm-llama"])
    assert choose_image_token(tokenizer) == ("<|image|>", len(tokenizer))  # nothing reserved: to be added
    tokenizer.add_tokens(["<|reserved_special_token_3|>", "<|reserved_special_token_0|>"], special_tokens=True)
    reserved_0 = tokenizer.convert_tokens_to_ids("<|reserved_special_token_0|>")
    assert choose_image_token(tokenizer) == ("<|reserved_special_token_0|>", reserved_0)
    tokenizer.add_tokens(["<|image_pad|>"], special_tokens=True)
    assert choose_image_token(tokenizer)[0] == "<|image_pad|>"


def test_user_turn_layout_puts_placeholders_exactly_at_the_image_part(qwen):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    before, after = text.split(qwen.image_token)
    ids_before = qwen.tokenizer(before, add_special_tokens=False)["input_ids"]
    ids_after = qwen.tokenizer(after, add_special_tokens=False)["input_ids"]
    out = qwen(images=[Image.new("RGB", (40, 30))], text=text, return_tensors="pt")
    n = qwen.num_image_tokens
    assert n == 64
    expected_ids = ids_before + [qwen.image_token_id] * n + ids_after
    assert out["input_ids"][0].tolist() == expected_ids
    assert out["attention_mask"][0].tolist() == [1] * len(expected_ids)
    assert out["pixel_values"].shape == (1, 3, 128, 128)


def test_prefix_layout_puts_all_placeholders_first(backbones, build):
    model, _ = build("siglip", "qwen2", image_position="prefix")
    processor = MiniLlavaProcessor.from_backbones(
        backbones["vision-siglip"], backbones["llm-qwen2"], config=model.config
    )
    assert processor.image_position == "prefix"
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert text.startswith("<|image_pad|><|im_start|>system") and text.count("<|image_pad|>") == 1
    out = processor(images=[Image.new("RGB", (8, 8))] * 1, text=text, return_tensors="pt")
    text_ids = processor.tokenizer(text.replace("<|image_pad|>", ""), add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == [processor.image_token_id] * 64 + text_ids


def test_switching_the_layout_rebuilds_the_template(build):
    processor = build("siglip", "qwen2")[1]
    user_turn = processor.chat_template
    processor.set_image_position("prefix")
    assert processor.apply_chat_template(QUESTION).startswith("<|image_pad|><|im_start|>")
    processor.set_image_position("user_turn")
    assert processor.chat_template == user_turn


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_masks_are_exact(qwen, side):
    short = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    long = short + "and some more words here"
    out = qwen(
        images=[Image.new("RGB", (8, 8))] * 2, text=[short, long], padding=True, padding_side=side, return_tensors="pt"
    )
    n_short = len(qwen(images=[Image.new("RGB", (8, 8))], text=short, return_tensors="pt")["input_ids"][0])
    width = out["input_ids"].shape[1]
    pad = width - n_short
    assert pad > 0
    real = [1] * n_short
    expected = [0] * pad + real if side == "left" else real + [0] * pad
    assert out["attention_mask"][0].tolist() == expected
    assert out["attention_mask"][1].tolist() == [1] * width
    pad_positions = [i for i, m in enumerate(expected) if m == 0]
    assert (out["input_ids"][0, pad_positions] == qwen.pad_token_id).all()
    assert (out["input_ids"] == qwen.image_token_id).sum(1).tolist() == [64, 64]


def test_llama_without_pad_token_pads_with_eos(backbones, build):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(backbones["llm-llama"]).pad_token_id is None  # like Llama 3
    processor = build("siglip", "llama")[1]
    assert processor.pad_token_id == processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")


@pytest.mark.parametrize("n_images", [0, 2])
def test_wrong_image_count_raises(qwen, n_images):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    expected = (
        "Found 1 <|image_pad|> tokens in the text but no images"
        if not n_images
        else "Found total 1 <|image_pad|> tokens and 2 images"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        qwen(images=[Image.new("RGB", (8, 8))] * n_images or None, text=text, return_tensors="pt")


def test_missing_image_file_raises(qwen):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    with pytest.raises(ValueError, match="Incorrect image source"):
        qwen(images=["no/such/page.png"], text=text, return_tensors="pt")


def test_modes_are_converted_to_rgb():
    assert to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)  # transparent->white
    assert to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert [to_rgb(deep).getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]
    assert to_rgb(np.zeros((2, 2, 3), dtype=np.uint8)).mode == "RGB"


def test_every_mode_gives_the_same_pixels_as_its_rgb_version(qwen):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    grey = Image.new("L", (20, 20), 100)
    a = qwen(images=[grey], text=text, return_tensors="pt")["pixel_values"]
    b = qwen(images=[grey.convert("RGB")], text=text, return_tensors="pt")["pixel_values"]
    assert torch.equal(a, b)


def test_tokenized_chat_template_includes_pixels(qwen):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.new("RGB", (9, 9))}, {"type": "text", "text": "Hi"}],
        }
    ]
    out = qwen.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["pixel_values"].shape == (1, 3, 128, 128) and int((out["input_ids"] == qwen.image_token_id).sum()) == 64


def test_save_and_load_round_trip(qwen, tmp_path):
    qwen.save_pretrained(tmp_path)
    loaded = MiniLlavaProcessor.from_pretrained(tmp_path)
    keys = ("num_image_tokens", "image_position", "chat_template", "image_token", "image_token_id")
    assert [getattr(loaded, k) for k in keys] == [getattr(qwen, k) for k in keys]
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    a, b = (
        qwen(images=[Image.new("RGB", (8, 8))], text=text, return_tensors="pt"),
        loaded(images=[Image.new("RGB", (8, 8))], text=text, return_tensors="pt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_processor_requires_a_positive_token_count(qwen):
    with pytest.raises(ValueError, match="num_image_tokens must be a positive int, got None"):
        MiniLlavaProcessor(qwen.image_processor, qwen.tokenizer, chat_template="x")


def test_processor_and_config_must_agree_on_the_placeholder(backbones, build):
    model, _ = build("siglip", "qwen2")
    model.config.image_token_id = 5000  # past the Qwen tokenizer: the config came from another LLM
    with pytest.raises(ValueError, match="config.image_token_id=5000 is not a token of"):
        MiniLlavaProcessor.from_backbones(backbones["vision-siglip"], backbones["llm-qwen2"], config=model.config)


def test_image_token_must_be_one_special_token(qwen):
    with pytest.raises(ValueError, match="image_token='<img>' is not a single special token of the tokenizer"):
        MiniLlavaProcessor(qwen.image_processor, qwen.tokenizer, num_image_tokens=4, image_token="<img>")


def test_uint8_arrays_of_every_layout_load_as_rgb():
    from processing.processing_minillava import load_rgb

    for array in (
        np.full((5, 7), 100, np.uint8),
        np.full((5, 7, 1), 100, np.uint8),
        np.full((5, 7, 3), 100, np.uint8),
    ):
        image = load_rgb(array)
        assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (7, 5), (100, 100, 100))
    chw = np.zeros((3, 5, 7), np.float32)
    assert load_rgb(chw) is chw  # left to the image processor
