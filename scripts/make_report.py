"""Render REPORT.md from the repo's own outputs: ablations.json (scripts/ablations.py), bench/results/*.json and the
offline default's summary.json (scripts/smoke.sh). Parameter counts come from building the models on the meta device;
no measured number is typed here. A missing input yields a "not measured" statement, never a made-up number.

    python scripts/make_report.py --ablations docs/ablations/ablations.json --smoke outputs/offline/summary.json
"""

import argparse
import datetime
import glob
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
NOT_MEASURED = "not measured"
# The real-scale estimate's stated inputs (assumptions, not measurements; the report prints them with the formula).
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM datasheet
ASSUMED_MFU = 0.35
TEXT_TOKENS_PER_SAMPLE = 64  # recipes/stage1.yaml's comment: 729 image tokens + ~64 text tokens per sample
DATASET_ROWS = {  # train rows of each real source (published sizes) — the synthetic one follows README's command
    "data/captions": (558_128, "LLaVA-Pretrain (LCS-558K), Liu et al. 2023"),
    "data/docvqa": (39_463, "DocVQA train questions, Mathew et al. 2021"),
    "data/textvqa": (34_602, "TextVQA train questions, Singh et al. 2019"),
}
PUBLISHED = [  # other systems' reported results: never mixed with ours
    (
        "LLaVA-1.5-7B",
        "TextVQA (val)",
        "58.2",
        "accuracy",
        "Liu et al. 2023, *Improved Baselines with Visual Instruction Tuning*, Table 4",
        "https://arxiv.org/abs/2310.03744",
    ),
    (
        "SmolVLM (2.2B, Instruct)",
        "DocVQA",
        "81.6",
        "ANLS",
        "Hugging Face blog *SmolVLM - small yet mighty Vision Language Model*, 2024-11-26, benchmark table",
        "https://huggingface.co/blog/smolvlm",
    ),
    (
        "SmolVLM (2.2B, Instruct)",
        "TextVQA",
        "72.7",
        "accuracy",
        "same blog post",
        "https://huggingface.co/blog/smolvlm",
    ),
    (
        "Qwen2-VL-2B-Instruct",
        "DocVQA (test)",
        "90.1",
        "ANLS",
        "Qwen2-VL-2B-Instruct model card, image benchmarks",
        "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct",
    ),
    (
        "Qwen2-VL-2B-Instruct",
        "TextVQA (val)",
        "79.7",
        "accuracy",
        "same model card",
        "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct",
    ),
]
BENCH_SKIP = (".min_s", ".max_s", ".n")  # spread of the timed repeats: the medians and ratios are the figures
METRIC_LABELS = {
    "exact_match": "exact match",
    "model_abstain_f1": "model abstain F1",
    "abstain_f1": "abstain F1 (thresholded)",
    "hallucination_rate": "hallucination",
    "last_loss": "last loss",
    "train_samples_per_second": "train samples/s",
}


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return NOT_MEASURED
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e3 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def mean_std(mean, std) -> str:
    return NOT_MEASURED if mean is None else fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_json(path: str | None):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


# ---------------------------------------------------------------- architecture and stages (computed, not typed)

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
    config = next((load_json(os.path.join(folder, d, "config.json")) for d in (".", "merged")
                   if os.path.isfile(os.path.join(folder, d, "config.json"))), None)  # fmt: skip
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


# ---------------------------------------------------------------- the offline default (smoke run)


def offline_compute(smoke: dict | None, smoke_dir: str | None) -> str:
    """Steps, tokens, runtime and throughput as each stage's train_results.json recorded them; the machine from
    its run_info.json (runs that predate that record: the machine generating this report, said so)."""
    from recipes.provenance import read_records

    if not smoke:
        return f"Compute of the offline default: {NOT_MEASURED} (no smoke summary.json given)."
    rows, machine = [], None
    for stage in ("stage1", "stage2"):
        _, info, train = read_records(os.path.join(smoke_dir, stage))
        machine = machine or info.get("machine")
        sps, runtime = train.get("train_samples_per_second"), train.get("train_runtime")
        samples = round(sps * runtime) if sps and runtime else None  # what the Trainer's samples/s was computed from
        rows.append([stage, train.get("train_rows"), train.get("global_step"), samples, train.get("num_tokens"),
                     runtime, sps])  # fmt: skip
    where = "recorded in stage1/run_info.json" if machine else "the machine generating this report: the run predates "
    where += "" if machine else "run_info.json's machine record"
    return "\n\n".join(
        [
            table(["stage", "train rows", "steps", "samples seen", "tokens seen", "train seconds", "samples/s"], rows),
            f"Whole pipeline (backbones, data, both stages, both evaluations): {fmt(smoke.get('seconds'))} s wall "
            f"time. Machine: {machine_line(machine)} ({where}).",
        ]
    )


