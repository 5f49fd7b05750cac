"""MiniLlavaProcessor: exact sequence layout, padding, image modes, chat templates, bad input, save/load."""

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
    assert qwen.apply_chat_template(QUESTION, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is the total?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama_rendering_is_the_llms_own_template(build):
    processor = build("clip", "llama")[1]
    assert processor.apply_chat_template(QUESTION, add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is the total?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_user_turn_layout_puts_slots_exactly_at_the_marker(qwen):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    before, after = text.split("<image>")
    ids_before = qwen.tokenizer(before, add_special_tokens=False)["input_ids"]
    ids_after = qwen.tokenizer(after, add_special_tokens=False)["input_ids"]
    out = qwen(images=[Image.new("RGB", (40, 30))], text=text)
    n = qwen.num_image_tokens
    assert n == 64
    expected_ids = ids_before + [qwen.pad_token_id] * n + ids_after
    assert out["input_ids"][0].tolist() == expected_ids
    assert out["image_mask"][0].tolist() == [False] * len(ids_before) + [True] * n + [False] * len(ids_after)
    assert out["attention_mask"][0].tolist() == [1] * len(expected_ids)
    assert out["pixel_values"].shape == (1, 3, 128, 128)


def test_prefix_layout_puts_all_slots_first(backbones, build):
    model, _ = build("siglip", "qwen2", image_position="prefix")
    processor = MiniLlavaProcessor.from_backbones(
        backbones["vision-siglip"], backbones["llm-qwen2"], config=model.config
    )
    assert processor.image_position == "prefix"
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    out = processor(images=[Image.new("RGB", (8, 8))] * 1, text=text)
    text_ids = processor.tokenizer(text.replace("<image>\n", ""), add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == [processor.pad_token_id] * 64 + text_ids
    assert out["image_mask"][0].tolist() == [True] * 64 + [False] * len(text_ids)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_masks_are_exact(qwen, side):
    short = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    long = short + "and some more words here"
    out = qwen(images=[Image.new("RGB", (8, 8))] * 2, text=[short, long], padding_side=side)
    n_short = len(qwen(images=[Image.new("RGB", (8, 8))], text=short)["input_ids"][0])
    width = out["input_ids"].shape[1]
    pad = width - n_short
    assert pad > 0
    real = [1] * n_short
    expected = [0] * pad + real if side == "left" else real + [0] * pad
    assert out["attention_mask"][0].tolist() == expected
    assert out["attention_mask"][1].tolist() == [1] * width
    pad_positions = [i for i, m in enumerate(expected) if m == 0]
    assert not out["image_mask"][0, pad_positions].any()
    assert (out["input_ids"][0, pad_positions] == qwen.pad_token_id).all()
    assert out["image_mask"].sum(1).tolist() == [64, 64]


def test_llama_without_pad_token_pads_with_eos(build):
    processor = build("siglip", "llama")[1]
    assert processor.tokenizer.pad_token_id is None
    assert processor.pad_token_id == processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")


@pytest.mark.parametrize("n_images", [0, 2])
def test_wrong_image_count_raises(qwen, n_images):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    with pytest.raises(ValueError, match=rf"1 <image> marker\(s\) \(per sample: \[1\]\) but {n_images} image\(s\)"):
        qwen(images=[Image.new("RGB", (8, 8))] * n_images or None, text=text)


def test_non_image_input_raises(qwen):
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    with pytest.raises(TypeError, match="Images must be PIL.Image.Image or numpy arrays, got str"):
        qwen(images=["page.png"], text=text)


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
    a = qwen(images=[grey], text=text)["pixel_values"]
    b = qwen(images=[grey.convert("RGB")], text=text)["pixel_values"]
    assert torch.equal(a, b)


def test_tokenized_chat_template_includes_pixels(qwen):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.new("RGB", (9, 9))}, {"type": "text", "text": "Hi"}],
        }
    ]
    out = qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert out["pixel_values"].shape == (1, 3, 128, 128) and int(out["image_mask"].sum()) == 64


def test_save_and_load_round_trip(qwen, tmp_path):
    qwen.save_pretrained(tmp_path)
    loaded = MiniLlavaProcessor.from_pretrained(tmp_path)
    assert (loaded.num_image_tokens, loaded.image_position, loaded.chat_template) == (
        qwen.num_image_tokens,
        qwen.image_position,
        qwen.chat_template,
    )
    text = qwen.apply_chat_template(QUESTION, add_generation_prompt=True)
    a, b = qwen(images=[Image.new("RGB", (8, 8))], text=text), loaded(images=[Image.new("RGB", (8, 8))], text=text)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_processor_requires_a_positive_token_count(qwen):
    with pytest.raises(ValueError, match="num_image_tokens must be a positive int, got None"):
        MiniLlavaProcessor(qwen.image_processor, qwen.tokenizer, chat_template="x")


def test_processor_and_config_must_agree_on_slots():
    class Config:  # validation runs before anything is loaded, so no backbone is needed
        num_image_tokens, image_position = 64, "user_turn"

    with pytest.raises(ValueError, match="num_image_tokens=5 disagrees with config.num_image_tokens=64"):
        MiniLlavaProcessor.from_backbones("vision", "llm", config=Config(), num_image_tokens=5)
