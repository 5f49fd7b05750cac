"""Stage-3 ablations on the offline default (tiny backbones, synthetic doc/UI set, CPU) as controlled experiments:
each arm is the smoke recipes (recipes/smoke/*.yaml, read at run time) plus a few run_sft flags, over several seeds.

    python scripts/ablations.py --out outputs/ablations [--only ARM_OR_COMPARISON ...] [--seeds 0 1 2] [--quick]

Writes OUT/ablations.json, OUT/ablations_bars.png, OUT/ablations_losses.png; every run lives in OUT/runs/ARM-seedS
(reused when its record matches the current budget, so `--only` calls accumulate).

ablations.json:
  config:      {budget, seeds, quick, machine, git_commit, dataset_fingerprint, recipes, arms (the registry), started,
                finished, seconds (this call), load_average, run_seconds_total (train + eval of every run collected),
                runs_finished}
  arms:        {name: {stage, init, flags, seeds: {seed: {exact_match, abstain_f1, hallucination_rate, auc,
                first_loss, final_loss, losses: [[step, loss], ...], train_samples_per_second,
                eval_samples_per_second, num_image_tokens, global_step, train_rows, failure_tags,
                train_seconds, eval_seconds, seconds}}, mean: {metric: x}, std: {metric: x}, n_seeds, errors}}
  comparisons: [{name, question, a, b, metric, n_a, n_b, mean_a, mean_b, std_a, std_b, diff (= mean_b - mean_a),
                 p_value (Welch t over seeds), ci95 (paired bootstrap of diff over seeds), verdict}]
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The explicit ablation budget: the smoke run's data (n=2000) and stage-1 schedule (4 epochs), stage 2 at half the
# smoke's 8 epochs, so 7 arms x 3 seeds fit ~35 min on 2 quiet cores (smoke: 91 train samples/s). A first budget of
# n=600 and one epoch per stage learned nothing (every arm abstained on every question), see the notes.
BUDGET = {
    "n": 2000,
    "stage1_epochs": 4,
    "stage2_epochs": 4,
    "max_steps": None,
    "eval_max_samples": None,
    "eval_batch_size": 32,
}
QUICK = {
    "n": 200,
    "stage1_epochs": 1,
    "stage2_epochs": 1,
    "max_steps": 2,
    "eval_max_samples": 4,
    "eval_batch_size": 4,
    "eval_max_new_tokens": 4,
}
# Stage-1 arms build their projector / layout from the backbones; stage-2 arms start from `init` of the same seed.
# The tiny LLM has 2 blocks: top-1 unfreezes the last one (LoRA then sits on the first only).
ARMS = {
    "s1_mlp": {"stage": 1, "flags": {"projector_type": "mlp2x_gelu", "image_position": "user_turn"}},
    "s1_perceiver": {
        "stage": 1,
        "flags": {"projector_type": "perceiver", "perceiver_num_latents": 16, "image_position": "user_turn"},
    },
    "s1_pixel_shuffle": {
        "stage": 1,
        "flags": {"projector_type": "pixel_shuffle_mlp", "pixel_shuffle_factor": 2, "image_position": "user_turn"},
    },
    "s1_prefix": {"stage": 1, "flags": {"projector_type": "mlp2x_gelu", "image_position": "prefix"}},
    "s2_lora_r8": {"stage": 2, "init": "s1_mlp", "flags": {"lora_r": 8, "lora_alpha": 16, "llm_top_k_blocks": 0}},
    "s2_lora_r16": {"stage": 2, "init": "s1_mlp", "flags": {"lora_r": 16, "lora_alpha": 32, "llm_top_k_blocks": 0}},
    "s2_lora_r16_top1": {
        "stage": 2,
        "init": "s1_mlp",
        "flags": {"lora_r": 16, "lora_alpha": 32, "llm_top_k_blocks": 1},
    },
}
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
DEFAULT_ARMS = list(ARMS)
# model_abstain_f1: the model's own abstentions (no threshold); abstain_f1 includes the threshold fitted on validation
METRICS = (
    "exact_match",
    "model_abstain_f1",
    "abstain_f1",
    "hallucination_rate",
    "final_loss",
    "train_samples_per_second",
)
SUMMARY_FIELDS = (*METRICS, "auc", "first_loss", "eval_samples_per_second", "num_image_tokens", "seconds")
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}


def welch_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test over seeds; None below 2 seeds a side. Zero variance on both sides: 1 if the means
    are equal, else 0 (the seeds agree exactly, scipy would return nan)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if np.var(a) == 0 and np.var(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(b, a, equal_var=False).pvalue)


def bootstrap_ci(a: dict, b: dict, n_boot: int = 10000, seed: int = 0) -> list[float] | None:
    """95% percentile CI of mean(b) - mean(a): paired over the seeds both arms ran (seeds share data order and init),
    else unpaired. With 3 seeds it can only span the observed spread: little power, and said so in the report."""
    rng = np.random.default_rng(seed)
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        d = np.array([b[s] - a[s] for s in common])
        diffs = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    elif len(a) >= 2 and len(b) >= 2:
        va, vb = np.array(list(a.values())), np.array(list(b.values()))
        pick = lambda v: v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
        diffs = pick(vb) - pick(va)
    else:
        return None
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def compare(name: str, question: str, arm_a: str, arm_b: str, per_seed_a: dict, per_seed_b: dict, metric: str) -> dict:
    a = {s: r[metric] for s, r in per_seed_a.items() if is_number(r.get(metric))}
    b = {s: r[metric] for s, r in per_seed_b.items() if is_number(r.get(metric))}
    common = set(a) & set(b)
    if common:  # a paired design: compare on the seeds both arms ran, so means, test and CI agree
        a, b = {k: v for k, v in a.items() if k in common}, {k: v for k, v in b.items() if k in common}
    mean = lambda v: float(np.mean(list(v.values()))) if v else None
    std = lambda v: float(np.std(list(v.values()), ddof=1)) if len(v) >= 2 else None
    p, ci = welch_p_value(list(a.values()), list(b.values())), bootstrap_ci(a, b)
    diff = mean(b) - mean(a) if a and b else None
    if p is None or ci is None:
        verdict = "not testable (fewer than 2 seeds per arm)"
    elif p < 0.05 and (ci[0] > 0 or ci[1] < 0):
        verdict = f"real: {arm_b} {'higher' if diff > 0 else 'lower'}"
    else:
        verdict = "within seed noise"
    return {
        "name": name,
        "question": question,
        "a": arm_a,
        "b": arm_b,
        "metric": metric,
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": mean(a),
        "mean_b": mean(b),
        "std_a": std(a),
        "std_b": std(b),
        "diff": diff,
        "p_value": p,
        "ci95": ci,
        "verdict": verdict,
    }


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
    os.makedirs(os.path.join(out, "recipes"), exist_ok=True)
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
    for stage in ("stage1", "stage2"):
        with open(os.path.join(ROOT, "recipes", "smoke", f"{stage}.yaml")) as f:
            text = f.read().replace("OUT_DIR", out)
        with open(os.path.join(out, "recipes", f"{stage}.yaml"), "w") as f:
            f.write(text)
    return load_fingerprint(out)


def load_fingerprint(out: str) -> str:
    with open(os.path.join(out, "data", "synthetic", "manifest.json")) as f:
        return json.load(f)["fingerprint"]


def train_flags(arm: dict, seed: int, budget: dict, out: str) -> list[str]:
    # No checkpoints and no tracker: the run's train_results.json + eval are what the ablation reads.
    flags = {
        **arm["flags"],
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


def run_arm_seed(name: str, seed: int, budget: dict, out: str) -> dict:
    """Train + evaluate one arm for one seed (its stage-1 init first when needed); cached by (arm, seed, budget)."""
    arm, run_dir = ARMS[name], os.path.join(out, "runs", f"{name}-seed{seed}")
    record_path = os.path.join(run_dir, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("budget") == budget and record.get("flags") == arm["flags"]:
            return record
    if arm["stage"] == 2:
        run_arm_seed(arm["init"], seed, budget, out)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    log = os.path.join(run_dir, "log.txt")
    recipe = os.path.join(out, "recipes", f"stage{arm['stage']}.yaml")
    train_s = run_logged(
        [sys.executable, "run_sft.py", recipe, "--output_dir", run_dir, *train_flags(arm, seed, budget, out)], log
    )
    model_dir = os.path.join(run_dir, "merged") if arm["stage"] == 2 else run_dir
    eval_dir = os.path.join(run_dir, "eval")
    data = os.path.join(out, "data", "synthetic")
    eval_cmd = [
        sys.executable,
        "run_eval.py",
        "--model",
        model_dir,
        "--dataset",
        data,
        "--split",
        "test",
        "--threshold_split",
        "validation",
        "--output_dir",
        eval_dir,
        "--batch_size",
        str(budget["eval_batch_size"]),
        "--gallery_size",
        "8",
    ]
    if budget["eval_max_samples"]:
        eval_cmd += ["--max_samples", str(budget["eval_max_samples"])]
    if budget.get("eval_max_new_tokens"):
        eval_cmd += ["--max_new_tokens", str(budget["eval_max_new_tokens"])]
    eval_s = run_logged(eval_cmd, log)
    record = {
        "budget": budget,
        "flags": arm["flags"],
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
        "final_loss": finite(train["last_loss"]),
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


def machine_info() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    import torch

    return {
        "cpu_model": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "note": "CPU only; the cores are shared with other jobs, so seconds and samples/s are noisy",
    }


def git_commit() -> str | None:
    from data_scripts.manifest import git_state

    commit, _ = git_state(ROOT)
    return commit


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

    arms, names = (
        results["arms"],
        [n for n, (a, b, _) in COMPARISONS.items() if a in results["arms"] and b in results["arms"]],
    )
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        a, b, _ = COMPARISONS[name]
        for i, metric in enumerate(("exact_match", "model_abstain_f1")):
            for j, arm in enumerate((a, b)):
                m, s = arms[arm]["mean"].get(metric), arms[arm]["std"].get(metric)
                ax.bar(
                    i + (j - 0.5) * 0.38,
                    m or 0,
                    0.38,
                    yerr=s or 0,
                    capsize=3,
                    color=f"C{j}",
                    label=arm if i == 0 else None,
                )
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
    for ax, title in zip(axes, ("stage 1 arms", "stage 2 arms (continue from s1_mlp)")):
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
                if record.get("budget") == budget and record.get("flags") == ARMS[name]["flags"]:
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
    args = parser.parse_args(argv)
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
                    f"{record['abstain_f1']}, final_loss {record['final_loss']}, {record['seconds']:.0f} s",
                    flush=True,
                )
            except Exception as e:  # keep going: one broken arm must not cost the others
                errors.setdefault(name, {})[seed] = str(e)
                print(f"[ablations] {name} seed {seed} FAILED: {e}", file=sys.stderr, flush=True)
            write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, args.quick)
    results = write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, args.quick)
    plot(results, out)
    for c in results["comparisons"]:
        if c["metric"] in ("exact_match", "model_abstain_f1", "abstain_f1"):
            print(
                f"[ablations] {c['name']:<24} {c['metric']:<12} {c['a']}={fmt(c['mean_a'])} {c['b']}="
                f"{fmt(c['mean_b'])} diff={fmt(c['diff'])} p={fmt(c['p_value'])} -> {c['verdict']}"
            )
    print(f"[ablations] wrote {os.path.join(out, 'ablations.json')} in {time.time() - t0:.0f} s")
    return 1 if errors else 0


def write_results(out, budget, seeds, errors, fingerprint, started, t0, load_start, quick) -> dict:
    arms = collect(out, budget, seeds, errors)
    results = {
        "config": {
            "budget": budget,
            "seeds": seeds,
            "quick": quick,
            "machine": machine_info(),
            "git_commit": git_commit(),
            "dataset_fingerprint": fingerprint,
            "recipes": {s: f"recipes/smoke/{s}.yaml + flags" for s in ("stage1", "stage2")},
            "arms": ARMS,
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


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


if __name__ == "__main__":
    sys.exit(main())