def machine_line(machine: dict | None = None) -> str:
    """One line for a recorded machine (data_scripts.manifest.machine_info's fields), or this one when None."""
    if machine is None:
        from data_scripts.manifest import machine_info

        machine = machine_info()
    gpu = machine.get("gpu") or "no GPU"
    cpu = machine.get("cpu_model") or machine.get("machine", "unknown CPU")
    return f"{cpu}, {machine.get('cpu_count')} cores, {gpu}"


def offline_mixture(smoke_dir: str | None) -> str:
    manifest = load_json(os.path.join(smoke_dir, "data", "synthetic", "manifest.json")) if smoke_dir else None
    text = "Data mixture: the synthetic document/UI set only (both stages; no captions offline)"
    if not manifest:
        return text + f"; split sizes {NOT_MEASURED} (no smoke run's manifest)."
    splits = ", ".join(f"{k} {v.get('rows')}" for k, v in manifest.get("splits", {}).items())
    return text + f": {splits} rows (`make_synthetic --n {manifest.get('n_requested')}`)."


def offline_results(smoke: dict | None) -> str:
    if not smoke:
        return f"Offline default results: {NOT_MEASURED} (run `bash scripts/smoke.sh` and pass `--smoke`)."
    fields = (
        "first_loss",
        "last_loss",
        "exact_match",
        "model_abstain_f1",
        "model_hallucination_rate",
        "abstain_f1",
        "hallucination_rate",
        "auc",
        "threshold",
    )
    rows = [[f, smoke["stage1"].get(f), smoke["stage2"].get(f)] for f in fields]
    checks = ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in (smoke.get("checks") or {}).items())
    return "\n\n".join(
        [
            table(["held-out test split", "stage 1", "stage 2"], rows),
            f"Learning checks of `scripts/smoke_summary.py`: {checks or NOT_MEASURED}. Unanswerable share "
            f"of the test split: {fmt(smoke.get('unanswerable_share'))}; dataset fingerprint "
            f"`{str(smoke.get('dataset_fingerprint'))[:16]}`.",
        ]
    )


def failure_section(smoke: dict | None, smoke_dir: str | None, per_tag: int = 2) -> str:
    from metrics.gallery import ERROR_TAGS

    ev = load_json(os.path.join(smoke_dir, "eval", "stage2", "eval_results.json")) if smoke_dir else None
    if not ev:
        return f"Failure modes: {NOT_MEASURED} (no stage-2 evaluation of the offline default found)."
    tags = ev.get("failure_tags") or {}
    rows = [[t, n, ERROR_TAGS.get(t, "")] for t, n in sorted(tags.items(), key=lambda kv: -kv[1])]
    out = [
        f"From `run_eval.py`'s error taxonomy on the offline default's stage-2 model (test split, "
        f"{fmt((ev.get('counts') or {}).get('rows'))} rows, {fmt((ev.get('counts') or {}).get('failures'))} "
        f"failures after the fitted abstention threshold {fmt(ev.get('threshold'))}):",
        table(["tag", "count", "meaning"], rows),
    ]
    preds_path = os.path.join(smoke_dir, "eval", "stage2", "predictions.jsonl")
    if os.path.exists(preds_path):
        with open(preds_path) as f:
            records = [json.loads(line) for line in f]
        examples = []
        for tag, _, _ in rows:
            for r in [r for r in records if r.get("error_tag") == tag][:per_tag]:
                examples.append(
                    [
                        tag,
                        r["question"].replace("|", "/").replace("\n", " "),
                        " / ".join(r["golds"]),
                        r["answer"] or "(empty)",
                        round(r["confidence"], 3),
                    ]
                )
        false_abst = [r for r in records if r.get("error_tag") == "false_abstention"]
        right = sum(1 for r in false_abst if r.get("score", 0) >= 1)
        if false_abst:
            out.append(
                f"Of the {len(false_abst)} false abstentions, {right} had a right raw answer that the fitted "
                "threshold withheld (confidence below it): part of this failure mode is the confidence "
                "calibration, not the answer."
            )
        out += [
            "Examples (the first of each tag in `predictions.jsonl`; the HTML gallery with the images is "
            "`<smoke out>/eval/stage2/failures.html`):",
            table(["tag", "question", "gold", "model answer", "confidence"], examples),
        ]
    return "\n\n".join(out)


