"""Stage-3 ablations on the offline default (tiny backbones, synthetic doc/UI set, CPU) as controlled, paired
experiments: each arm is an overlay file recipes/ablations/<arm>.yaml on the smoke recipe its header names, run over
the same seeds as every other arm; the budget (epochs, steps, seeds, output) stays flags.

    python scripts/ablations.py --out outputs/ablations [--only ARM_OR_COMPARISON ...] [--seeds 0 1 2] [--quick]
    python scripts/ablations.py --out docs/ablations --recompute-stats   # statistics again, no training

Writes OUT/ablations.json, OUT/ablations_bars.png, OUT/ablations_losses.png; every run lives in OUT/runs/ARM-seedS
(reused when its record matches the current budget and overlay, so `--only` calls accumulate).

ablations.json:
  config:      {budget, seeds, quick, machine, git_commit, dataset_fingerprint, recipes, arms, statistics (the test
                used), started, finished, seconds (this call), load_average, run_seconds_total, runs_finished}
  arms:        {name: {stage, base, overlay, keys, init (stage 2), seeds: {seed: {exact_match, abstain_f1,
                hallucination_rate, auc, first_loss, last_loss, losses: [[step, loss], ...],
                train_samples_per_second, eval_samples_per_second, num_image_tokens, global_step, train_rows,
                failure_tags, train_seconds, eval_seconds, seconds}}, mean: {metric: x}, std: {metric: x}, n_seeds,
                errors}}
  comparisons: [{name, question, a, b, metric, test, seeds (the pairs), n_a, n_b, mean_a, mean_b, std_a, std_b,
                 diff (= mean_b - mean_a), std_diff, p_value (paired t), ci95 (paired bootstrap), verdict}]
"""

import argparse
import datetime
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as `python scripts/ablations.py`: the repo's packages import from the root
from data_scripts.manifest import code_version, machine_info  # noqa: E402

ARMS_DIR = os.path.join(ROOT, "recipes", "ablations")
# An arm's header line names its base recipe, the one composition every consumer (tests/test_recipes.py too) reads.
HEADER = re.compile(r"^#\s+(?:accelerate launch |python )?run_sft\.py (\S+) (\S+)\s*$", re.MULTILINE)
BASE_STAGE = re.compile(r"recipes/smoke/stage([12])\.yaml")
INIT_ARM = "s1_mlp"  # every stage-2 arm continues from this stage-1 arm's run of the same seed
# The explicit ablation budget: the smoke run's data (n=2000) and stage-1 schedule (4 epochs), stage 2 at half the
# smoke's 8 epochs, so 7 arms x 3 seeds fit ~35 min on 2 quiet cores (smoke: 91 train samples/s). A first budget of
# n=600 and one epoch per stage learned nothing (every arm abstained on every question), see the notes.
BUDGET = {"n": 2000, "stage1_epochs": 4, "stage2_epochs": 4, "max_steps": None, "eval_max_samples": None,
          "eval_batch_size": 32}  # fmt: skip
QUICK = {"n": 200, "stage1_epochs": 1, "stage2_epochs": 1, "max_steps": 2, "eval_max_samples": 4,
         "eval_batch_size": 4, "eval_max_new_tokens": 4}  # fmt: skip
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
}
# model_abstain_f1: the model's own abstentions (no threshold); abstain_f1 includes the threshold fitted on validation
METRICS = ("exact_match", "model_abstain_f1", "abstain_f1", "hallucination_rate", "last_loss",
           "train_samples_per_second")  # fmt: skip
SUMMARY_FIELDS = (*METRICS, "auc", "first_loss", "eval_samples_per_second", "num_image_tokens", "seconds")
MACHINE_NOTE = "the cores may be shared with other jobs, so seconds and samples/s are noisy"
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}
N_BOOT, BOOT_SEED = 10_000, 0
STATISTICS = (
    "paired design (every arm runs the same seeds on the same data): two-sided paired t-test of the per-seed "
    f"differences (scipy.stats.ttest_rel); 95% CI of the mean difference by paired bootstrap ({N_BOOT} resamples "
    f"of the seeds, the same indices for both arms, numpy rng seed {BOOT_SEED}); real = p < 0.05 and the CI "
    "excludes 0"
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
DEFAULT_ARMS = list(ARMS)


def paired_t_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired t-test of b - a over seeds; None below 2 pairs. Identical differences: 1 if they are all 0,
    else 0 (no spread at all: scipy would return nan, or a meaningless p from float noise)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"A paired test needs one value per seed on both sides, got {len(a)} and {len(b)}.")
    if len(a) < 2:
        return None
    d = np.subtract(b, a)
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # equal up to float noise (0.7 - 0.1 vs 0.8 - 0.2)
        return 1.0 if abs(d[0]) <= 1e-12 else 0.0
    return float(stats.ttest_rel(b, a).pvalue)


