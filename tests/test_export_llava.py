"""scripts/export_llava.py: a saved MiniLlava mlp2x_gelu folder becomes a plain Llava folder that AutoClasses load
without trust_remote_code, with identical input_ids, logits and greedy generations; other projectors are refused."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "export_llava.py")
# id -> (vision, llm, image_position, extra config, rows the export must add to the vocab). Qwen2's <|image_pad|> lies
# inside the embedding table; the Llama stand-in's added <image> is the first id past it (untied head), and
# "qwen2-added" forces an added <image> on a tied LLM (as SmolLM2 would need).
CASES = {
    "siglip-qwen2-user_turn": ("siglip", "qwen2", "user_turn", {}, 0),
    "clip-llama-prefix": ("clip", "llama", "prefix", {}, 1),
    "siglip-qwen2-prefix": ("siglip", "qwen2", "prefix", {}, 0),
    "clip-llama-user_turn": ("clip", "llama", "user_turn", {}, 1),
    "siglip-qwen2-added-user_turn": ("siglip", "qwen2", "user_turn", {"image_token_id": "added"}, 1),
}
MESSAGES = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the invoice total?"}]}],
    [
        {"role": "system", "content": [{"type": "text", "text": "Answer using a single word or phrase."}]},
        {"role": "user", "content": [{"type": "text", "text": "Who is the vendor?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Acme Corp"}]},
        {"role": "user", "content": [{"type": "text", "text": "What is the date?"}]},
    ],
]
IMAGES = [Image.new("RGB", (48, 40), (200, 30, 90)), Image.new("RGB", (30, 60), (10, 120, 240))]


def load_script():
    spec = importlib.util.spec_from_file_location("export_llava", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def export_llava():
    return load_script().export_llava


@pytest.fixture(scope="module")
def exports(backbones, build, export_llava, tmp_path_factory):
    """CASES key -> our model + processor, saved, exported, and the export loaded back with plain AutoClasses."""
    from transformers import AutoTokenizer

    out = {}
    for key, (vision, llm, position, config_kwargs, added) in CASES.items():
        if config_kwargs.get("image_token_id") == "added":  # the id the processor's added <image> will get
            config_kwargs = {"image_token_id": len(AutoTokenizer.from_pretrained(backbones[f"llm-{llm}"]))}
        model, processor = build(vision, llm, image_position=position, **config_kwargs)
        root = tmp_path_factory.mktemp(f"export-{key}")
        source = root / "minillava"
        model.save_pretrained(source)
        processor.save_pretrained(source)
        folder = Path(export_llava(str(source), str(root / "llava")))
        out[key] = {
            "model": model,
            "processor": processor,
            "source": source,
            "out": folder,
            "added": added,
            "llava": AutoModelForImageTextToText.from_pretrained(folder).eval(),
            "llava_processor": AutoProcessor.from_pretrained(folder),
        }
    return out


def batch(processor):
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in MESSAGES]
    return processor(images=IMAGES, text=texts, padding=True, padding_side="left", return_tensors="pt")


@pytest.mark.parametrize("key", CASES)
def test_export_loads_as_plain_llava_with_our_settings(exports, key):
    case = exports[key]
    model, llava, llava_processor = case["model"], case["llava"], case["llava_processor"]
    assert type(llava) is LlavaForConditionalGeneration
    assert type(llava_processor) is LlavaProcessor
    files = os.listdir(case["out"])
    assert not [f for f in files if f.endswith(".py")], files  # no remote code travels along
    for name in files:
        if name.endswith(".json") or name.endswith(".jinja"):
            content = (case["out"] / name).read_text()
            assert "auto_map" not in content, name
            # The chat template's preamble comment says "minillava"; the JSON files must not point at our code.
            assert name.endswith(".jinja") or "minillava" not in content.lower(), name
            assert "/tmp" not in content and ROOT not in content, name  # no local absolute paths (_name_or_path)

    # The layout serving engines load (vLLM's Llava refuses the flat `model.vision_tower.embeddings...`).
    saved = safe_open(str(case["out"] / "model.safetensors"), "pt").keys()
    tower = [k for k in saved if k.startswith("model.vision_tower.")]
    assert tower and all(k.startswith("model.vision_tower.vision_model.") for k in tower), tower[:3]
    assert {k.split(".")[3] for k in tower} >= {"embeddings", "encoder", "post_layernorm"}

    ours, theirs = model.config, llava.config
    assert theirs.model_type == "llava"
    assert theirs.vision_feature_layer == ours.vision_feature_layer == -1
    assert theirs.vision_feature_select_strategy == ours.vision_feature_select_strategy
    assert theirs.multimodal_projector_bias is True
    assert theirs.image_token_id == ours.image_token_id == llava_processor.image_token_id
    assert theirs.image_seq_length == ours.num_image_tokens
    assert theirs.tie_word_embeddings == ours.tie_word_embeddings
    head, embedding = llava.get_output_embeddings().weight, llava.get_input_embeddings().weight
    assert (head.data_ptr() == embedding.data_ptr()) == ours.tie_word_embeddings  # still tied after the resize
    assert theirs.text_config.vocab_size == ours.text_config.vocab_size + case["added"]
    assert llava_processor.chat_template == case["processor"].chat_template
    assert llava_processor.tokenizer.pad_token is not None
    assert llava.generation_config.eos_token_id == model.generation_config.eos_token_id
    assert (ours.image_token_id in (llava.generation_config.suppress_tokens or [])) == bool(case["added"])
    # What serving engines ask the processor for one image:
    mm = llava_processor._get_num_multimodal_tokens(image_sizes=[(40, 48)])
    assert mm.num_image_tokens == [ours.num_image_tokens]


@pytest.mark.parametrize("key", CASES)
def test_export_gives_identical_ids_logits_and_generation(exports, key):
    case = exports[key]
    model, llava, added = case["model"], case["llava"], case["added"]
    ours, theirs = batch(case["processor"]), batch(case["llava_processor"])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    # The tokenize=True path too (images inline in the messages), as TRL's collator and users call it.
    inline = [{"role": "user", "content": [{"type": "image", "image": IMAGES[0]}, {"type": "text", "text": "Total?"}]}]
    kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    ours_inline = case["processor"].apply_chat_template(inline, **kwargs)
    theirs_inline = case["llava_processor"].apply_chat_template(inline, **kwargs)
    assert torch.equal(ours_inline["input_ids"], theirs_inline["input_ids"])
    image_id = model.config.image_token_id
    assert int((theirs["input_ids"] == image_id).sum()) == 2 * model.config.num_image_tokens
    assert bool((theirs["attention_mask"] == 0).any())  # the batch really is left-padded

    vocab = model.config.text_config.vocab_size
    with torch.no_grad():
        logits, llava_logits = model(**ours).logits, llava(**theirs).logits
        assert logits.dtype == llava_logits.dtype == torch.float32
        assert llava_logits.shape[-1] == vocab + added
        assert torch.equal(llava_logits[..., :vocab], logits)
        assert not llava_logits[..., vocab:].any()  # the zero rows score exactly 0
        kwargs = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
        generated, llava_generated = model.generate(**ours, **kwargs), llava.generate(**theirs, **kwargs)
    assert torch.equal(llava_generated, generated)
    assert llava_generated.shape[1] == theirs["input_ids"].shape[1] + 5


@pytest.mark.parametrize("projector", ["perceiver", "pixel_shuffle_mlp"])
def test_other_projectors_are_refused_with_the_reason(backbones, export_llava, tmp_path, projector):
    from transformers import AutoConfig

    from modeling_minillava import MiniLlavaConfig

    source = tmp_path / "source"
    MiniLlavaConfig(
        vision_config=AutoConfig.from_pretrained(backbones["vision-siglip"]),
        text_config=AutoConfig.from_pretrained(backbones["llm-qwen2"]),
        projector_type=projector,
        image_token_id=6,
    ).save_pretrained(source)
    with pytest.raises(ValueError, match=f"projector_type='{projector}' cannot be exported to Llava: .+"):
        export_llava(str(source), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_folder_is_refused(exports, export_llava):
    case = exports["siglip-qwen2-user_turn"]
    with pytest.raises(FileExistsError, match="is not empty"):
        export_llava(str(case["source"]), str(case["out"]))


def test_tokenizer_adding_bos_by_default_still_gives_our_ids(exports, export_llava, tmp_path):
    """Llava's processor tokenizes with the tokenizer's default add_special_tokens; our template already writes BOS."""
    case = exports["clip-llama-prefix"]
    source = tmp_path / "source"
    shutil.copytree(case["source"], source)
    processor = case["processor"]
    tokenizer = type(processor.tokenizer).from_pretrained(source)
    tokenizer.add_bos_token = True
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    tokenizer.save_pretrained(source)
    reloaded = type(processor.tokenizer).from_pretrained(source)
    assert reloaded("x")["input_ids"][0] == tokenizer.bos_token_id  # the source folder really adds BOS now
    out = export_llava(str(source), str(tmp_path / "out"))  # checks ids itself; the test checks again
    assert torch.equal(batch(AutoProcessor.from_pretrained(out))["input_ids"], batch(processor)["input_ids"])


@pytest.mark.slow
def test_cli_writes_the_same_export(exports, tmp_path):
    case = exports["clip-llama-prefix"]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--model", str(case["source"]), "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("config.json", "generation_config.json", "processor_config.json", "chat_template.jinja"):
        assert (out / name).read_text() == (case["out"] / name).read_text(), name


@pytest.mark.slow
@pytest.mark.parametrize("budget", [False, True], ids=["no_budget", "budget_below_the_check_image"])
def test_anyres_exports_as_llava_next_with_identical_logits_and_generation(build, export_llava, tmp_path, budget):
    """AnyRes on: the folder is LlavaNext (same pinpoints, image_newline), loaded by plain AutoClasses. A
    max_image_tokens is not carried over (LlavaNext has none): the export equals our model with the budget off, even
    when the budget is below the export's own check image (which once made the export fail)."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    model, processor = build(seed=1, max_tiles=4)
    if budget:  # the check image is 400x90: a budget one token short shrinks its grid
        model.config.max_image_tokens = processor.max_image_tokens = model.config.count_image_tokens(90, 400) - 1
    source = tmp_path / "minillava"
    model.save_pretrained(source)
    processor.save_pretrained(source)
    out = export_llava(str(source), str(tmp_path / "llava_next"))
    llava = AutoModelForImageTextToText.from_pretrained(out).eval()
    llava_processor = AutoProcessor.from_pretrained(out)
    assert type(llava) is LlavaNextForConditionalGeneration and type(llava_processor) is LlavaNextProcessor
    assert llava.config.image_grid_pinpoints == model.config.image_grid_pinpoints
    assert torch.equal(llava.model.image_newline, model.model.image_newline)
    rng = np.random.default_rng(0)  # random pixels: a misplaced tile or token would change the logits
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(700, 300), (260, 900)]]
    mm = llava_processor._get_num_multimodal_tokens(image_sizes=[(700, 300), (260, 900)])
    assert mm.num_image_tokens == [model.config.count_image_tokens(*image.size[::-1]) for image in images]
    assert "max_image_tokens" not in llava.config.to_dict()
    processor.max_image_tokens = None  # ours as exported: every image its full grid
    ours, theirs = batch_with(processor, images), batch_with(llava_processor, images)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():
        assert torch.equal(model(**ours).logits, llava(**theirs).logits)
        kwargs = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
        assert torch.equal(model.generate(**ours, **kwargs), llava.generate(**theirs, **kwargs))


def batch_with(processor, images):
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in MESSAGES]
    return processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")


def test_anyres_with_pixel_shuffle_is_refused(backbones, export_llava, tmp_path):
    from transformers import AutoConfig

    from modeling_minillava import MiniLlavaConfig

    source = tmp_path / "source"
    MiniLlavaConfig(
        vision_config=AutoConfig.from_pretrained(backbones["vision-siglip"]),
        text_config=AutoConfig.from_pretrained(backbones["llm-qwen2"]),
        projector_type="pixel_shuffle_mlp",
        max_tiles=4,
        image_token_id=6,
    ).save_pretrained(source)
    with pytest.raises(ValueError, match="'pixel_shuffle_mlp' with AnyRes .* cannot be exported to LlavaNext: .+"):
        export_llava(str(source), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