# ---------------------------------------------------------------- ablations and benchmarks


def ablation_section(abl: dict | None, plots_dir: str) -> str:
    if not abl:
        return f"Ablations: {NOT_MEASURED} (no ablations.json; run `python scripts/ablations.py`)."
    cfg, arms = abl["config"], abl["arms"]
    ran = "; ".join(
        f"`{n}` seeds {', '.join(a['seeds']) or 'none'}"
        + (f" (failed: {', '.join(a['errors'])})" if a.get("errors") else "")
        for n, a in arms.items()
    )
    out = [
        f"`python scripts/ablations.py` (git `{short_version(cfg.get('git_commit'))}`, {cfg.get('started')} -> "
        f"{cfg.get('finished')}; {fmt(cfg.get('runs_finished'))} runs, {fmt(cfg.get('run_seconds_total'))} s of "
        f"train + eval wall time in all) on {machine_line(cfg.get('machine'))}; load average "
        f"at start/end {cfg.get('load_average')} (shared cores: seconds and samples/s are noisy). Budget: "
        f"`{json.dumps(cfg.get('budget'))}`; seeds {cfg.get('seeds')}; dataset fingerprint "
        f"`{str(cfg.get('dataset_fingerprint'))[:16]}`. Runs that finished: {ran}."
    ]
    rows = []
    for name, a in arms.items():
        m, s = a["mean"], a["std"]
        keys = " ".join(f"{k}={v}" for k, v in a.get("keys", a.get("flags", {})).items())
        rows.append(
            [
                f"`{name}`",
                a.get("stage"),
                f"`{a['overlay']}` ({keys})" if a.get("overlay") else keys,
                a["n_seeds"],
                m.get("num_image_tokens"),
                *[mean_std(m.get(k), s.get(k)) for k in (*METRIC_LABELS, "seconds")],
            ]
        )
    out += [
        "Per arm, mean ± std over seeds (test split; exact match over answerable rows):",
        table(["arm", "stage", "overlay", "seeds", "image tokens", *METRIC_LABELS.values(), "seconds/run"], rows),
    ]
    comp = [
        [
            c["name"],
            METRIC_LABELS.get(c["metric"], c["metric"]),
            f"`{c['a']}`",
            f"`{c['b']}`",
            mean_std(c["mean_a"], c["std_a"]),
            mean_std(c["mean_b"], c["std_b"]),
            c["diff"],
            c["p_value"],
            "[" + ", ".join(fmt(x) for x in c["ci95"]) + "]" if c.get("ci95") else NOT_MEASURED,
            c["verdict"],
        ]
        for c in abl["comparisons"]
    ]
    out += [
        "Comparisons: diff = mean(B) − mean(A) over the seeds both arms ran; test: "
        + (cfg.get("statistics") or f"{NOT_MEASURED} (this ablations.json does not say which test it used)")
        + (
            f" (statistics recomputed from the recorded per-seed values at {cfg['stats_recomputed']['at']})."
            if cfg.get("stats_recomputed")
            else "."
        ),  # fmt: skip
        table(["comparison", "metric", "A", "B", "A", "B", "diff", "p", "95% CI", "verdict"], comp),
        "### What the numbers support",
        conclusions(abl),
    ]
    for png, title in (
        ("ablations_bars.png", "exact match / abstain F1 per comparison"),
        ("ablations_losses.png", "mean training-loss curves"),
    ):
        if os.path.exists(os.path.join(ROOT, plots_dir, png)):
            out.append(f"![{title}]({plots_dir}/{png})")
    return "\n\n".join(out)


