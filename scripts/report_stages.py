"""REPORT.md's architecture and training-stage sections, computed rather than typed: the class layout, the processor's
layout of a question, each stage's trainable parameters (recorded, or planned on the meta device), the H100 cost."""

import glob
import json
import math
import os

from report_format import load_json, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real-scale estimate's stated inputs (assumptions, not measurements; the report prints them with the formula).
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM datasheet
ASSUMED_MFU = 0.35
TEXT_TOKENS_PER_SAMPLE = 64  # recipes/stage1.yaml's comment: 729 image tokens + ~64 text tokens per sample
DATASET_ROWS = {  # train rows of each real source (published sizes) — the synthetic one follows README's command
    "data/captions": (558_128, "LLaVA-Pretrain (LCS-558K), Liu et al. 2023"),
    "data/docvqa": (39_463, "DocVQA train questions, Mathew et al. 2021"),
    "data/textvqa": (34_602, "TextVQA train questions, Singh et al. 2019"),
}

ARCHITECTURE = """```mermaid
flowchart LR
  img["image [B, 3, H, W]"] --> vt["vision_tower (SigLIP / CLIP)<br/>[B, N_patches, D_v]"]
  vt --> proj["multi_modal_projector (PROJECTORS[projector_type])<br/>[B, T_img, D_text]"]
  txt["chat text (processor's chat template)"] --> emb["language_model.embed_tokens<br/>[B, T, D_text]"]
  proj --> merge["merge: image features into the image slots<br/>(input_ids == image_token_id; never a target)"]
  emb --> merge
  merge --> llm["language_model (Qwen2 / Llama blocks)"]
  llm --> head["lm_head -> logits / loss"]
```"""


def class_layout() -> str:
    from modeling_minillava.configuration_minillava import IMAGE_POSITIONS
    from modeling_minillava.projectors import PROJECTORS

    projectors = ", ".join(f"`{k}` -> `{v.__name__}`" for k, v in PROJECTORS.items())
    return "\n".join(
        [
            "- `MiniLlavaConfig` (`modeling_minillava/configuration_minillava.py`): `vision_config` + `text_config` "
            "sub-configs, projector settings, `image_position`; `num_image_tokens` is derived from the tower's grid "
            "and "
            "the projector.",
            '- `MiniLlavaModel` (base, `base_model_prefix = "model"`): `vision_tower`, `multi_modal_projector`, '
            "`language_model` (`AutoModel.from_config`, no head); `MiniLlavaForConditionalGeneration`: `model` + "
            "`lm_head` (tied when the LLM ties).",
            f"- `PROJECTORS` (`modeling_minillava/projectors.py`): {projectors}.",
            "- `MiniLlavaProcessor` (`processing/`): a standard transformers processor (multimodal chat template + "
            "image processor + tokenizer); expands each image token to `num_image_tokens` placeholders "
            "(`config.image_token_id`). `MiniLlavaDataCollator`: labels on assistant answers only.",
            f"- Where images enter (`image_position`, one of {', '.join(f'`{p}`' for p in IMAGE_POSITIONS)}): "
            "`user_turn` puts the slots where the image part sits inside the user message (after the chat template's "
            "system/user header); `prefix` puts all image slots before the whole chat. The projected features replace "
            "the embeddings at those slots; positions are never reordered during training.",
        ]
    )


def layout_examples(tiny_dir: str) -> str:
    """The processor's own layout of one question for each image_position (tiny Qwen2 chat template)."""
    from transformers import AutoConfig, AutoTokenizer

    from modeling_minillava import MiniLlavaConfig
    from modeling_minillava.configuration_minillava import IMAGE_POSITIONS, choose_image_token
    from processing import MiniLlavaProcessor

    v, t = os.path.join(tiny_dir, "vision-siglip"), os.path.join(tiny_dir, "llm-qwen2")
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
    lines = []
    for position in IMAGE_POSITIONS:
        config = MiniLlavaConfig(
            vision_config=AutoConfig.from_pretrained(v),
            text_config=AutoConfig.from_pretrained(t),
            image_position=position,
            image_token_id=choose_image_token(AutoTokenizer.from_pretrained(t))[1],
        )
        proc = MiniLlavaProcessor.from_backbones(v, t, config=config)
        text = proc.apply_chat_template(message, add_generation_prompt=True)
        ids = proc.tokenizer(proc.expand_image_tokens(text), add_special_tokens=False)["input_ids"]
        mask = [i == proc.image_token_id for i in ids]
        parts, i = [], 0
        while i < len(ids):  # runs of text tokens decoded, runs of image slots counted
            j = i
            while j < len(ids) and mask[j] == mask[i]:
                j += 1
            parts.append(f"[{j - i} x {proc.image_token}]" if mask[i] else proc.tokenizer.decode(ids[i:j]))
            i = j
        lines.append(f"{position}:\n" + "".join(parts))
    return (
        "The processor's layout of one question (tiny backbones, Qwen2 chat template; rendered by calling "
        "`MiniLlavaProcessor`):\n\n```text\n" + "\n\n".join(lines) + "\n```"
    )


