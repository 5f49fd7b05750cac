"""scripts/export_gguf.py: a Llava export becomes llama.cpp's text GGUF + mmproj GGUF holding every tensor unchanged
(Llama's q/k rows reordered for llama.cpp's rope, proven equivalent here), the tokenizer with its pre-tokenizer mapped,
the chat template, and an explicit feature layer; what llama.cpp cannot run is refused. Serving them is
tests/test_serving.py."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

gguf = pytest.importorskip("gguf", reason="pip install -e '.[serve]' (gguf) to export GGUF")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {"siglip-qwen2": ("siglip", "qwen2"), "clip-llama": ("clip", "llama")}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def export_gguf():
    return load_script("export_gguf")


@pytest.fixture(scope="module")
def exports(build, export_gguf, tmp_path_factory):
    """PAIRS key -> (llava folder, GGUFReader of model.gguf, GGUFReader of mmproj.gguf)."""
    export_llava = load_script("export_llava").export_llava
    out = {}
    for key, (vision, llm) in PAIRS.items():
        model, processor = build(vision, llm, seed=3)
        root = tmp_path_factory.mktemp(f"gguf-{key}")
        model.save_pretrained(root / "minillava")
        processor.save_pretrained(root / "minillava")
        llava = export_llava(str(root / "minillava"), str(root / "llava"))
        text, mmproj = export_gguf.export_gguf(llava, str(root / "gguf"))
        out[key] = (llava, gguf.GGUFReader(text), gguf.GGUFReader(mmproj))
    return out


def field(reader, key):
    return reader.fields[key].contents()


def tensors(reader) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(t.data.copy()).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}


@pytest.mark.parametrize("key", PAIRS)
def test_every_weight_lands_in_gguf_unchanged(exports, export_gguf, key):
    llava, text, mmproj = exports[key]
    state = load_file(os.path.join(llava, "model.safetensors"))
    config = json.loads(Path(llava, "config.json").read_text())
    text_config, arch = config["text_config"], field(text, "general.architecture")
    written = {**tensors(text), **tensors(mmproj)}
    expected = dict(export_gguf.text_tensors(state, text_config, arch))
    expected.update(export_gguf.vision_tensors(state))
    assert set(written) == set(expected)
    for name, array in expected.items():
        assert written[name].dtype == torch.float32, name
        assert torch.equal(written[name], torch.from_numpy(array)), name
    # Every source tensor is accounted for: the LLM's, the tower's up to the features Llava reads, the projector's.
    tower = "model.vision_tower.vision_model."
    unused = {k for k in state if k.startswith((tower + "post_layernorm.", tower + "head."))}
    assert len(expected) == len(state) - len(unused)
    assert "output.weight" in written or text_config["tie_word_embeddings"]  # tied: llama.cpp reuses token_embd
    assert not any("post_ln" in name for name in written)  # Llava's features come before post_layernorm


def test_llama_rope_permutation_gives_hf_rotary_under_llama_cpp_rope(export_gguf):
    """HF rotates (x[:d/2], x[d/2:]) pairs; llama.cpp's llama arch rotates (x[2i], x[2i+1]). With the permuted rows,
    llama.cpp's rotation of the projected vector equals HF's, up to the same reordering of the output dims."""
    torch.manual_seed(0)
    n_head, head_dim, hidden = 2, 8, 16
    w, x = torch.randn(n_head * head_dim, hidden), torch.randn(hidden)
    theta = 10000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim) * 7  # position 7
    cos, sin = torch.cos(theta), torch.sin(theta)

    def hf_rope(v):  # rotate_half
        a, b = v[: head_dim // 2], v[head_dim // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin])

    def gptj_rope(v):  # adjacent pairs
        a, b = v[0::2], v[1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten()

    ours = torch.cat([hf_rope(h) for h in (w @ x).split(head_dim)])
    theirs = torch.cat([gptj_rope(h) for h in (export_gguf.permute_for_llama_rope(w, n_head) @ x).split(head_dim)])
    order = export_gguf.permute_for_llama_rope(torch.arange(n_head * head_dim).float()[:, None], n_head)[:, 0].long()
    assert torch.allclose(theirs, ours[order], atol=1e-6)
    # Dot products (all attention uses) are unchanged by the common reordering of q and k.
    assert not torch.allclose(theirs, ours, atol=1e-3)


@pytest.mark.parametrize("key", PAIRS)
def test_tokenizer_template_and_vision_settings(exports, key):
    from transformers import AutoProcessor

    llava, text, mmproj = exports[key]
    processor = AutoProcessor.from_pretrained(llava)
    tokenizer, config = processor.tokenizer, json.loads(Path(llava, "config.json").read_text())
    tokens = field(text, "tokenizer.ggml.tokens")
    assert tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert field(text, "tokenizer.ggml.pre") == {"siglip-qwen2": "qwen2", "clip-llama": "gpt-2"}[key]
    assert field(text, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert bool(field(text, "tokenizer.ggml.add_bos_token")) is False  # our template writes BOS itself
    assert field(text, "tokenizer.chat_template") == processor.chat_template
    vision = config["vision_config"]
    assert field(mmproj, "clip.projector_type") == "mlp"
    assert field(mmproj, "clip.vision.feature_layer") == [vision["num_hidden_layers"]]  # layer -1 = last block
    assert bool(field(mmproj, "clip.use_gelu")) is (vision["model_type"] == "siglip_vision_model")  # CLIP: quick GELU
    assert field(mmproj, "clip.vision.image_size") == vision["image_size"]
    assert field(mmproj, "clip.vision.image_mean") == pytest.approx(processor.image_processor.image_mean)


def test_unknown_pre_tokenizer_is_refused_with_the_fix(export_gguf):
    metaspace = {"pre_tokenizer": {"type": "Metaspace", "replacement": "_"}}
    with pytest.raises(ValueError, match="has no llama.cpp counterpart here.*Add its regex"):
        export_gguf.pre_tokenizer_name(metaspace)
    split = {"type": "Split", "pattern": {"Regex": r"\p{N}{1,5}"}, "behavior": "Isolated"}
    with pytest.raises(ValueError, match="PRE_TOKENIZERS"):
        export_gguf.pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split]}})


def test_cls_tower_with_full_strategy_is_refused(exports, export_gguf, tmp_path):
    """llama.cpp's llava graph always drops one token; a CLIP model that keeps CLS ("full") has no GGUF counterpart."""
    llava = shutil.copytree(exports["clip-llama"][0], tmp_path / "llava")
    config = json.loads((llava / "config.json").read_text())
    config["vision_feature_select_strategy"] = "full"
    (llava / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full' with a CLS tower"):
        export_gguf.export_gguf(str(llava), str(tmp_path / "gguf"))


def test_a_folder_that_is_not_a_llava_export_is_refused(exports, export_gguf, tmp_path):
    source = os.path.join(os.path.dirname(exports["siglip-qwen2"][0]), "minillava")
    with pytest.raises(ValueError, match="export a plain Llava folder first"):
        export_gguf.export_gguf(source, str(tmp_path / "gguf"))