def conclusions(abl: dict) -> str:
    lines, by_name = [], {}
    for c in abl["comparisons"]:
        by_name.setdefault(c["name"], []).append(c)
    for name, cs in by_name.items():
        real = [c for c in cs if c["verdict"].startswith("real")]
        untested = [c for c in cs if c["verdict"].startswith("not testable")]
        desc = cs[0].get("question", name)
        if untested and len(untested) == len(cs):
            lines.append(f"- **{name}** ({desc}): not testable, fewer than 2 seeds per arm.")
            continue
        said = "; ".join(
            f"{METRIC_LABELS.get(c['metric'], c['metric'])} {fmt(c['mean_a'])} -> {fmt(c['mean_b'])} "
            f"(p = {fmt(c['p_value'])})"
            for c in real
        )
        noise = ", ".join(
            METRIC_LABELS.get(c["metric"], c["metric"]) for c in cs if c["verdict"] == "within seed noise"
        )
        paired = "; ".join(
            f"{METRIC_LABELS.get(c['metric'], c['metric'])} diff {fmt(c['diff'])}, paired CI "
            f"[{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}], p = {fmt(c['p_value'])}"
            for c in cs
            if c["verdict"] == "within seed noise" and c.get("ci95") and (c["ci95"][0] > 0 or c["ci95"][1] < 0)
        )
        lines.append(
            f"- **{name}** ({desc}): "
            + (f"differences beyond seed noise: {said}. " if real else "no difference beyond seed noise. ")
            + (f"Within seed noise: {noise}." if noise else "")
            + (
                f" The paired CI excludes 0 but the paired t-test does not reach p < 0.05 (not called real): {paired}."
                if paired
                else ""
            )
        )
    em = [a["mean"].get("exact_match") for a in abl["arms"].values() if a["mean"].get("exact_match") is not None]
    if em and max(em) == 0:
        lines.append(
            "- Exact match is 0 for every arm at this budget (the tiny random model has not learned to "
            "answer yet), so the accuracy and abstention comparisons carry no information; last loss is "
            "the only quality metric that varies between arms here."
        )
    n = sorted({a["n_seeds"] for a in abl["arms"].values()}) or [0]
    seeds = f"{n[0]}" if n[0] == n[-1] else f"{n[0]}-{n[-1]}"
    lines.append(
        f"- With {seeds} seed(s) per arm (comparisons use the seeds both arms ran, in pairs), the paired t-test "
        "has little power (n - 1 degrees of freedom) and the bootstrap CI can only "
        'span the observed seeds: "within seed noise" means *not shown*, not *no effect*. The ablation '
        "budget is smaller than the smoke run, on random tiny backbones; these are statements about this "
        "setting, not about the real-scale models."
    )
    return "\n".join(lines)


def flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return [(prefix, ", ".join(fmt(v) for v in obj))] if len(obj) <= 8 else [(prefix, f"{len(obj)} values")]
        return [kv for i, v in enumerate(obj) for kv in flatten(v, f"{prefix}[{i}]")]
    return [(prefix, obj)]


def bench_section(bench_dir: str | None) -> str:
    files = sorted(glob.glob(os.path.join(bench_dir, "*.json"))) if bench_dir else []
    if not files:
        return f"Benchmarks: {NOT_MEASURED} (no JSON results in `{bench_dir}`)."
    out = [
        "Read from `bench/results/*.json` (interleaved medians in one process; ratios are what transfer across "
        "machines, absolute times on shared cores do not):"
    ]
    for path in files:
        b = load_json(path) or {}
        machine = b.get("machine") or {}
        out.append(f"#### {b.get('benchmark', os.path.basename(path))} (`{os.path.relpath(path, ROOT)}`)")
        load = f"{fmt(machine.get('load_average_1min'))} -> {fmt(machine.get('load_average_1min_end'))}"
        out.append(
            f"Machine: {machine_line(machine) if machine else NOT_MEASURED}; quick mode: {b.get('quick')}; "
            f"load average {load}" + (f". {machine['gpu_note']}" if machine.get("gpu_note") else "")
        )
        rows = [
            [f"**{k}**" if "ratio" in k.lower() or "speedup" in k.lower() else k, v]
            for k, v in flatten(b.get("results", {}))
            if not k.endswith(BENCH_SKIP)
        ]
        out.append(table(["result", "value"], rows) if rows else f"results: {NOT_MEASURED}")
        out += [f"- note: {n}" for n in b.get("notes") or []]
    return "\n\n".join(out)


def published_section() -> str:
    rows = [[s, b, v, m, f"[{src}]({url})"] for s, b, v, m, src, url in PUBLISHED]
    return "\n\n".join(
        [
            "**Published numbers of other systems, as reported by their authors. Not our measurements, not "
            "comparable to "
            "the offline default above** (different models, data, scale and evaluation harnesses). TinyLLaVA is "
            "left out: "
            "its figures could not be verified from a primary source while writing this generator.",
            table(["system", "benchmark", "score", "metric", "source"], rows),
        ]
    )


STATIC_LIMITS = """- The offline default runs random tiny backbones on a synthetic set: it proves the pipeline learns
  and is wired correctly, not what a real model scores. No real-scale training or GPU measurement exists yet.
- The ablations use a reduced budget (see their config) on shared CPU cores, and the stage-2 arms also train longer
  than stage 1 (the baseline's gain mixes "LoRA" with "more steps").
- The H100 hours are an estimate from FLOP counts and an assumed MFU, not a run.

Next steps: run stage 1 + 2 on one H100 with the real recipes and evaluate on DocVQA/TextVQA val with `run_eval.py`;
repeat the ablations there with more seeds; add tiling (per-sample image-token counts are already supported)."""


