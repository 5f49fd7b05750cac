"""AnyRes end to end (issue 12's "done when"): an A4 page (2480x3508) and a wide screenshot (2400x1080) go through
processor -> model -> generate -> save_pretrained -> remote-code reload in a fresh process, with the placeholder counts
the config predicts; batched greedy generation with mixed grids equals one-by-one generation."""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

PAGE, SCREENSHOT = (3508, 2480), (1080, 2400)  # (height, width)
QUESTIONS = ["What is the invoice total?", "Which button is at the bottom right of this settings screen?"]
GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}

CHILD = textwrap.dedent(
    """
    import json, sys
    for name in ("modeling_minillava", "processing", "data_scripts", "metrics"):
        sys.modules[name] = None  # the project is NOT importable: only the folder's remote code may be used
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, out = sys.argv[1], sys.argv[2]
    spec = json.loads(open(folder + "/request.json").read())
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    images = [Image.open(path) for path in spec["images"]]
    batch = processor(images=images, text=spec["texts"], padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, **spec["greedy"])
    torch.save({"batch": dict(batch), "logits": logits, "generated": generated, "classes": [
        type(processor).__module__, type(processor.image_processor).__name__, type(model).__module__]}, out)
    """
)


def blocks_image(height: int, width: int, seed: int) -> Image.Image:
    """Random 16-px blocks at full size: every tile differs, and cheap to make at A4 resolution."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    return small.resize((width, height), Image.NEAREST)


@pytest.fixture(scope="module")
def setup(build):
    model, processor = build(seed=4, max_tiles=6)
    images = [blocks_image(*PAGE, seed=0), blocks_image(*SCREENSHOT, seed=1)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in QUESTIONS
    ]
    return model, processor, images, texts


def test_big_images_get_the_placeholders_the_config_predicts(setup):
    model, processor, images, texts = setup
    config = model.config
    batch = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    # The page is portrait (2 cols x 3 rows of 128-px tiles at most 6), the screenshot landscape.
    assert batch["image_grids"].tolist() == [list(config.image_grid(*PAGE)), list(config.image_grid(*SCREENSHOT))]
    assert batch["image_sizes"].tolist() == [list(PAGE), list(SCREENSHOT)]
    slots = (batch["input_ids"] == config.image_token_id).sum(-1).tolist()
    assert slots == [config.count_image_tokens(*PAGE), config.count_image_tokens(*SCREENSHOT)]
    assert slots[0] > config.num_image_tokens * 2 and slots[1] > config.num_image_tokens * 2  # really tiled
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"], batch["image_sizes"], batch["image_grids"])
    assert [f.shape[0] for f in features] == slots


def test_prefill_only_gets_pixel_values_and_image_sizes(setup):
    model, processor, images, texts = setup
    batch = processor(images=images[1:], text=texts[1:], return_tensors="pt")
    images_in = {k: batch[k] for k in ("pixel_values", "image_sizes", "image_grids")}
    first = model.prepare_inputs_for_generation(batch["input_ids"], is_first_iteration=True, **images_in)
    later = model.prepare_inputs_for_generation(batch["input_ids"][:, -1:], is_first_iteration=False, **images_in)
    assert all(torch.equal(first[k], v) for k, v in images_in.items())
    assert not set(images_in) & set(later)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_generation_equals_one_by_one_with_mixed_grids(setup, side):
    model, processor, images, texts = setup
    batch = processor(images=images, text=texts, padding=True, padding_side=side, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    assert batch["image_grids"][0].tolist() != batch["image_grids"][1].tolist()  # mixed grids in one batch
    prompt_len = batch["input_ids"].shape[1]
    with torch.no_grad():
        together = model.generate(**batch, **GREEDY)[:, prompt_len:]
        for row, (image, text) in enumerate(zip(images, texts)):
            alone = processor(images=[image], text=[text], return_tensors="pt")
            new = model.generate(**alone, **GREEDY)[:, alone["input_ids"].shape[1] :]
            assert together[row].tolist() == new[0].tolist(), row


@pytest.mark.slow
def test_remote_code_reload_in_a_fresh_process_gives_identical_outputs(setup, tmp_path, fresh_python):
    model, processor, images, texts = setup
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"image{i}.png"))
        image.save(paths[-1])
    (folder / "request.json").write_text(json.dumps({"images": paths, "texts": texts, "greedy": GREEDY}))
    batch = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        logits, generated = model(**batch).logits, model.generate(**batch, **GREEDY)

    out = tmp_path / "child.pt"
    fresh_python(CHILD, folder, out)
    child = torch.load(out, weights_only=False)
    processor_module, image_processor, model_module = child["classes"]
    assert processor_module.startswith("transformers_modules") and model_module.startswith("transformers_modules")
    assert image_processor == "LlavaNextImageProcessorPil"
    assert child["batch"].keys() == batch.keys()
    assert all(torch.equal(child["batch"][k], v) for k, v in batch.items())
    assert torch.equal(child["logits"], logits)
    assert torch.equal(child["generated"], generated)