def paired_bootstrap_ci(a: dict, b: dict, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[float] | None:
    """95% percentile CI of mean(b - a) over the seeds both arms ran: each resample draws seeds with replacement and
    takes both arms at the same seeds. With 3 seeds it can only span the observed differences."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    va, vb = np.array([a[s] for s in common]), np.array([b[s] for s in common])
    idx = np.random.default_rng(seed).integers(0, len(common), (n_boot, len(common)))
    diffs = (vb[idx] - va[idx]).mean(axis=1)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def compare(name: str, question: str, arm_a: str, arm_b: str, per_seed_a: dict, per_seed_b: dict, metric: str) -> dict:
    """One metric of one comparison, on the seeds both arms have a number for (the pairs)."""
    a = {s: r[metric] for s, r in per_seed_a.items() if is_number(r.get(metric))}
    b = {s: r[metric] for s, r in per_seed_b.items() if is_number(r.get(metric))}
    seeds = sorted(set(a) & set(b))
    va, vb = [a[s] for s in seeds], [b[s] for s in seeds]
    mean = lambda v: float(np.mean(v)) if v else None
    std = lambda v: float(np.std(v, ddof=1)) if len(v) >= 2 else None
    p, ci = paired_t_p_value(va, vb), paired_bootstrap_ci(a, b)
    diff = mean(vb) - mean(va) if seeds else None
    if p is None or ci is None:
        verdict = "not testable (fewer than 2 paired seeds)"
    elif p < 0.05 and (ci[0] > 0 or ci[1] < 0):
        verdict = f"real: {arm_b} {'higher' if diff > 0 else 'lower'}"
    else:
        verdict = "within seed noise"
    return {"name": name, "question": question, "a": arm_a, "b": arm_b, "metric": metric,
            "test": "paired t (scipy.stats.ttest_rel) + paired bootstrap CI", "seeds": seeds,
            "n_a": len(va), "n_b": len(vb), "mean_a": mean(va), "mean_b": mean(vb), "std_a": std(va), "std_b": std(vb),
            "diff": diff, "std_diff": std(list(np.subtract(vb, va))), "p_value": p, "ci95": ci,
            "verdict": verdict}  # fmt: skip


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_logged(cmd: list[str], log_path: str) -> float:
    """Run a step as its own process (as a user would), output to log_path; returns wall seconds, raises on failure."""
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    if proc.returncode:
        with open(log_path) as f:
            tail = f.read()[-1500:]
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:3])} ... (log {log_path})\n{tail}")
    return time.perf_counter() - start


def prepare_inputs(out: str, budget: dict, backbones: str | None, data: str | None) -> str:
    """Backbones + synthetic set (built once, shared by every arm) and the smoke recipes with OUT_DIR filled in."""
    for name, given, cmd in (
        ("backbones", backbones, ["-m", "data_scripts.make_tiny_backbones", "--out"]),
        (
            "data/synthetic",
            data,
            ["-m", "data_scripts.make_synthetic", "--n", str(budget["n"]), "--seed", "0", "--num_proc", "1", "--out"],
        ),
    ):
        path = os.path.join(out, name)
        if given and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(os.path.abspath(given), path)
        elif not os.path.exists(os.path.join(path, "manifest.json" if name.startswith("data") else "llm-qwen2")):
            run_logged([sys.executable, *cmd, path], os.path.join(out, "prepare.log"))
    for arm in ARMS.values():  # the base and the overlay, OUT_DIR filled in, under OUT/recipes/<same path>
        for rel in (arm["base"], arm["overlay"]):
            with open(os.path.join(ROOT, rel)) as f:
                text = f.read().replace("OUT_DIR", out)
            os.makedirs(os.path.dirname(filled(out, rel)), exist_ok=True)
            with open(filled(out, rel), "w") as f:
                f.write(text)
    return load_fingerprint(out)


def filled(out: str, rel: str) -> str:
    return os.path.join(out, rel)  # OUT/recipes/smoke/stage1.yaml, OUT/recipes/ablations/s1_mlp.yaml


def load_fingerprint(out: str) -> str:
    with open(os.path.join(out, "data", "synthetic", "manifest.json")) as f:
        return json.load(f)["fingerprint"]


def train_flags(arm: dict, seed: int, budget: dict, out: str) -> list[str]:
    """The budget as flags over the arm's recipe files. No checkpoints and no tracker: the run's train_results.json +
    eval are what the ablation reads."""
    flags = {
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "no",
        "report_to": "none",
        "num_train_epochs": budget[f"stage{arm['stage']}_epochs"],
    }
    if budget["max_steps"]:
        flags.update(max_steps=budget["max_steps"], logging_steps=1)
    if arm["stage"] == 2:
        flags["init_from"] = os.path.join(out, "runs", f"{arm['init']}-seed{seed}")
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def is_current(record: dict, arm: dict, budget: dict) -> bool:
    """A run on disk counts when it ran this budget with the arm's overlay as it reads now."""
    return (
        record.get("budget") == budget
        and record.get("overlay") == arm["overlay"]
        and record.get("keys") == arm["keys"]
    )


def run_arm_seed(name: str, seed: int, budget: dict, out: str) -> dict:
    """Train + evaluate one arm for one seed (its stage-1 init first when needed); cached by (arm, seed, budget)."""
    arm, run_dir = ARMS[name], os.path.join(out, "runs", f"{name}-seed{seed}")
    record_path = os.path.join(run_dir, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if is_current(record, arm, budget):
            return record
    if arm["stage"] == 2:
        run_arm_seed(arm["init"], seed, budget, out)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    log = os.path.join(run_dir, "log.txt")
    files = [filled(out, arm["base"]), filled(out, arm["overlay"])]
    train_s = run_logged(
        [sys.executable, "run_sft.py", *files, "--output_dir", run_dir, *train_flags(arm, seed, budget, out)], log
    )
    model_dir = os.path.join(run_dir, "merged") if arm["stage"] == 2 else run_dir
    eval_dir = os.path.join(run_dir, "eval")
    data = os.path.join(out, "data", "synthetic")
    eval_cmd = [sys.executable, "run_eval.py", "--model", model_dir, "--dataset", data, "--split", "test",
                "--threshold_split", "validation", "--output_dir", eval_dir,
                "--batch_size", str(budget["eval_batch_size"]), "--gallery_size", "8"]  # fmt: skip
    if budget["eval_max_samples"]:
        eval_cmd += ["--max_samples", str(budget["eval_max_samples"])]
    if budget.get("eval_max_new_tokens"):
        eval_cmd += ["--max_new_tokens", str(budget["eval_max_new_tokens"])]
    eval_s = run_logged(eval_cmd, log)
    record = {
        "budget": budget,
        "overlay": arm["overlay"],
        "keys": arm["keys"],
        "seed": seed,
        **read_run(run_dir, eval_dir, model_dir),
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "seconds": train_s + eval_s,
    }
    with open(record_path, "w") as f:
        json.dump(record, f, indent=2)
    return record


def read_run(run_dir: str, eval_dir: str, model_dir: str) -> dict:
    from modeling_minillava import MiniLlavaConfig

    with open(os.path.join(run_dir, "train_results.json")) as f:
        train = json.load(f)
    with open(os.path.join(eval_dir, "eval_results.json")) as f:
        ev = json.load(f)
    m = ev["metrics"]
    return {
        "exact_match": m.get("exact_match"),
        "abstain_f1": m.get("abstain_f1"),
        "model_abstain_f1": m.get("model_abstain_f1"),
        "model_hallucination_rate": m.get("model_hallucination_rate"),
        "hallucination_rate": m.get("hallucination_rate"),
        "auc": m.get("auc"),
        "first_loss": finite(train["first_loss"]),
        "last_loss": finite(train["last_loss"]),
        "losses": train["losses"],
        "train_samples_per_second": train["train_samples_per_second"],
        "eval_samples_per_second": ev["samples_per_second"],
        "global_step": train["global_step"],
        "train_rows": train["train_rows"],
        "failure_tags": ev.get("failure_tags"),
        "counts": ev.get("counts"),
        "num_image_tokens": MiniLlavaConfig.from_pretrained(model_dir).num_image_tokens,
    }


def finite(x):
    return x if is_number(x) else None


def summarize_arm(name: str, seeds: dict, errors: dict) -> dict:
    keep = dict(ARMS[name])
    mean, std = {}, {}
    for field in SUMMARY_FIELDS:
        values = [r[field] for r in seeds.values() if is_number(r.get(field))]
        mean[field] = float(np.mean(values)) if values else None
        std[field] = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return {
        **keep,
        "seeds": {str(s): r for s, r in sorted(seeds.items())},
        "n_seeds": len(seeds),
        "mean": mean,
        "std": std,
        "errors": {str(s): e for s, e in errors.items()},
    }


def build_comparisons(arms: dict) -> list[dict]:
    rows = []
    for name, (a, b, question) in COMPARISONS.items():
        if a in arms and b in arms and arms[a]["seeds"] and arms[b]["seeds"]:
            sa = {int(s): r for s, r in arms[a]["seeds"].items()}
            sb = {int(s): r for s, r in arms[b]["seeds"].items()}
            rows += [compare(name, question, a, b, sa, sb, metric) for metric in METRICS]
    return rows


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


def plot(results: dict, out: str) -> None:
    """ablations_bars.png: per comparison, exact match and abstention F1 (mean +- std over seeds) of both arms;
    ablations_losses.png: mean training-loss curve per arm, stage 1 and stage 2 panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    names = [n for n, (a, b, _) in COMPARISONS.items() if a in arms and b in arms]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        a, b, _ = COMPARISONS[name]
        for i, metric in enumerate(("exact_match", "model_abstain_f1")):
            for j, arm in enumerate((a, b)):
                m, s = arms[arm]["mean"].get(metric), arms[arm]["std"].get(metric)
                ax.bar(i + (j - 0.5) * 0.38, m or 0, 0.38, yerr=s or 0, capsize=3, color=f"C{j}",
                       label=arm if i == 0 else None)  # fmt: skip
        ax.set_xticks([0, 1], ["exact match", "model abstain F1"])
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ablations_bars.png"), dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, arm in arms.items():
        curves = [dict(map(tuple, r["losses"])) for r in arm["seeds"].values() if r.get("losses")]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            mean = [np.mean([c[s] for c in curves]) for s in steps]
            axes[arm["stage"] - 1].plot(steps, mean, label=f"{name} (n={len(curves)})")
    for ax, title in zip(axes, ("stage 1 arms", f"stage 2 arms (continue from {INIT_ARM})")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (mean over seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ablations_losses.png"), dpi=100)
    plt.close(fig)


def collect(out: str, budget: dict, seeds: list[int], errors: dict) -> dict:
    """Every run on disk that matches this budget (so separate `--only` calls add up), plus this call's errors."""
    arms = {}
    for name in ARMS:
        per_seed = {}
        for seed in seeds:
            path = os.path.join(out, "runs", f"{name}-seed{seed}", "record.json")
            if os.path.exists(path):
                with open(path) as f:
                    record = json.load(f)
                if is_current(record, ARMS[name], budget):
                    per_seed[seed] = record
        if per_seed or errors.get(name):
            arms[name] = summarize_arm(name, per_seed, errors.get(name, {}))
    return arms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/ablations")
    parser.add_argument("--only", nargs="+", default=None, help="arms or comparisons to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--quick", action="store_true", help="test configuration: n=200, 2 steps, 4 eval rows")
    parser.add_argument("--max_steps", type=int, default=None, help="override the budget's steps per run")
    parser.add_argument("--backbones", default=None, help="prebuilt make_tiny_backbones folder (linked, not rebuilt)")
    parser.add_argument("--data", default=None, help="prebuilt make_synthetic folder (linked, not rebuilt)")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: rebuild ablations.json + plots from the runs already finished in OUT",
    )
    parser.add_argument(
        "--recompute-stats",
        action="store_true",
        help="train nothing: recompute OUT/ablations.json's summaries and comparisons from its per-seed values",
    )
    args = parser.parse_args(argv)
    if args.recompute_stats:
        report_comparisons(recompute_stats(os.path.abspath(args.out)))
        return 0
    budget = dict(QUICK if args.quick else BUDGET)
    if args.max_steps:
        budget["max_steps"] = args.max_steps
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = os.path.abspath(args.out)
    names, started, t0 = select_arms(args.only), datetime.datetime.now().isoformat(timespec="seconds"), time.time()
    load_start = os.getloadavg()[0]
    if args.collect:
        fingerprint = load_fingerprint(out)
        names = []
    else:
        fingerprint = prepare_inputs(out, budget, args.backbones, args.data)
    errors = {}
    for seed in seeds if names else []:  # seed-major: a run cut short still has whole rounds for every arm
        for name in names:
            try:
                record = run_arm_seed(name, seed, budget, out)
                print(
                    f"[ablations] {name} seed {seed}: exact_match {record['exact_match']}, abstain_f1 "
                    f"{record['abstain_f1']}, last_loss {record['last_loss']}, {record['seconds']:.0f} s",
                    flush=True,
                )
            except Exception as e:  # keep going: one broken arm must not cost the others
                errors.setdefault(name, {})[seed] = str(e)
                print(f"[ablations] {name} seed {seed} FAILED: {e}", file=sys.stderr, flush=True)
            write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, args.quick)
    results = write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, args.quick)
    plot(results, out)
    report_comparisons(results)
    print(f"[ablations] wrote {os.path.join(out, 'ablations.json')} in {time.time() - t0:.0f} s")
    return 1 if errors else 0


