"""REPORT.md's sections read from run outputs: the offline default (smoke run: data, compute, results, failure modes),
the ablations (ablations.json: per-arm table, paired comparisons, conclusions) and the benchmarks (bench/results)."""

import glob
import json
import os

from report_format import NOT_MEASURED, fmt, load_json, machine_line, mean_std, short_version, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_SKIP = (".min_s", ".max_s", ".n")  # spread of the timed repeats: the medians and ratios are the figures
METRIC_LABELS = {
    "exact_match": "exact match",
    "model_abstain_f1": "model abstain F1",
    "abstain_f1": "abstain F1 (thresholded)",
    "hallucination_rate": "hallucination",
    "last_loss": "last loss",
    "train_samples_per_second": "train samples/s",
}


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
        rows.append(
            [stage, train.get("train_rows"), train.get("global_step"), samples, train.get("num_tokens"), runtime, sps]
        )
    where = "recorded in stage1/run_info.json" if machine else "the machine generating this report: the run predates "
    where += "" if machine else "run_info.json's machine record"
    return "\n\n".join(
        [
            table(["stage", "train rows", "steps", "samples seen", "tokens seen", "train seconds", "samples/s"], rows),
            f"Whole pipeline (backbones, data, both stages, both evaluations): {fmt(smoke.get('seconds'))} s wall "
            f"time. Machine: {machine_line(machine)} ({where}).",
        ]
    )


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


def comparison_cells(c: dict) -> list:
    """The statistics cells of one paired comparison: A and B as mean ± std, diff, p, 95% CI, verdict."""
    ci = "[" + ", ".join(fmt(x) for x in c["ci95"]) + "]" if c.get("ci95") else NOT_MEASURED
    return [
        mean_std(c["mean_a"], c["std_a"]),
        mean_std(c["mean_b"], c["std_b"]),
        c["diff"],
        c["p_value"],
        ci,
        c["verdict"],
    ]


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
        [c["name"], METRIC_LABELS.get(c["metric"], c["metric"]), f"`{c['a']}`", f"`{c['b']}`", *comparison_cells(c)]
        for c in abl["comparisons"]
    ]
    out += [
        "Comparisons: diff = mean(B) − mean(A) over the seeds both arms ran; test: "
        + (cfg.get("statistics") or f"{NOT_MEASURED} (this ablations.json does not say which test it used)")
        + (
            f" (statistics recomputed from the recorded per-seed values at {cfg['stats_recomputed']['at']})."
            if cfg.get("stats_recomputed")
            else "."
        ),
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


def image_splitting_section(abl: dict | None) -> str:
    """The single-tile vs AnyRes ablation on the high-resolution set: per arm, the comparisons, and exact match per
    question type (mean over seeds), read from its own ablations.json."""
    if not abl:
        return (
            f"Image splitting: {NOT_MEASURED} (no ablations.json; run `python scripts/ablations.py --out "
            "outputs/ablations_highres --only image_splitting`)."
        )
    cfg, arms = abl["config"], abl["arms"]
    out = [
        f"`python scripts/ablations.py --only image_splitting` (git `{short_version(cfg.get('git_commit'))}`, "
        f"{cfg.get('started')} -> {cfg.get('finished')}) on {machine_line(cfg.get('machine'))}; seeds "
        f"{cfg.get('seeds')}; dataset fingerprint `{str(cfg.get('dataset_fingerprint'))[:16]}`. Equal compute = "
        "equal training tokens and ~equal optimizer steps (single tile: 16 rows per step for 7 epochs; AnyRes: 2 "
        "rows per step for 1 epoch); `tokens` is TRL's count of what each run trained on."
    ]
    rows = []
    for name, a in arms.items():
        seeds = a["seeds"].values()
        tokens = [r.get("num_tokens") for r in seeds if r.get("num_tokens")]
        m, s = a["mean"], a["std"]
        keys = " ".join(f"{k}={v}" for k, v in a.get("keys", {}).items() if k != "datasets")
        rows.append(
            [
                f"`{name}`",
                keys,
                a["n_seeds"],
                fmt(sum(tokens) / len(tokens)) if tokens else NOT_MEASURED,
                *[mean_std(m.get(k), s.get(k)) for k in (*METRIC_LABELS, "seconds")],
            ]
        )
    out.append(table(["arm", "overlay keys", "seeds", "tokens", *METRIC_LABELS.values(), "seconds/run"], rows))
    comp = [[c["metric"], *comparison_cells(c)] for c in abl["comparisons"]]
    out += [
        f"Paired over seeds ({cfg.get('statistics') or 'test not recorded'}), A = single tile, B = AnyRes:",
        table(["metric", "A", "B", "diff", "p", "95% CI", "verdict"], comp),
    ]
    types = sorted({t for a in arms.values() for r in a["seeds"].values() for t in (r.get("per_question_type") or {})})
    per_type = []
    for t in types:
        row = [t]
        for a in arms.values():
            cells = [r["per_question_type"][t] for r in a["seeds"].values() if t in (r.get("per_question_type") or {})]
            scores = [c.get("exact_match") for c in cells if c.get("exact_match") is not None]
            row.append(f"{sum(scores) / len(scores):.3f} (n={cells[0]['count']})" if scores else NOT_MEASURED)
        per_type.append(row)
    out += [
        "Exact match per question type (test split, mean over seeds; unanswerable rows score the raw answer):",
        table(["question type", *(f"`{n}`" for n in arms)], per_type),
        splitting_reading(arms),
    ]
    return "\n\n".join(out)


def splitting_reading(arms: dict) -> str:
    """What the image-splitting numbers support, from the numbers (a fixed reading would drift from them)."""
    em = {n: a["mean"].get("exact_match") for n, a in arms.items()}
    loss = {n: a["mean"].get("last_loss") for n, a in arms.items()}
    if any(v is None for v in (*em.values(), *loss.values())):
        return ""
    best = max(em.values())
    first = next(iter(next(iter(arms.values()))["seeds"].values()))  # test-split counts are the same for every run
    answerable = sum(c["count"] for t, c in (first.get("per_question_type") or {}).items() if t != "unanswerable")
    lines = [
        f"**Reading.** Best mean exact match on answerable rows: {best:.3f}"
        + (
            f" (one row of {answerable} is {1 / answerable:.3f}: a difference of one question, even on "
            "every seed, is no evidence)."
            if answerable
            else "."
        )
    ]
    if best < 0.05:
        lines.append(
            "Neither arm learned to read the small text at this budget (random tiny backbones, ~400 optimizer "
            "steps): the comparison cannot show the gain AnyRes is for, only that it trains and evaluates end to "
            "end at equal tokens and steps."
        )
    lower = min(loss, key=loss.get)
    lines.append(
        f"`{lower}` ends at the lower training loss ({loss[lower]:.2f} vs "
        f"{max(loss.values()):.2f}); the single-tile arm sees each row 7 times (7 epochs) against once, so its lower "
        "loss is partly memorisation, not reading (its test exact match says which)."
    )
    return " ".join(lines)
