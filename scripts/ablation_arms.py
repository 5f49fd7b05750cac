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
BASE_STAGE = re.compile(r"recipes/smoke/stage([12]|4_dpo|4_grpo)\.yaml")
# Each arm continues from this arm's run of the same seed: stage 2 from the stage-1 control, stage 4 (DPO / GRPO on
# the model's own answers) from the baseline's stage 2, so stage 2 is retrained per seed and every pair is a seed.
INIT_ARMS = {2: "s1_mlp", 4: "s2_lora_r16_top1"}
INIT_STAGE = {2: 1, 4: 2}  # the stage each init arm must be
INIT_ARM = INIT_ARMS[2]
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
    "stage4_dpo": (
        "s2_lora_r16_top1",
        "s4_dpo",
        "stage 2 vs stage 4 DPO on its own mistakes (sigmoid + SFT anchor, image-contrastive abstention anchors)",
    ),
    "stage4_grpo": (
        "s2_lora_r16_top1",
        "s4_grpo",
        "stage 2 vs stage 4 GRPO (exact match on answerable, abstention on unanswerable, abstain_cost)",
    ),
    "image_splitting": (
        "hr_single",
        "hr_anyres",
        "high-resolution set: one squashed tile vs AnyRes (<= 12 tiles + overview), equal training tokens",
    ),
}
# Arms on their own data (the high-resolution set, ~7x the tokens per sample): run with `--only image_splitting`;
# stage-4 arms (stage 2 per seed, then its train-split answers, then DPO / GRPO): `--only stage4_dpo stage4_grpo`.
OPT_IN_ARMS = ("hr_single", "hr_anyres", "s4_dpo", "s4_grpo")
# model_abstain_f1: the model's own abstentions (no threshold); abstain_f1 includes the threshold fitted on validation
METRICS = (
    "exact_match",
    "model_abstain_f1",
    "abstain_f1",
    "hallucination_rate",
    "last_loss",
    "train_samples_per_second",
)
# run_eval's abstention metrics (over-abstention = abstaining on answerable rows; model_*: the model's own answers,
# no threshold). Every record keeps them (+ auc); the runs in a stage-4 comparison keep the contrastive set's as well,
# as contrastive_<name>: there the wording alone cannot tell an unanswerable question.
ABSTENTION_FIELDS = (
    "exact_match",
    "phi@1",
    "hallucination_rate",
    "answerable_abstain_rate",
    "abstain_f1",
    "model_hallucination_rate",
    "model_answerable_abstain_rate",
    "model_abstain_f1",
)
EVAL_FIELDS = (*ABSTENTION_FIELDS, "auc")
# What a comparison against a stage-4 arm compares (its loss is another trainer's: not comparable with SFT's)
STAGE4_METRICS = (
    *ABSTENTION_FIELDS,
    "contrastive_hallucination_rate",
    "contrastive_model_hallucination_rate",
    "contrastive_model_answerable_abstain_rate",
)
SUMMARY_FIELDS = tuple(
    dict.fromkeys(
        (
            *METRICS,
            *STAGE4_METRICS,
            *(f"contrastive_{f}" for f in ABSTENTION_FIELDS),
            "auc",
            "first_loss",
            "eval_samples_per_second",
            "num_image_tokens",
            "seconds",
        )
    )
)


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
                "(N = 1, 2, 4_dpo or 4_grpo) naming the smoke recipe it overlays."
            )
        name = os.path.splitext(os.path.basename(path))[0]
        arms[name] = {"stage": int(stage[1][0]), "base": match[1], "overlay": rel, "keys": yaml.safe_load(text) or {}}
        if arms[name]["stage"] in INIT_ARMS:
            arms[name]["init"] = INIT_ARMS[arms[name]["stage"]]
        if arms[name]["stage"] == 4:
            arms[name]["trainer"] = stage[1][2:]
    for stage, init in INIT_ARMS.items():
        if any(a["stage"] == stage for a in arms.values()) and arms.get(init, {}).get("stage") != INIT_STAGE[stage]:
            raise ValueError(
                f"Stage-{stage} arms continue from {init!r}, which is not a stage-{INIT_STAGE[stage]} arm in {folder}."
            )
    return arms


def compared_metrics(arm_b: str) -> tuple:
    """The metrics of a comparison whose second arm is arm_b: against a stage-4 arm, the abstention checks' inputs."""
    return STAGE4_METRICS if ARMS[arm_b]["stage"] == 4 else METRICS


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
