"""Export a Llava folder (written by scripts/export_llava.py) as two GGUF files for llama.cpp: the LLM (`model.gguf`)
and the vision tower + projector (`mmproj.gguf`), float32, every tensor renamed, none changed but the Llama q/k rows.

    python scripts/export_gguf.py --model outputs/stage2/llava --out outputs/stage2/gguf
    llama-server -m outputs/stage2/gguf/model.gguf --mmproj outputs/stage2/gguf/mmproj.gguf

Why our own writer: llama.cpp's convert_hf_to_gguf.py refuses our tokenizers (it recognises a pre-tokenizer by the
hash of known Hub tokenizers' outputs, so a locally trained BPE is "not recognised" even when its regex is Qwen2's),
and its `--mmproj` has no path for a SigLIP/CLIP Llava with the `mlp` projector. Here the pre-tokenizer is mapped
from its regex, the chat template travels, and the mmproj says explicitly which encoder layer feeds the projector.
"""

import argparse
import json
import os

import torch

# LLM model_type -> llama.cpp architecture. Llama's rotary layout differs from HF's (see permute_for_llama_rope).
TEXT_ARCHS = {"qwen2": "qwen2", "llama": "llama"}
# Hugging Face pre-tokenizer split regex -> llama.cpp `tokenizer.ggml.pre`, which selects llama.cpp's own copy
# of the same regex (src/llama-vocab.cpp). Keyed by the exact regex: an unknown tokenizer is refused, not guessed.
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Qwen2 and Llama 3 differ only in how many digits one piece may hold.
SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}DIGITS"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PRE_TOKENIZERS = {
    SPLIT_REGEX.replace("DIGITS", ""): "qwen2",
    SPLIT_REGEX.replace("DIGITS", "{1,3}"): "llama-bpe",
    GPT2_REGEX: "gpt-2",
}
# Vision hidden_act -> the FFN activation llama.cpp's clip applies (`clip.use_gelu`: tanh GELU; neither: quick GELU).
VISION_ACTS = {"gelu_pytorch_tanh": "gelu", "quick_gelu": "quick_gelu"}
TEXT_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
VISION_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}
VISION_OTHER = {
    "embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "embeddings.position_embedding.weight": "v.position_embd.weight",
    "embeddings.class_embedding": "v.class_embd",
    "pre_layrnorm.weight": "v.pre_ln.weight",
    "pre_layrnorm.bias": "v.pre_ln.bias",
    "multi_modal_projector.linear_1.weight": "mm.0.weight",
    "multi_modal_projector.linear_1.bias": "mm.0.bias",
    "multi_modal_projector.linear_2.weight": "mm.2.weight",
    "multi_modal_projector.linear_2.bias": "mm.2.bias",
}
# Llava reads hidden_states[vision_feature_layer], i.e. before post_layernorm; the SigLIP pooling head is unused.
VISION_UNUSED = ("post_layernorm.", "head.")


def load_state_dict(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors; export it first with scripts/export_llava.py.")
    state = {}
    for name in files:
        state.update(load_file(os.path.join(folder, name)))
    return state


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's split regex (HF stores it as a Split or as ByteLevel(use_regex))."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [p["pattern"]["Regex"] for p in parts if p.get("type") == "Split" and "Regex" in p.get("pattern", {})]
    if any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts):
        splits.append(GPT2_REGEX)
    if len(splits) != 1 or splits[0] not in PRE_TOKENIZERS:
        raise ValueError(
            f"pre-tokenizer {json.dumps(pre)[:300]} has no llama.cpp counterpart here; known split regexes map to "
            f"{sorted(set(PRE_TOKENIZERS.values()))}. Add its regex and llama.cpp's name to PRE_TOKENIZERS."
        )
    return PRE_TOKENIZERS[splits[0]]