def backbone_config(name: str, tiny_dir: str | None):
    """A Hub id -> recipes/backbones/<basename>.json (real sizes); a local tiny folder -> its config.json."""
    from transformers import AutoConfig

    if name.startswith("OUT_DIR/"):
        return AutoConfig.from_pretrained(os.path.join(tiny_dir, os.path.basename(name)))
    with open(os.path.join(ROOT, "recipes", "backbones", f"{os.path.basename(name).lower()}.json")) as f:
        return AutoConfig.for_model(**json.load(f))


def read_recipe(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def architecture_recipe(recipe: dict, folder: str) -> dict:
    """A stage with `init_from` inherits the architecture of the recipe whose output_dir it names."""
    if not recipe.get("init_from"):
        return recipe
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        other = read_recipe(path)
        if other.get("output_dir") == recipe["init_from"]:
            return architecture_recipe(other, folder)
    raise ValueError(f"No recipe in {folder} has output_dir {recipe['init_from']!r} (init_from).")


def plan_stage(recipe_path: str, tiny_dir: str | None = None) -> dict:
    """A stage's train plan, not a record: its model built on the meta device from the backbones' configs, frozen by
    recipes.builder.apply_train_plan, LoRA applied as SFTTrainer does (peft.get_peft_model with
    recipes.builder.lora_config), counted by recipes.provenance.train_plan_counts."""
    import dataclasses

    import torch
    from peft import get_peft_model

    from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration
    from recipes.arguments import ModelArguments
    from recipes.builder import apply_train_plan, lora_config
    from recipes.provenance import train_plan_counts

    recipe = read_recipe(recipe_path)
    arch = architecture_recipe(recipe, os.path.dirname(recipe_path))
    keys = {f.name for f in dataclasses.fields(ModelArguments)}
    margs = ModelArguments(**{k: v for k, v in recipe.items() if k in keys})
    arch_keys = ("projector_type", "perceiver_num_latents", "pixel_shuffle_factor", "vision_feature_layer")
    config = MiniLlavaConfig(
        vision_config=backbone_config(arch["vision_name"], tiny_dir),
        text_config=backbone_config(arch["llm_name"], tiny_dir),
        image_position=recipe.get("image_position") or arch.get("image_position") or "user_turn",
        **{k: arch[k] for k in arch_keys if k in arch},
    )
    with torch.device("meta"):
        model = MiniLlavaForConditionalGeneration(config)
    lm_matmul = sum(p.numel() for p in model.model.language_model.parameters())
    lm_matmul += model.lm_head.weight.numel() - model.model.language_model.embed_tokens.weight.numel()
    margs.load_in_4bit = margs.load_in_8bit = False  # counts only; QLoRA's trainable set is the LoRA one
    model = apply_train_plan(model, margs)
    lora = lora_config(model, margs)
    model = get_peft_model(model, lora) if lora else model
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
    return {
        "recipe": recipe,
        "counts": train_plan_counts(model),
        "lora": lora_params,
        "image_tokens": config.num_image_tokens,
        "config": config,
        "llm_matmul_params": lm_matmul,
        "source": "meta-device plan",
    }


def recorded_stage(folder: str, recipe_path: str, tiny_dir: str) -> dict:
    """The stage as its run recorded it (run_info.json's train_plan; LoRA from the saved adapter's tensors; image
    tokens from the saved config), or its plan when the run predates those records."""
    from recipes.provenance import read_records

    _, info, _ = read_records(folder)
    if not info.get("train_plan"):
        return plan_stage(recipe_path, tiny_dir)
    lora, adapter = None, os.path.join(folder, "adapter_model.safetensors")
    if os.path.isfile(adapter):
        from safetensors import safe_open

        with safe_open(adapter, "pt") as f:
            lora = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" in k)  # noqa: SIM118
    elif not info.get("lora"):
        lora = 0
    config = next(
        (
            load_json(os.path.join(folder, d, "config.json"))
            for d in (".", "merged")
            if os.path.isfile(os.path.join(folder, d, "config.json"))
        ),
        None,
    )
    tokens = None
    if config:
        from modeling_minillava import MiniLlavaConfig

        tokens = MiniLlavaConfig.from_dict(config).num_image_tokens
    return {"counts": info["train_plan"], "lora": lora, "image_tokens": tokens, "source": "run_info.json"}


def stage_table(stages: dict) -> str:
    rows = []
    for label, c in stages.items():
        cells = [label]
        for m in ("vision_tower", "multi_modal_projector", "language_model", "lm_head"):
            total, tr = c["counts"][m]["total"], c["counts"][m]["trainable"]
            state = "FROZEN" if not tr else "TRAINED" if tr >= total else "PARTIAL"
            state = "tied to embeddings" if not total else state
            cells.append(f"{state} {tr:,} / {total:,}")
        cells += [sum(v["trainable"] for v in c["counts"].values()), c["lora"], c["image_tokens"], c["source"]]
        rows.append(cells)
    return table(
        [
            "stage (recipe)",
            "vision_tower",
            "multi_modal_projector",
            "language_model",
            "lm_head",
            "trainable",
            "of which LoRA",
            "image tokens",
            "counts from",
        ],
        rows,
    )


def mixture_samples(recipe: dict) -> tuple[float, list[list]]:
    """TRL's mixture rule (fractions normalised, never oversampled) on DATASET_ROWS; returns (samples, rows)."""
    from data_scripts.make_synthetic import SPLIT_FRACTIONS

    sizes = {
        **DATASET_ROWS,
        "data/synthetic": (
            int(50_000 * SPLIT_FRACTIONS["train"]),
            "README: make_synthetic --n 50000, train split share",
        ),
    }
    ds = recipe["datasets"]
    fractions = [d.get("fraction") for d in ds]
    if all(f is None for f in fractions):
        total = sum(sizes[d["path"]][0] for d in ds)
        return total, [[d["path"], sizes[d["path"]][0], "-", sizes[d["path"]][0], sizes[d["path"]][1]] for d in ds]
    weights = [(f or 0) / sum(f or 0 for f in fractions) for f in fractions]
    total = min(sizes[d["path"]][0] / w for d, w in zip(ds, weights) if w > 0)
    return total, [
        [d["path"], sizes[d["path"]][0], d.get("fraction"), round(w * total), sizes[d["path"]][1]]
        for d, w in zip(ds, weights)
    ]


def compute_estimate(stages: dict) -> str:
    rows, mix_rows = [], []
    for label, c in stages.items():
        r, cfg = c["recipe"], c["config"]
        samples, mix = mixture_samples(r)
        mix_rows += [[label, *m] for m in mix]
        samples *= r.get("num_train_epochs", 1)
        t_vis, t_seq = cfg.num_vision_tokens, cfg.num_image_tokens + TEXT_TOKENS_PER_SAMPLE
        counts = c["counts"]
        n_vis, n_proj = counts["vision_tower"]["total"], counts["multi_modal_projector"]["total"]
        n_llm = c["llm_matmul_params"]
        n_llm_tr = counts["language_model"]["trainable"] + counts["lm_head"]["trainable"]
        recompute = 1 if r.get("gradient_checkpointing") else 0
        vis = (6 if counts["vision_tower"]["trainable"] else 2) * n_vis * t_vis
        per_sample = vis + 6 * n_proj * t_vis + t_seq * ((4 + 2 * recompute) * n_llm + 2 * n_llm_tr)
        total = per_sample * samples
        hours = total / (H100_BF16_PEAK * ASSUMED_MFU) / 3600
        rows.append(
            [
                label,
                f"{samples:,.0f}",
                t_seq,
                f"{n_llm:,}",
                f"{n_llm_tr:,}",
                "yes" if recompute else "no",
                f"{per_sample:.3g}",
                f"{total:.3g}",
                f"{hours:.1f}",
            ]
        )
    formula = (
        "FLOPs/sample = c_v·N_vision·T_vis + 6·N_proj·T_vis + T·((4 + 2·ckpt)·N_llm + 2·N_llm_trainable), with "
        "c_v = 2 for a frozen tower (forward only; nothing upstream trains) or 6 when it trains; N_llm = LLM matmul "
        "parameters (blocks + lm_head, embeddings excluded); 4·N_llm = forward + activation gradients (needed because "
        "the projector below trains); 2·N_llm_trainable = weight gradients (LoRA + unfrozen blocks); ckpt = 1 when "
        "the recipe recomputes activations (gradient checkpointing). T = image tokens + "
        f"{TEXT_TOKENS_PER_SAMPLE} text tokens (assumed). Attention's T² term is ignored (T < 1k). "
        f"Hours = samples × FLOPs/sample / ({H100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16 peak × MFU {ASSUMED_MFU})."
    )
    return "\n\n".join(
        [
            "**Estimate, not a measurement** (no H100 run exists). Derived from the parameter counts above, the "
            "recipes "
            "and these stated assumptions:",
            formula,
            table(
                [
                    "stage",
                    "samples (× epochs)",
                    "tokens/sample T",
                    "N_llm",
                    "N_llm_trainable",
                    "recompute",
                    "FLOPs/sample",
                    "FLOPs total",
                    "est. H100 hours",
                ],
                rows,
            ),
            "Data mixture behind the sample counts (train rows are published dataset sizes; TRL normalises "
            "`fraction`s "
            "and never oversamples, so the scarcest source sets the total):",
            table(["stage", "dataset", "train rows (assumed)", "fraction", "rows used", "size source"], mix_rows),
        ]
    )
