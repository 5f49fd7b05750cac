"""Stage-3 ablations on the offline default (tiny backbones, synthetic doc/UI set, CPU) as controlled, paired
experiments: each arm is an overlay file recipes/ablations/<arm>.yaml on the smoke recipe its header names, run over
the same seeds as every other arm; the budget (epochs, steps, seeds, output) stays flags.

    python scripts/ablations.py --out outputs/ablations [--only ARM_OR_COMPARISON ...] [--seeds 0 1 2] [--quick]
    python scripts/ablations.py --out outputs/ablations_highres --only image_splitting   # its own data set
    python scripts/ablations.py --out outputs/ablations_stage4 --only stage4_dpo stage4_grpo   # stage 4 on stage 2
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
  stage4_checks: {comparison: {check: bool}} for the comparisons against a stage-4 arm (ablation_stats.GAINS)
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

# Run as `python scripts/ablations.py` (the project installed, as scripts/setup_env.sh does): the sibling ablation_*
# modules import by name. The script's public names (statistics, arm discovery) stay importable from it.
from ablation_arms import (  # noqa: F401
    ABSTENTION_FIELDS,
    ARMS,
    COMPARISONS,
    DEFAULT_ARMS,
    EVAL_FIELDS,
    INIT_ARM,
    INIT_ARMS,
    METRICS,
    STAGE4_METRICS,
    discover_arms,
    select_arms,
)
from ablation_stats import (  # noqa: F401
    GAINS,
    STATISTICS,
    abstention_checks,
    build_comparisons,
    compare,
    finite,
    paired_bootstrap_ci,
    paired_t_p_value,
    plot,
    report_comparisons,
    stage4_checks,
    summarize_arm,
)

from data_scripts.make_tiny_backbones import IMAGE_SIZE as TINY_TILE  # the small text's tile size
from data_scripts.run_metadata import code_version, machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The explicit ablation budget: the smoke run's data (n=2000) and stage-1 schedule (4 epochs), stage 2 at half the
# smoke's 8 epochs, so 7 arms x 3 seeds fit ~35 min on 2 quiet cores (smoke: 91 train samples/s). A first budget of
# n=600 and one epoch per stage learned nothing (every arm abstained on every question), see the notes.
# Stage 4 keeps its smoke recipe's epochs (stage4_epochs None); its DPO pairs come from stage 2's answers on the
# whole train split (train_eval_max_samples None) and it is also scored on the contrastive set (contrastive_n rows).
BUDGET = {
    "n": 2000,
    "stage1_epochs": 4,
    "stage2_epochs": 4,
    "stage4_epochs": None,
    "max_steps": None,
    "eval_max_samples": None,
    "eval_batch_size": 32,
    "train_eval_max_samples": None,
    "contrastive_n": 1000,
}
QUICK = {
    "n": 200,
    "stage1_epochs": 1,
    "stage2_epochs": 1,
    "stage4_epochs": None,
    "max_steps": 2,
    "eval_max_samples": 4,
    "eval_batch_size": 4,
    "eval_max_new_tokens": 4,
    "train_eval_max_samples": 24,
    "contrastive_n": 200,
}
MACHINE_NOTE = "the cores may be shared with other jobs, so seconds and samples/s are noisy"
HIGHRES_N, HIGHRES_N_QUICK = 1000, 200  # rows of the high-resolution set (image_splitting arms)
CONTRASTIVE = "data/contrastive"  # relative to OUT, as in scripts/stage4.sh
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}


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


def arm_data(arm: dict) -> str:
    """The data folder an arm is evaluated on (and trains on, but for DPO's pairs), relative to OUT: its overlay's
    `datasets`, else the set."""
    datasets = arm["keys"].get("datasets") or [{"path": "OUT_DIR/data/synthetic"}]
    return datasets[0]["path"].replace("OUT_DIR/", "")


def prepare_inputs(out: str, budget: dict, backbones: str | None, data: str | None, names: list[str]) -> str:
    """Backbones + the data sets the arms in `names` use (built once, shared by every arm) and the recipes with
    OUT_DIR filled in; returns the fingerprint of the first data set."""
    needed = list(dict.fromkeys(arm_data(ARMS[name]) for name in names)) or ["data/synthetic"]
    jobs = [("backbones", backbones, ["-m", "data_scripts.make_tiny_backbones", "--out"])]
    for rel in needed:
        cmd = ["-m", "data_scripts.make_synthetic", "--seed", "0", "--num_proc", "1", "--n", str(budget["n"])]
        if rel == "data/synthetic_highres":  # small text sized for the tiny tower's tiles
            n = HIGHRES_N_QUICK if budget.get("max_steps") else HIGHRES_N
            cmd[-1:] = [str(n), "--variant", "highres", "--tile_size", str(TINY_TILE)]
        jobs.append((rel, data if rel == "data/synthetic" else None, [*cmd, "--out"]))
    if any(ARMS[name]["stage"] == 4 for name in names):  # scored on it too: the wording alone cannot tell
        cmd = ["-m", "data_scripts.make_synthetic", "--seed", "7", "--num_proc", "1", "--variant", "contrastive"]
        jobs.append((CONTRASTIVE, None, [*cmd, "--n", str(budget["contrastive_n"]), "--out"]))
    for name, given, cmd in jobs:
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
    return load_fingerprint(out, needed[0])


def filled(out: str, rel: str) -> str:
    return os.path.join(out, rel)  # OUT/recipes/smoke/stage1.yaml, OUT/recipes/ablations/s1_mlp.yaml


def load_fingerprint(out: str, rel: str = "data/synthetic") -> str:
    with open(os.path.join(out, rel, "manifest.json")) as f:
        return json.load(f)["fingerprint"]


def run_path(name: str, seed: int, out: str) -> str:
    return os.path.join(out, "runs", f"{name}-seed{seed}")


def model_path(name: str, seed: int, out: str) -> str:
    """The run's whole model: stage 1 saves it in the run folder, LoRA stages (2, 4) merge it into merged/."""
    return run_path(name, seed, out) if ARMS[name]["stage"] == 1 else os.path.join(run_path(name, seed, out), "merged")


def train_flags(arm: dict, seed: int, budget: dict, out: str) -> list[str]:
    """The budget as flags over the arm's recipe files. No checkpoints and no tracker: the run's train_results.json +
    eval are what the ablation reads."""
    flags = {
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "no",
        "report_to": "none",
    }
    epochs = budget.get(f"stage{arm['stage']}_epochs")  # None: the base recipe's own
    if epochs is not None and ("num_train_epochs" not in arm["keys"] or budget["max_steps"]):
        flags["num_train_epochs"] = epochs  # an arm's own epochs: its equal-compute share
    if budget["max_steps"]:
        flags.update(max_steps=budget["max_steps"], logging_steps=1)
    if arm["stage"] in INIT_ARMS:
        flags["init_from"] = model_path(arm["init"], seed, out)
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def provenance(arm: dict, seed: int, out: str) -> dict:
    """What a run is made of besides the budget: its recipe files as they read now and the run it continued from
    (its train_results.json), by sha256; a changed base recipe or a retrained init makes the record stale."""
    digest = hashlib.sha256()
    for rel in (arm["base"], arm["overlay"]):
        with open(os.path.join(ROOT, rel), "rb") as f:
            digest.update(f.read())
    init = None
    if arm["stage"] in INIT_ARMS:
        with open(os.path.join(run_path(arm["init"], seed, out), "train_results.json"), "rb") as f:
            init = hashlib.sha256(f.read()).hexdigest()
    return {"recipes_sha256": digest.hexdigest(), "init_sha256": init}


def is_current(record: dict, arm: dict, budget: dict, seed: int, out: str) -> bool:
    """A run on disk counts when it ran this budget with the arm's recipes as they read now, from its init's run."""
    if record.get("budget") != budget or record.get("overlay") != arm["overlay"] or record.get("keys") != arm["keys"]:
        return False
    try:
        return {k: record.get(k) for k in ("recipes_sha256", "init_sha256")} == provenance(arm, seed, out)
    except FileNotFoundError:  # its init's run is gone
        return False


def run_arm_seed(name: str, seed: int, budget: dict, out: str) -> dict:
    """Train + evaluate one arm for one seed (its init arm's run first); cached by (arm, seed, budget, recipes, init).
    Stage-4 runs and their stage 2 are scored on the contrastive set too (retried on the next call if that failed)."""
    arm, run_dir = ARMS[name], run_path(name, seed, out)
    if arm["stage"] in INIT_ARMS:
        run_arm_seed(arm["init"], seed, budget, out)
    record_path = os.path.join(run_dir, "record.json")
    record = None
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if not is_current(record, arm, budget, seed, out):
            record = None
    if record is None:
        record = train_and_evaluate(name, seed, budget, out)
    if arm["stage"] == 4:  # paired with this seed's stage 2 on the contrastive set
        add_contrastive(arm["init"], seed, budget, out)
        record = add_contrastive(name, seed, budget, out)
    return record


def train_and_evaluate(name: str, seed: int, budget: dict, out: str) -> dict:
    arm, run_dir = ARMS[name], run_path(name, seed, out)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    log = os.path.join(run_dir, "log.txt")
    files = [filled(out, arm["base"]), filled(out, arm["overlay"])]
    pairs = None
    if arm.get("trainer") == "dpo":  # this seed's pairs, from this seed's stage 2, as one more overlay
        pairs = make_pairs(arm, seed, budget, out, run_dir)
        files.append(os.path.join(run_dir, "preferences.yaml"))
    train_s = run_logged(
        [sys.executable, "run_sft.py", *files, "--output_dir", run_dir, *train_flags(arm, seed, budget, out)], log
    )
    eval_dir = os.path.join(run_dir, "eval")
    model = model_path(name, seed, out)
    data = os.path.join(out, arm_data(arm))
    eval_s = run_logged(eval_command(model, data, "test", eval_dir, budget, budget["eval_max_samples"]), log)
    record = {
        "budget": budget,
        "overlay": arm["overlay"],
        "keys": arm["keys"],
        "seed": seed,
        **provenance(arm, seed, out),
        **read_run(run_dir, eval_dir, model),
        **({"preference_pairs": pairs} if pairs else {}),
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "seconds": train_s + eval_s,
    }
    with open(os.path.join(run_dir, "record.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def eval_command(model: str, data: str, split: str, eval_dir: str, budget: dict, max_samples: int | None) -> list:
    """run_eval on a split; the test split's threshold refitted on validation, the train split's answers raw."""
    cmd = [sys.executable, "run_eval.py", "--model", model, "--dataset", data, "--split", split]
    cmd += ["--threshold", "0"] if split == "train" else ["--threshold_split", "validation"]
    cmd += ["--output_dir", eval_dir, "--batch_size", str(budget["eval_batch_size"]), "--gallery_size", "8"]
    if max_samples:
        cmd += ["--max_samples", str(max_samples)]
    if budget.get("eval_max_new_tokens"):
        cmd += ["--max_new_tokens", str(budget["eval_max_new_tokens"])]
    return cmd


def add_contrastive(name: str, seed: int, budget: dict, out: str) -> dict:
    """The run's scores on the contrastive set (once), as contrastive_<metric> in its record.json; returns it."""
    run_dir = run_path(name, seed, out)
    record_path = os.path.join(run_dir, "record.json")
    with open(record_path) as f:
        record = json.load(f)
    if "contrastive_hallucination_rate" not in record:
        eval_dir = os.path.join(run_dir, "eval-contrastive")
        data = os.path.join(out, CONTRASTIVE)
        seconds = run_logged(
            eval_command(model_path(name, seed, out), data, "test", eval_dir, budget, budget["eval_max_samples"]),
            os.path.join(run_dir, "log.txt"),
        )
        with open(os.path.join(eval_dir, "eval_results.json")) as f:
            metrics = json.load(f)["metrics"]
        record |= {f"contrastive_{k}": metrics.get(k) for k in ABSTENTION_FIELDS}
        record["seconds"] += seconds
        with open(record_path, "w") as f:
            json.dump(record, f, indent=2)
    return record


def make_pairs(arm: dict, seed: int, budget: dict, out: str, run_dir: str) -> dict:
    """The init arm's greedy answers on the train split (kept, and logged, in its run folder), this seed's preference
    pairs from them (data_scripts.make_preferences) and RUN/preferences.yaml pointing the recipe's datasets at them;
    returns the pairs' counts per kind."""
    init_dir = run_path(arm["init"], seed, out)
    data, train_eval = os.path.join(out, arm_data(arm)), os.path.join(init_dir, "eval-train")
    predictions = os.path.join(train_eval, "predictions.jsonl")
    if not os.path.exists(predictions):
        n = budget["train_eval_max_samples"]  # None: the whole train split
        cmd = eval_command(model_path(arm["init"], seed, out), data, "train", train_eval, budget, n)
        run_logged(cmd, os.path.join(init_dir, "log.txt"))
    pairs = os.path.join(run_dir, "preferences")
    run_logged(
        [sys.executable, "-m", "data_scripts.make_preferences", "--dataset", data, "--predictions", predictions]
        + ["--split", "train", "--seed", str(seed), "--out", pairs],
        os.path.join(run_dir, "log.txt"),
    )
    with open(os.path.join(run_dir, "preferences.yaml"), "w") as f:
        yaml.safe_dump({"datasets": [{"path": pairs, "split": "train"}]}, f)
    with open(os.path.join(pairs, "manifest.json")) as f:
        return json.load(f)["pairs"]


def read_run(run_dir: str, eval_dir: str, model_dir: str) -> dict:
    from modeling_minillava import MiniLlavaConfig

    with open(os.path.join(run_dir, "train_results.json")) as f:
        train = json.load(f)
    with open(os.path.join(eval_dir, "eval_results.json")) as f:
        ev = json.load(f)
    m = ev["metrics"]
    return {
        **{k: m.get(k) for k in EVAL_FIELDS},
        "first_loss": finite(train["first_loss"]),
        "last_loss": finite(train["last_loss"]),
        "losses": train["losses"],
        "train_samples_per_second": train["train_samples_per_second"],
        "eval_samples_per_second": ev["samples_per_second"],
        "global_step": train["global_step"],
        "train_rows": train["train_rows"],
        "failure_tags": ev.get("failure_tags"),
        "per_question_type": ev.get("per_question_type"),
        "num_tokens": train.get("num_tokens"),
        "counts": ev.get("counts"),
        "num_image_tokens": MiniLlavaConfig.from_pretrained(model_dir).num_image_tokens,
    }


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
                if is_current(record, ARMS[name], budget, seed, out):
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
        fingerprint = prepare_inputs(out, budget, args.backbones, args.data, names)
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
    results["stage4_checks"] = stage4_checks(results["comparisons"])
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
    results["stage4_checks"] = stage4_checks(results["comparisons"])
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, out)
    return results


if __name__ == "__main__":
    sys.exit(main())