def add_tokenizer(writer, folder: str, vocab_rows: int) -> None:
    """The BPE vocabulary by id (added tokens included), merges, special ids, and our chat template."""
    import gguf

    with open(os.path.join(folder, "tokenizer.json")) as f:
        tok = json.load(f)
    if tok["model"]["type"] != "BPE":
        raise ValueError(
            f"{folder}/tokenizer.json is a {tok['model']['type']} tokenizer; only byte-level BPE exports."
        )
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    special = set()
    for added in tok["added_tokens"]:
        by_id[added["id"]] = added["content"]
        if added["special"]:
            special.add(added["id"])
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) > vocab_rows:
        raise ValueError(f"{folder}: token ids are not 0..{len(by_id) - 1} within the {vocab_rows} embedding rows.")
    # Rows past the tokenizer (padding up to the embedding size) get unused placeholder tokens, as llama.cpp expects.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_rows)]
    types = [
        gguf.TokenType.CONTROL if i in special else gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL
        for i in range(vocab_rows)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre_tokenizer_name(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    ids = {t: i for i, t in by_id.items()}
    for key, add in (("bos_token", writer.add_bos_token_id), ("pad_token", writer.add_pad_token_id)):
        if tok_config.get(key) in ids:
            add(ids[tok_config[key]])
    writer.add_eos_token_id(ids[tok_config["eos_token"]])
    # Our chat template writes BOS itself (export_llava turns the tokenizer's own BOS off the same way).
    writer.add_add_bos_token(False)
    template = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(template):
        with open(template) as f:
            writer.add_chat_template(f.read())


def permute_for_llama_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF Llama rotates the two halves of each head (rotate_half); llama.cpp's `llama` arch rotates adjacent pairs.
    With each head's rows interleaved, llama.cpp computes the same q/k (Qwen2: NeoX rope there, no change)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def text_tensors(state: dict, text_config: dict, arch: str):
    """(gguf name, float32 array) for every LLM tensor; an unknown tensor raises rather than being dropped."""
    prefix = "model.language_model."
    for key, value in state.items():
        if key.startswith("model.vision_tower.") or key.startswith("model.multi_modal_projector."):
            continue
        if key == "lm_head.weight":
            name = "output.weight"
        elif key == prefix + "embed_tokens.weight":
            name = "token_embd.weight"
        elif key == prefix + "norm.weight":
            name = "output_norm.weight"
        elif key.startswith(prefix + "layers."):
            layer, rest = key[len(prefix + "layers.") :].split(".", 1)
            if rest not in TEXT_LAYER:
                raise ValueError(f"LLM tensor {key} has no GGUF name here; add it to TEXT_LAYER.")
            name = f"blk.{layer}.{TEXT_LAYER[rest]}"
            if arch == "llama" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                heads = text_config["num_attention_heads" if "q_proj" in rest else "num_key_value_heads"]
                value = permute_for_llama_rope(value, heads)
        else:
            raise ValueError(f"tensor {key} is neither LLM, vision tower nor projector; cannot place it in GGUF.")
        yield name, value.float().numpy()


def write_text_gguf(folder: str, config: dict, state: dict, path: str) -> None:
    import gguf

    text = config["text_config"]
    if text["model_type"] not in TEXT_ARCHS:
        raise ValueError(
            f"LLM model_type={text['model_type']!r} has no GGUF export here; known: {sorted(TEXT_ARCHS)}."
        )
    arch = TEXT_ARCHS[text["model_type"]]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if head_dim * text["num_attention_heads"] != text["hidden_size"]:
        raise ValueError(f"head_dim={head_dim} x {text['num_attention_heads']} heads != hidden {text['hidden_size']}.")
    rope = text.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type={rope['rope_type']!r} is not exported here; only the default rope is.")
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(os.path.basename(os.path.normpath(folder)))
    writer.add_context_length(text["max_position_embeddings"])
    writer.add_embedding_length(text["hidden_size"])
    writer.add_block_count(text["num_hidden_layers"])
    writer.add_feed_forward_length(text["intermediate_size"])
    writer.add_head_count(text["num_attention_heads"])
    writer.add_head_count_kv(text["num_key_value_heads"])
    writer.add_rope_freq_base(float(rope.get("rope_theta", text.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(text["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab_rows = state["model.language_model.embed_tokens.weight"].shape[0]
    writer.add_vocab_size(vocab_rows)
    add_tokenizer(writer, folder, vocab_rows)
    for name, array in text_tensors(state, text, arch):
        writer.add_tensor(name, array)
    finish(writer)


def vision_tensors(state: dict):
    prefix = "model.vision_tower.vision_model."
    for key, value in state.items():
        if key.startswith("model.multi_modal_projector."):
            rest = key[len("model.") :]
        elif key.startswith(prefix):
            rest = key[len(prefix) :]
        elif key.startswith("model.vision_tower."):
            raise ValueError(f"{key}: export the folder again with scripts/export_llava.py (vision_model layout).")
        else:
            continue
        if rest.startswith(VISION_UNUSED):
            continue
        if rest.startswith("encoder.layers."):
            layer, tail = rest[len("encoder.layers.") :].split(".", 1)  # "0", "self_attn.q_proj.weight"
            module, kind = tail.rsplit(".", 1)
            if module not in VISION_LAYER:
                raise ValueError(f"vision tensor {key} has no GGUF name here; add it to VISION_LAYER.")
            name = f"v.blk.{layer}.{VISION_LAYER[module]}.{kind}"
        elif rest in VISION_OTHER:
            name = VISION_OTHER[rest]
        else:
            raise ValueError(f"vision tensor {key} has no GGUF name here; add it to VISION_OTHER.")
        yield name, value.float().numpy()


def write_mmproj_gguf(folder: str, config: dict, state: dict, path: str) -> None:
    import gguf

    vision, strategy = config["vision_config"], config["vision_feature_select_strategy"]
    act = VISION_ACTS.get(vision["hidden_act"])
    if act is None:
        raise ValueError(f"vision hidden_act={vision['hidden_act']!r} has no llama.cpp clip counterpart here.")
    has_cls = any(k.endswith("embeddings.class_embedding") for k in state)  # CLIP has one, SigLIP none
    if has_cls and strategy != "default":
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r} with a CLS tower: llama.cpp's llava graph always drops one "
            "token (as 'default' does); export a model trained with 'default'."
        )
    layer = config["vision_feature_layer"]
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: only one layer exports (llama.cpp would concatenate).")
    n_layer = vision["num_hidden_layers"]
    with open(os.path.join(folder, "processor_config.json")) as f:
        image_processor = json.load(f)["image_processor"]
    size = image_processor.get("crop_size") or image_processor["size"]
    if size.get("height", vision["image_size"]) != vision["image_size"]:
        raise ValueError(f"image processor size {size} != the tower's image_size {vision['image_size']}.")

    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name(os.path.basename(os.path.normpath(folder)) + "-mmproj")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")  # Linear -> GELU -> Linear, Llava's mlp2x_gelu
    writer.add_vision_image_size(vision["image_size"])
    writer.add_vision_patch_size(vision["patch_size"])
    writer.add_vision_embedding_length(vision["hidden_size"])
    writer.add_vision_feed_forward_length(vision["intermediate_size"])
    writer.add_vision_block_count(n_layer)
    writer.add_vision_head_count(vision["num_attention_heads"])
    writer.add_vision_attention_layernorm_eps(vision["layer_norm_eps"])
    writer.add_vision_projection_dim(config["text_config"]["hidden_size"])
    writer.add_vision_image_mean([float(v) for v in image_processor["image_mean"]])
    writer.add_vision_image_std([float(v) for v in image_processor["image_std"]])
    writer.add_vision_use_gelu(act == "gelu")
    # Explicit and non-negative (hidden_states index: 0 = embeddings, n_layer = last block's output). Without it
    # llama.cpp assumes LLaVA-1.5's second-to-last layer.
    writer.add_array("clip.vision.feature_layer", [layer if layer >= 0 else n_layer + 1 + layer])
    for name, array in vision_tensors(state):
        writer.add_tensor(name, array)
    finish(writer)


def finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(llava_dir: str, out_dir: str) -> tuple[str, str]:
    """Write out_dir/model.gguf and out_dir/mmproj.gguf for the Llava folder `llava_dir`; returns both paths."""
    with open(os.path.join(llava_dir, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "llava":
        raise ValueError(
            f"{llava_dir} is model_type={config.get('model_type')!r}; export a plain Llava folder first "
            "(scripts/export_llava.py; AnyRes LlavaNext folders are not exported to GGUF)."
        )
    if config.get("projector_hidden_act") != "gelu":
        raise ValueError(
            f"projector_hidden_act={config.get('projector_hidden_act')!r}: llama.cpp's mlp projector applies GELU only"
        )
    state = load_state_dict(llava_dir)
    os.makedirs(out_dir, exist_ok=True)
    text_path, mmproj_path = os.path.join(out_dir, "model.gguf"), os.path.join(out_dir, "mmproj.gguf")
    write_text_gguf(llava_dir, config, state, text_path)
    write_mmproj_gguf(llava_dir, config, state, mmproj_path)
    return text_path, mmproj_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Llava folder written by scripts/export_llava.py")
    parser.add_argument("--out", required=True, help="folder for model.gguf and mmproj.gguf")
    args = parser.parse_args()
    for path in export_gguf(args.model, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
