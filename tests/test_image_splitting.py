"""AnyRes (LLaVA-NeXT) image splitting: token counts from the config, processor, model and transformers' LlavaNext
agree; identical logits to LlavaNextForConditionalGeneration on the same weights; the max_image_tokens budget; errors.
"""

import importlib.util
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
# (height, width): tall, wide, tiny, square-ish, extreme strip; the tiny tower's tile is 128 px (conftest backbones).
SIZES = [(700, 300), (260, 900), (40, 48), (300, 310), (90, 1500), (2400, 1080), (3508, 2480)]


def noise_image(height: int, width: int, seed: int) -> Image.Image:
    """Random pixels, so every tile (and every unpadded column) differs and a misplaced token changes the logits."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def load_export():
    spec = importlib.util.spec_from_file_location("export_llava", os.path.join(ROOT, "scripts", "export_llava.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def anyres(build):
    """(model, processor) with AnyRes on: mlp2x_gelu, every grid up to 4 tiles."""
    return build(seed=1, max_tiles=4)


@pytest.fixture(scope="module")
def llava_next(anyres):
    """LlavaNextForConditionalGeneration + LlavaNextProcessor holding our weights, built by the export's own
    config/processor builders (no files)."""
    model, processor = anyres
    export = load_export()
    next_model = LlavaNextForConditionalGeneration(export.build_llava_config(model.config)).eval()
    missing, unexpected = next_model.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)  # tied head
    next_model.tie_weights()
    next_processor = export.build_llava_processor(processor, model.config)
    assert type(next_processor) is LlavaNextProcessor
    return next_model, next_processor


def test_pinpoints_from_max_tiles_and_counts_agree_everywhere(anyres, llava_next):
    model, processor = anyres
    config = model.config
    assert config.image_grid_pinpoints == [
        [128, 128],
        [128, 256],
        [128, 384],
        [128, 512],
        [256, 128],
        [256, 256],
        [384, 128],
        [512, 128],
    ]
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert config.tile_feature_side == 8 and model.model.image_newline.shape == (config.text_config.hidden_size,)
    next_processor = llava_next[1]
    plan = processor.plan_canvases(SIZES)
    for (height, width), (canvas, tokens) in zip(SIZES, plan):
        theirs = next_processor._get_number_of_features(height, width, 128, 128)  # SigLIP "full": no CLS to drop
        assert tokens == config.count_image_tokens(height, width) == theirs, (height, width)
        rows, cols = config.image_grid(height, width)
        assert canvas == [rows * 128, cols * 128]
    # Hand-checked: 700x300 -> 3 rows x 1 col (384x128 canvas, more of the image kept than 2x1); features 24 x 8;
    # the image is wider than the canvas, so its height is int(700 * 8/300) = 18, padding (24-18)//2 = 3 above and
    # below -> 18 rows kept -> 64 base + 18 * (8 + 1 newline) = 226.
    assert config.image_grid(700, 300) == (3, 1) and config.count_image_tokens(700, 300) == 64 + 18 * 9
    # 90x1500 -> 1x4 (128x512): features 8 x 32, height int(90*32/1500) = 1, padding (8-1)//2 = 3 -> 2 rows kept.
    assert config.image_grid(90, 1500) == (1, 4) and config.count_image_tokens(90, 1500) == 64 + 2 * 33
    mm = processor._get_num_multimodal_tokens(image_sizes=SIZES)
    assert mm.num_image_tokens == [tokens for _, tokens in plan]


def test_single_tile_default_is_unchanged(build):
    model, processor = build(seed=1)
    assert model.config.image_grid_pinpoints is None and model.model.image_newline is None
    assert not any("image_newline" in k for k in model.state_dict())
    assert model.config.count_image_tokens(3508, 2480) == model.config.num_image_tokens == 64
    batch = processor(images=[noise_image(700, 300, 0)], text=[processor.image_token], return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (1, 3, 128, 128)


def batch_of(processor, images, **kwargs):
    texts = [processor.apply_chat_template(QUESTION, add_generation_prompt=True)] * len(images)
    return processor(images=images, text=texts, padding=True, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_identical_logits_to_llava_next_on_a_tall_and_a_wide_image(anyres, llava_next, side):
    model, processor = anyres
    next_model, next_processor = llava_next
    images = [noise_image(700, 300, 1), noise_image(260, 900, 2)]  # tall (3x1 grid) and wide (1x4 grid)
    ours, theirs = batch_of(processor, images, padding_side=side), batch_of(next_processor, images, padding_side=side)
    assert ours["image_grids"].tolist() == [[3, 1], [1, 4]]
    assert ours["pixel_values"].shape == (2, 5, 3, 128, 128)  # padded to the longest tile list (base + 4)
    assert not ours["pixel_values"][0, 4].any()  # the tall image's padding tile
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    slots = (ours["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert slots == [model.config.count_image_tokens(700, 300), model.config.count_image_tokens(260, 900)]
    with torch.no_grad():
        logits = model(**ours).logits
        assert logits.dtype == torch.float32
        # Same ops in the same order on the same weights: bit-identical, not just close.
        assert torch.equal(logits, next_model(**theirs).logits)
        # Our model on LlavaNext's inputs (no image_grids: the grid is derived from image_sizes, as LlavaNext does).
        assert torch.equal(logits, model(**theirs).logits)
        features = model.get_image_features(ours["pixel_values"], ours["image_sizes"], ours["image_grids"])
        next_features = next_model.get_image_features(theirs["pixel_values"], theirs["image_sizes"]).pooler_output
    assert [f.shape[0] for f in features] == slots
    assert all(torch.equal(a, b) for a, b in zip(features, next_features))


def test_placeholders_that_disagree_with_an_image_name_it(anyres):
    model, processor = anyres
    batch = batch_of(processor, [noise_image(700, 300, 1), noise_image(260, 900, 2)], padding_side="left")
    image_id = model.config.image_token_id
    ids = batch["input_ids"].clone()
    last = int((ids[1] == image_id).nonzero()[-1])
    ids[1, last] = processor.tokenizer.pad_token_id  # image 1 loses one placeholder
    expected = model.config.count_image_tokens(260, 900)
    with pytest.raises(ValueError, match=f"image 1 gives {expected} feature tokens .* holds {expected - 1}"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="needs image_sizes"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])


def test_budget_shrinks_grids_per_sample_and_logs_it(build, caplog):
    model, processor = build(seed=1, max_tiles=4, max_image_tokens=420)
    big = [noise_image(2400, 1080, 3), noise_image(1080, 2400, 4)]  # 3x1 and 1x3 at full size: 226 + 216 tokens
    texts = [processor.image_token * 2, processor.image_token]  # sample 0 holds both big images, sample 1 a small one
    images = [*big, noise_image(40, 48, 5)]
    unlimited = [tokens for _, tokens in processor.plan_canvases([(2400, 1080), (1080, 2400)])]
    assert unlimited == [226, 216] and sum(unlimited) > 420  # at most 3 tiles changes nothing, 2 tiles fit
    with caplog.at_level(logging.WARNING):
        batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    shrunk = [r for r in caplog.records if "max_image_tokens=420" in r.getMessage()]
    assert len(shrunk) == 1  # one line, for sample 0 only
    message = shrunk[0].getMessage()
    assert "sample 0" in message and "(2400, 1080)" in message and "['2x1', '1x2']" in message
    assert batch["image_grids"].tolist() == [[2, 1], [1, 2], [1, 1]]
    slots = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert slots[0] == 208 + 200 <= 420 and f"{slots[0]} image tokens" in message
    with torch.no_grad():
        model(**batch)  # the shrunk grids reach the model through image_grids
        # Without image_grids the model derives the unbudgeted 3x1 / 1x3 grids, which these pixel_values lack.
        with pytest.raises(ValueError, match=r"pixel_values hold 8 tiles, but .* call for 10 \(\[4, 4, 2\] per image"):
            model(**{k: v for k, v in batch.items() if k != "image_grids"})
    too_small = build(seed=1, max_tiles=4, max_image_tokens=100)[1]
    with pytest.raises(ValueError, match="Sample 0: .* above max_image_tokens=100; raise max_image_tokens"):
        too_small(images=big, text=[processor.image_token * 2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_grid_pinpoints": [[128, 200]]}, r"entry \[128, 200\] must be \[height, width\], positive multiples"),
        ({"image_grid_pinpoints": []}, "non-empty list"),
        ({"max_tiles": 0}, "max_tiles must be a positive int, got 0"),
        ({"max_tiles": 2, "image_grid_pinpoints": [[128, 256]]}, "disagrees with max_tiles=2"),
        ({"max_tiles": 2, "projector_type": "perceiver"}, "projector_type='perceiver' outputs no spatial grid"),
        ({"max_image_tokens": 500}, "max_image_tokens=500 shrinks AnyRes grids, but AnyRes is off"),
        ({"max_tiles": 2, "max_image_tokens": 64}, "max_image_tokens=64 must be an int above one tile's 64"),
    ],
)
def test_config_refuses_bad_anyres_settings(backbones, kwargs, message):
    from modeling_minillava import MiniLlavaConfig

    vision, text = (AutoConfig.from_pretrained(backbones[k]) for k in ("vision-siglip", "llm-qwen2"))
    with pytest.raises(ValueError, match=message):
        MiniLlavaConfig(vision_config=vision, text_config=text, image_token_id=6, **kwargs)


def test_clip_keeping_cls_is_refused_and_pixel_shuffle_tiles_stitch(backbones, build):
    from modeling_minillava import MiniLlavaConfig

    vision, text = (AutoConfig.from_pretrained(backbones[k]) for k in ("vision-clip", "llm-qwen2"))
    with pytest.raises(ValueError, match="keeps the CLS token of clip_vision_model; use 'default'"):
        MiniLlavaConfig(vision_config=vision, text_config=text, max_tiles=2, vision_feature_select_strategy="full")
    model, processor = build(seed=2, max_tiles=4, projector_type="pixel_shuffle_mlp")
    assert model.config.tile_feature_side == 4  # 8x8 patches, 2x2 shuffle
    images = [noise_image(700, 300, 1), noise_image(260, 900, 2)]
    batch = batch_of(processor, images, padding_side="left")
    slots = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    # 3x1: a 12 x 4 map, image height int(700*4/300) = 9, padding 1 -> 10 rows of 4 + newline; 1x4: a 4 x 16 map,
    # image width int(900*4/260) = 13, padding 1 -> 4 rows of 14 + newline.
    assert slots == [16 + 10 * 5, 16 + 4 * 15]
    assert slots == [model.config.count_image_tokens(*im.size[::-1]) for im in images]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_real_so400m_counts_hand_checked_and_equal_to_the_meta_model():
    """bench/image_tokens.py's function on the real SigLIP-so400m config: an A4 page on LLaVA-NeXT's canvases is a 2x2
    grid of 27x27 tiles = a 54x54 map; the page is narrower than the square canvas, so its width is
    int(2480 * 54/3508) = 38, padding (54-38)//2 = 8 each side -> 38 columns + newline: 729 + 54 * 39 = 2835."""
    from bench import image_tokens as bench
    from modeling_minillava import MiniLlavaModel

    config = bench.build_config(image_grid_pinpoints=bench.LLAVA_NEXT_PINPOINTS)
    assert bench.image_tokens(config, 3508, 2480) == 729 + 54 * 39
    shuffled = bench.build_config(projector_type="pixel_shuffle_mlp", pixel_shuffle_factor=3, max_tiles=9)
    with torch.device("meta"):
        model = MiniLlavaModel(shuffled)
    for height, width in bench.IMAGES.values():
        assert bench.meta_model_tokens(model, height, width) == bench.image_tokens(shuffled, height, width)


