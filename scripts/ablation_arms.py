"""The ablation's arms (overlay files recipes/ablations/*.yaml, discovered), the comparisons between them and the
metrics compared; scripts/ablations.py runs them, scripts/ablation_stats.py summarises them."""

import glob
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS_DIR = os.path.join(ROOT, "recipes", "ablations")
# An arm's header line names its base recipe, the one composition every consumer (tests/test_recipes.py too) reads.
HEADER = re.compile(r"^#\s+(?:accelerate launch |python )?run_sft\.py (\S+) (\S+)\s*$", re.MULTILINE)
BASE_STAGE = re.compile(r"recipes/smoke/stage([12])\.yaml")
INIT_ARM = "s1_mlp"  # every stage-2 arm continues from this stage-1 arm's run of the same seed
COMPARISONS = {
    "baseline": (
        "s1_mlp",
        "s2_lora_r16_top1",
        "stage 1 (projector warm-up) vs stage 2 (+ LoRA r16 + top-1 block, "
        "from that stage 1): the plan's measurable improvement",
    ),
    "projector_perceiver": ("s1_mlp", "s1_perceiver", "projector: mlp2x_gelu vs perceiver (16 latents)"),
    "projector_pixel_shuffle": ("s1_mlp", "s1_pixel_shuffle", "projector: mlp2x_gelu vs pixel_shuffle_mlp (r=2)"),
    "lora_rank": ("s2_lora_r8", "s2_lora_r16", "LoRA rank 8 vs 16 (LoRA only, alpha = 2r)"),
    "lora_topk": ("s2_lora_r16", "s2_lora_r16_top1", "LoRA only vs LoRA + top-1 LLM block unfrozen (r16)"),
    "image_position": ("s1_mlp", "s1_prefix", "image slots in the user turn vs as a prefix before the chat"),
    "image_splitting": (
        "hr_single",
        "hr_anyres",
        "high-resolution set: one squashed tile vs AnyRes (<= 12 tiles + overview), equal training tokens",
    ),
}
# Arms on their own data (the high-resolution set, ~7x the tokens per sample): run with `--only image_splitting`.
OPT_IN_ARMS = ("hr_single", "hr_anyres")
# model_abstain_f1: the model's own abstentions (no threshold); abstain_f1 includes the threshold fitted on validation
METRICS = (
    "exact_match",
    "model_abstain_f1",
    "abstain_f1",
    "hallucination_rate",
    "last_loss",
    "train_samples_per_second",
)
SUMMARY_FIELDS = (*METRICS, "auc", "first_loss", "eval_samples_per_second", "num_image_tokens", "seconds")


def discover_arms(folder: str = ARMS_DIR) -> dict:
    """{name: {stage, base, overlay, keys[, init]}} from the overlay files: the stage is read off the base recipe in
    each file's header line, the keys are the file's own."""
    arms = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        match = HEADER.search(text)
        stage = BASE_STAGE.fullmatch(match[1]) if match and match[2] == rel else None
        if stage is None:
            raise ValueError(
                f"{rel}: its header needs the line `#   accelerate launch run_sft.py recipes/smoke/stageN.yaml {rel}` "
                "(N = 1 or 2) naming the smoke recipe it overlays."
            )
        name = os.path.splitext(os.path.basename(path))[0]
        arms[name] = {"stage": int(stage[1]), "base": match[1], "overlay": rel, "keys": yaml.safe_load(text) or {}}
        if arms[name]["stage"] == 2:
            arms[name]["init"] = INIT_ARM
    if any(a["stage"] == 2 for a in arms.values()) and arms.get(INIT_ARM, {}).get("stage") != 1:
        raise ValueError(f"Stage-2 arms continue from {INIT_ARM!r}, which is not a stage-1 arm in {folder}.")
    return arms


ARMS = discover_arms()
DEFAULT_ARMS = [name for name in ARMS if name not in OPT_IN_ARMS]


def select_arms(only: list[str] | None) -> list[str]:
    """--only takes arm names or comparison names (expanded to their two arms); unknown names fail with the list."""
    if not only:
        return list(DEFAULT_ARMS)
    names = []
    for item in only:
        if item in ARMS:
            names.append(item)
        elif item in COMPARISONS:
            names += list(COMPARISONS[item][:2])
        else:
            raise SystemExit(
                f"--only {item!r}: not an arm ({', '.join(ARMS)}) nor a comparison ({', '.join(COMPARISONS)})."
            )
    return list(dict.fromkeys(names))