def short_version(version: str) -> str:
    """data_scripts.manifest.code_version() shortened: 10 hex digits, '+dirty' kept."""
    commit, _, dirty = str(version).partition("+")
    return commit[:10] + (f"+{dirty}" if dirty else "")


def tiny_backbones(smoke_dir: str | None) -> str:
    """The smoke run's tiny backbones when present, else a fresh build (configs only are read)."""
    if smoke_dir and os.path.isdir(os.path.join(smoke_dir, "backbones", "llm-qwen2")):
        return os.path.join(smoke_dir, "backbones")
    import tempfile

    from data_scripts.make_tiny_backbones import make_tiny_backbones

    out = os.path.join(tempfile.mkdtemp(prefix="report_backbones_"), "backbones")
    make_tiny_backbones(out)
    return out


def render(abl_path, bench_dir, smoke_path, plots_dir: str) -> str:
    from data_scripts.manifest import code_version

    abl, smoke = load_json(abl_path), load_json(smoke_path)
    smoke_dir = os.path.dirname(os.path.abspath(smoke_path)) if smoke else None
    tiny = tiny_backbones(smoke_dir)
    smoke_recipe = lambda s: os.path.join(ROOT, "recipes", "smoke", f"{s}.yaml")
    offline = {  # the runs' own records where they exist
        f"offline {s} (`recipes/smoke/{s}.yaml`)": recorded_stage(os.path.join(smoke_dir, s), smoke_recipe(s), tiny)
        if smoke_dir
        else plan_stage(smoke_recipe(s), tiny)
        for s in ("stage1", "stage2")
    }
    real = {  # never run: plans on the meta device
        f"{s} (`recipes/{s}.yaml`)": plan_stage(os.path.join(ROOT, "recipes", f"{s}.yaml"))
        for s in ("stage1", "stage2")
    }
    cmd = "python scripts/make_report.py " + " ".join(
        f"--{k} {v}" for k, v in (("ablations", abl_path), ("bench", bench_dir), ("smoke", smoke_path)) if v
    )
    return (
        "\n\n".join(
            [
                "# Mini-LLaVA report",
                f"Generated by `{cmd}` at git `{short_version(code_version())}` on "
                f"{datetime.date.today().isoformat()}. Every number is read from those files or computed by calling "
                "the "
                "repo's code; nothing measured is typed by hand. Inputs that were not given say so.",
                "## Architecture",
                ARCHITECTURE,
                class_layout(),
                layout_examples(tiny),
                "## Training stages",
                "What trains in each stage (trainable / total parameters). A stage that ran is read from its "
                "`run_info.json` (`train_plan`, recorded by `recipes.provenance` at the start of the run); a stage "
                "that never ran, or ran before that record existed, is a *plan*: its model built on the meta device "
                "from the recipe and `recipes/backbones/*.json`, frozen by `recipes.builder.apply_train_plan`, LoRA "
                "applied as SFTTrainer does (`recipes.builder.lora_config` + `peft.get_peft_model`) and counted by "
                "`recipes.provenance.train_plan_counts` (column *counts from*).",
                "### Offline default (tiny random backbones, synthetic doc/UI set, CPU)",
                stage_table(offline),
                offline_mixture(smoke_dir),
                offline_compute(smoke, smoke_dir),
                offline_results(smoke),
                "### Real-scale plan (Qwen2.5-1.5B-Instruct + SigLIP-so400m, one H100)",
                stage_table(real),
                compute_estimate(real),
                "## Ablations (offline default)",
                ablation_section(abl, plots_dir),
                "## Benchmarks",
                bench_section(bench_dir),
                "## Failure modes",
                failure_section(smoke, smoke_dir),
                "## Known limits and next steps",
                STATIC_LIMITS,
                "## Published reference points (other systems)",
                published_section(),
            ]
        )
        + "\n"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablations", default="docs/ablations/ablations.json")
    parser.add_argument("--bench", default="bench/results")
    parser.add_argument("--smoke", default="outputs/offline/summary.json")
    parser.add_argument("--plots", default="docs/ablations", help="folder of the ablation PNGs, relative to the repo")
    parser.add_argument("--out", default="REPORT.md")
    args = parser.parse_args(argv)
    text = render(args.ablations, args.bench, args.smoke, args.plots)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
