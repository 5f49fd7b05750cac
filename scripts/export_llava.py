"""Export a saved MiniLlava `mlp2x_gelu` folder as a plain transformers Llava folder (LlavaForConditionalGeneration +
LlavaProcessor) that AutoModelForImageTextToText / AutoProcessor, vLLM, SGLang and TGI load without trust_remote_code;
an AnyRes model (config.image_grid_pinpoints) becomes a LlavaNext folder (LlavaNextForConditionalGeneration +
LlavaNextProcessor, same pinpoints, image_newline included). LlavaNext has no token budget: a max_image_tokens is
not carried over (logged), the export always uses the full grids.

    python scripts/export_llava.py --model outputs/stage2/final --out outputs/stage2/llava

Same weights (key names already match Llava's), every LlavaConfig field written explicitly (Llava's defaults differ
from ours), our multimodal chat template (so both image_position layouts carry over) and our image token. When the
image token was added to the tokenizer only (its id >= the LLM's vocab_size; our model looks it up as 0), Llava would
index past the embedding table, so the embedding (and an untied lm_head) get zero rows up to that id, and the id goes
into generation_config.suppress_tokens: our model cannot emit it (its head has vocab_size columns), nor can the export
under `generate`. Serving engines may ignore suppress_tokens; there the new id scores a constant 0 logit.
"""

import argparse
import logging
import os
import tempfile

import torch
from PIL import Image

# Why each other projector has no Llava counterpart (Llava's projector is Linear -> act -> Linear per vision token).
UNSUPPORTED_PROJECTORS = {
    "perceiver": "a Perceiver resampler (learned latents attending to the features) is not Llava's per-token MLP",
    "pixel_shuffle_mlp": "space-to-depth merges vision tokens before the MLP, which Llava's per-token MLP does not do",
}
# AnyRes stitches each tile's token grid; only a per-token projector has a LlavaNext counterpart.
UNSUPPORTED_ANYRES_PROJECTORS = {
    "pixel_shuffle_mlp": "LlavaNext stitches one token per vision patch, but pixel shuffle merges r x r patches into "
    "one token before the MLP",
}
logger = logging.getLogger("export_llava")
STALE_TOKENIZER_KEYS = ("auto_map", "is_local", "local_files_only")
# A short chat with an image, rendered and tokenized by both processors to prove the exported one gives the same ids.
CHECK_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the invoice total?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "The total is 250"}]},
    {"role": "user", "content": [{"type": "text", "text": "Who is the vendor?"}]},
]


def check_projector(projector_type: str, anyres: bool = False) -> None:
    if anyres and projector_type in UNSUPPORTED_ANYRES_PROJECTORS:
        raise ValueError(
            f"projector_type={projector_type!r} with AnyRes (image_grid_pinpoints) cannot be exported to LlavaNext: "
            f"{UNSUPPORTED_ANYRES_PROJECTORS[projector_type]}; only 'mlp2x_gelu' exports (serve it with "
            "trust_remote_code)."
        )
    if projector_type in UNSUPPORTED_PROJECTORS:
        raise ValueError(
            f"projector_type={projector_type!r} cannot be exported to Llava: "
            f"{UNSUPPORTED_PROJECTORS[projector_type]}; only 'mlp2x_gelu' models export (serve the others with "
            "trust_remote_code)."
        )
    if projector_type != "mlp2x_gelu":
        raise ValueError(f"projector_type={projector_type!r} has no known Llava export; only 'mlp2x_gelu' exports.")