def report_comparisons(results: dict) -> None:
    for c in results["comparisons"]:
        print(
            f"[ablations] {c['name']:<24} {c['metric']:<24} {c['a']}={fmt(c['mean_a'])} {c['b']}="
            f"{fmt(c['mean_b'])} diff={fmt(c['diff'])} p={fmt(c['p_value'])} -> {c['verdict']}"
        )


def write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, quick) -> dict:
    arms = collect(out, budget, seeds, errors)
    results = {
        "config": {
            "budget": budget,
            "seeds": seeds,
            "quick": quick,
            "machine": {**machine_info(), "note": MACHINE_NOTE},
            "git_commit": code_version(),
            "dataset_fingerprint": fingerprint,
            "recipes": "each arm: its base recipe + its overlay (arms[].base, arms[].overlay) + the budget's flags",
            "arms": ARMS,
            "statistics": STATISTICS,
            "started": started,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "seconds": time.time() - t0,
            "load_average": [load_start, os.getloadavg()[0]],
            "run_seconds_total": sum(r["seconds"] for a in arms.values() for r in a["seeds"].values()),
            "runs_finished": sum(a["n_seeds"] for a in arms.values()),
        },
        "arms": arms,
        "comparisons": build_comparisons(arms),
    }
    with open(os.path.join(out, "ablations.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


RENAMED = {"final_loss": "last_loss"}  # earlier results' names -> the one train_results.json uses


def recompute_stats(out: str) -> dict:
    """Train nothing: OUT/ablations.json's arms re-summarised and its comparisons recomputed from the per-seed values
    it holds (old field names renamed, arms re-pointed at their overlay files when the keys are the same), rewritten
    in place with the plots. Arms whose overlay changed since are refused: their runs are not this arm any more."""
    path = os.path.join(out, "ablations.json")
    with open(path) as f:
        results = json.load(f)
    arms = {}
    for name, arm in results["arms"].items():
        ran = arm.get("keys", arm.get("flags"))
        if name not in ARMS or ran != ARMS[name]["keys"]:
            raise SystemExit(
                f"{path}: arm {name!r} ran {ran}, but {ARMS.get(name, {}).get('overlay')} now says "
                f"{ARMS.get(name, {}).get('keys')}; rerun it (`--only {name}`) instead of recomputing."
            )
        seeds = {int(s): {RENAMED.get(k, k): v for k, v in r.items()} for s, r in arm["seeds"].items()}
        arms[name] = summarize_arm(name, seeds, arm.get("errors", {}))
    cfg = results["config"]
    cfg.update(arms={n: ARMS[n] for n in arms}, statistics=STATISTICS)
    cfg["recipes"] = "each arm: its base recipe + its overlay (arms[].base, arms[].overlay) + the budget's flags"
    cfg["stats_recomputed"] = {"at": datetime.datetime.now().isoformat(timespec="seconds"), "code": code_version()}
    results.update(arms=arms, comparisons=build_comparisons(arms))
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, out)
    return results


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


if __name__ == "__main__":
    sys.exit(main())