def test_chat_template_tokenize_and_trls_collator_carry_anyres_inputs(anyres):
    """The paths users and TRL take: apply_chat_template(tokenize=True) with an inline image, and TRL's
    DataCollatorForVisionLanguageModeling over messages + images rows, whose batch the model trains on."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    model, processor = anyres
    config = model.config
    tall, wide = noise_image(700, 300, 1), noise_image(260, 900, 2)
    inline = [{"role": "user", "content": [{"type": "image", "image": tall}, {"type": "text", "text": "Total?"}]}]
    kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    out = processor.apply_chat_template(inline, **kwargs)
    assert out["image_grids"].tolist() == [[3, 1]] and out["image_sizes"].tolist() == [[700, 300]]
    assert int((out["input_ids"] == config.image_token_id).sum()) == config.count_image_tokens(700, 300)

    def row(image, answer):
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}
        return {
            "messages": [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": [image],
        }

    batch = DataCollatorForVisionLanguageModeling(processor)([row(tall, "250"), row(wide, "Acme Corp")])
    assert batch["image_grids"].tolist() == [[3, 1], [1, 4]]
    slots = (batch["input_ids"] == config.image_token_id).sum(-1).tolist()
    assert slots == [config.count_image_tokens(700, 300), config.count_image_tokens(260, 900)]
    loss = model(**batch).loss
    loss.backward()  # the projector and the newline learn from AnyRes batches
    assert torch.isfinite(loss) and model.model.image_newline.grad.abs().sum() > 0
    model.zero_grad()