def sub_config_dict(config) -> dict:
    """A sub-config as a dict without the local path it was loaded from (`_name_or_path`)."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def build_llava_config(config):
    """Every LlavaConfig (LlavaNextConfig for AnyRes) field from ours, explicitly: Llava defaults to layer -2,
    strategy "default" (which would drop a SigLIP patch), image_token_index 32000 and image_seq_length 576."""
    from transformers import LlavaConfig, LlavaNextConfig

    anyres = getattr(config, "image_grid_pinpoints", None) is not None
    extra = {"image_grid_pinpoints": [list(p) for p in config.image_grid_pinpoints]} if anyres else {}
    return (LlavaNextConfig if anyres else LlavaConfig)(
        **extra,
        vision_config=sub_config_dict(config.vision_config),
        text_config=sub_config_dict(config.text_config),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=True,  # our projector's nn.Linear layers carry a bias
        tie_word_embeddings=config.tie_word_embeddings,
        dtype=config.dtype,
    )


def build_llava_processor(processor, config):
    """LlavaProcessor expands each image token to (H/patch)*(W/patch) + num_additional_image_tokens, minus 1 under
    the "default" strategy: a CLS tower (CLIP) counts its CLS as the additional token, so either strategy matches
    ours."""
    from transformers import LlavaNextProcessor, LlavaProcessor

    from modeling_minillava.configuration_minillava import VISION_TOWERS

    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    # Loading our folder left a pointer to our remote-code processor and transformers' local-load flags behind.
    for key in STALE_TOKENIZER_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    if hasattr(image_processor, "auto_map"):
        del image_processor.auto_map
    if getattr(image_processor, "crop_size", None) is None and not getattr(image_processor, "do_center_crop", False):
        # LlavaProcessor._get_num_multimodal_tokens (which serving engines call) reads crop_size, which SigLIP's
        # processor lacks; with center-cropping off it changes no pixel.
        image_processor.crop_size = dict(image_processor.size)
    if tokenizer.pad_token is None:  # Llama 3 has none; batching needs one (padding positions are masked)
        tokenizer.pad_token = tokenizer.eos_token
    # AnyRes: our image processor already is LlavaNext's (same pinpoints); LlavaNextProcessor counts the same tokens.
    return (LlavaNextProcessor if getattr(processor, "anyres", False) else LlavaProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=processor.chat_template,  # ours, multimodal: it carries the image_position layout
        image_token=processor.image_token,
        num_additional_image_tokens=int(VISION_TOWERS[config.vision_config.model_type]["has_cls"]),
    )


def sample_input_ids(processor) -> list[int]:
    text = processor.apply_chat_template(CHECK_MESSAGES, add_generation_prompt=True)
    # AnyRes: a wide strip, so the check covers a multi-tile grid with unpadding, not just the base tile.
    size = (400, 90) if hasattr(processor.image_processor, "image_grid_pinpoints") else (48, 40)
    image = Image.new("RGB", size, (200, 30, 90))
    return processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0].tolist()


def check_same_ids(source, exported, where: str) -> None:
    """Llava's processor tokenizes with the tokenizer's default add_special_tokens, ours with False."""
    ours, theirs = sample_input_ids(source), sample_input_ids(exported)
    if ours != theirs:
        counts = f"{theirs.count(exported.image_token_id)} vs {ours.count(source.image_token_id)} image placeholders"
        raise ValueError(
            f"{where}: the exported processor gives other input_ids than ours ({len(theirs)} vs {len(ours)} tokens, "
            f"{counts}); check the tokenizer's default special tokens and the image processor's output size."
        )


def disable_default_special_tokens(processor) -> None:
    """Our chat template already writes BOS etc.; a tokenizer that adds them by default would add a second BOS."""
    tok = processor.tokenizer
    if tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]:
        tok.add_bos_token = False  # transformers rebuilds the post-processor on these setters
        tok.add_eos_token = False


def load_llava(model_dir: str, llava_config):
    """Llava's (LlavaNext's) own loader over our weight files (the key names match, image_newline too), strict: no
    missing or unexpected key."""
    from transformers import LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        for name in os.listdir(model_dir):
            if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                os.symlink(os.path.abspath(os.path.join(model_dir, name)), os.path.join(tmp, name))
        llava_config.save_pretrained(tmp)
        cls = (
            LlavaNextForConditionalGeneration
            if isinstance(llava_config, LlavaNextConfig)
            else LlavaForConditionalGeneration
        )
        model, info = cls.from_pretrained(tmp, dtype="auto", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ValueError(f"{model_dir}'s weights do not map onto Llava's: {problems}")
    model.config._name_or_path = ""
    return model.eval()


def extend_vocab(model, image_token_id: int) -> int:
    """Zero rows up to `image_token_id` in the embedding (and an untied lm_head); returns the rows added."""
    old = model.get_input_embeddings().num_embeddings
    if image_token_id < old:
        return 0
    model.resize_token_embeddings(image_token_id + 1, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = 0
        model.get_output_embeddings().weight[old:] = 0  # the same tensor when tied
    model.config.text_config.vocab_size = image_token_id + 1
    return image_token_id + 1 - old


def write_serving_layout(out_dir: str) -> int:
    """Rename the saved vision-tower keys `model.vision_tower.X` -> `model.vision_tower.vision_model.X`; returns how
    many. Why: transformers >= 5.6 saves SigLIP/CLIP towers flat, but vLLM's Llava loader (and the older layout every
    engine and converter knows) wants the `vision_model` level ("There is no module or parameter named
    'vision_tower.embeddings'"); transformers still loads this layout into the flat modules (its conversion mapping
    strips the prefix), so the tensors are the same either way."""
    import json

    from safetensors.torch import load_file, save_file

    flat, nested = "model.vision_tower.", "model.vision_tower.vision_model."
    renamed = 0
    for name in sorted(os.listdir(out_dir)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(out_dir, name)
        tensors = load_file(path)
        keys = [k for k in tensors if k.startswith(flat) and not k.startswith(nested)]
        for key in keys:
            tensors[nested + key[len(flat) :]] = tensors.pop(key)
        if keys:
            save_file(tensors, path, metadata={"format": "pt"})
            renamed += len(keys)
    index_path = os.path.join(out_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        index["weight_map"] = {
            (nested + k[len(flat) :] if k.startswith(flat) and not k.startswith(nested) else k): v
            for k, v in index["weight_map"].items()
        }
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2)
    return renamed


def export_llava(model_dir: str, out_dir: str) -> str:
    """Write the Llava folder for the MiniLlava folder `model_dir` (model + processor) into `out_dir`; returns it."""
    from transformers import AutoProcessor, GenerationConfig

    from modeling_minillava import MiniLlavaConfig
    from processing import MiniLlavaProcessor

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"--out {out_dir} is not empty; pick a new folder or delete it first.")
    config = MiniLlavaConfig.from_pretrained(model_dir)
    check_projector(config.projector_type, anyres=config.anyres)
    if config.max_image_tokens is not None:
        logger.warning(
            f"max_image_tokens={config.max_image_tokens} is not carried over: LlavaNext has no token budget, so the "
            "export gives every image its full grid (same weights, more image tokens for large images)."
        )
    if config.image_token_id is None:
        raise ValueError(f"{model_dir}/config.json has no image_token_id; save the model built by from_backbones.")
    processor = MiniLlavaProcessor.from_pretrained(model_dir)
    processor.max_image_tokens = None  # compared as exported: LlavaNext gives every image its full grid
    model = load_llava(model_dir, build_llava_config(config))

    added = extend_vocab(model, config.image_token_id)
    if os.path.exists(os.path.join(model_dir, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    generation = model.generation_config
    if added:  # our model's head cannot emit the image id; keep it so under generate
        generation.suppress_tokens = sorted({*(generation.suppress_tokens or []), config.image_token_id})

    llava_processor = build_llava_processor(processor, config)
    disable_default_special_tokens(llava_processor)
    check_same_ids(processor, llava_processor, "before saving")
    if generation.pad_token_id is None:
        generation.pad_token_id = llava_processor.tokenizer.pad_token_id

    model.save_pretrained(out_dir)
    write_serving_layout(out_dir)
    llava_processor.save_pretrained(out_dir)
    check_same_ids(processor, AutoProcessor.from_pretrained(out_dir), f"reloaded from {out_dir}")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a MiniLlava folder (model + processor save_pretrained)")
    parser.add_argument("--out", required=True, help="an empty or new folder for the Llava export")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"Llava export written to {export_llava(args.model, args.out)}")


if __name__ == "__main__":
    main()
