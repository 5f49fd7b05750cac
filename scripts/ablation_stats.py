"""The ablation's statistics: paired t-test + paired bootstrap per comparison, per-arm summaries over seeds, the
console lines and the two plots (ablations_bars.png, ablations_losses.png)."""

import math
import os

import numpy as np
from ablation_arms import ARMS, COMPARISONS, INIT_ARMS, SUMMARY_FIELDS, compared_metrics

N_BOOT, BOOT_SEED = 10_000, 0
STATISTICS = (
    "paired design (every arm runs the same seeds on the same data): two-sided paired t-test of the per-seed "
    f"differences (scipy.stats.ttest_rel); 95% CI of the mean difference by paired bootstrap ({N_BOOT} resamples "
    f"of the seeds, the same indices for both arms, numpy rng seed {BOOT_SEED}); real = p < 0.05 and the CI "
    "excludes 0"
)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite(x):
    return x if is_number(x) else None


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


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
    return {
        "name": name,
        "question": question,
        "a": arm_a,
        "b": arm_b,
        "metric": metric,
        "test": "paired t (scipy.stats.ttest_rel) + paired bootstrap CI",
        "seeds": seeds,
        "n_a": len(va),
        "n_b": len(vb),
        "mean_a": mean(va),
        "mean_b": mean(vb),
        "std_a": std(va),
        "std_b": std(vb),
        "diff": diff,
        "std_diff": std(list(np.subtract(vb, va))),
        "p_value": p,
        "ci95": ci,
        "verdict": verdict,
    }


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
            rows += [compare(name, question, a, b, sa, sb, metric) for metric in compared_metrics(b)]
    return rows


# The issue's done-when for stage 4, against stage 2 on the test split (threshold refitted on validation) and the
# contrastive split: do no harm, and a gain on over-abstention (run_eval's answerable_abstain_rate) or on the model's
# own abstain F1, by the margin and with the paired 95% interval clear of 0. EPS: differences are float means
# (0.25 - 0.3 is -0.04999999999999999), so "by 0.05" and "not lower" allow float noise.
GAINS = {"answerable_abstain_rate": -0.05, "model_abstain_f1": 0.03}
EPS = 1e-9


def abstention_checks(stats: dict) -> dict:
    """stats: {metric: {"mean": stage 4's mean, "diff": mean difference to stage 2, "ci95": [lo, hi] or None}} with
    the contrastive split's metrics as contrastive_<metric>. Returns {check: bool}."""

    def gained(metric: str, margin: float) -> bool:
        diff, ci = stats[metric]["diff"], stats[metric]["ci95"]
        if ci is None:
            return False
        return diff <= margin + EPS and ci[1] < 0 if margin < 0 else diff >= margin - EPS and ci[0] > 0

    checks = {
        "hallucination_rate_at_most_0.02": stats["hallucination_rate"]["mean"] <= 0.02 + EPS,
        "contrastive_hallucination_not_higher": stats["contrastive_hallucination_rate"]["diff"] <= EPS,
        "exact_match_down_at_most_0.01": stats["exact_match"]["diff"] >= -0.01 - EPS,
        "phi@1_not_lower": stats["phi@1"]["diff"] >= -EPS,
    }
    checks["do_no_harm"] = all(checks.values())
    checks |= {f"gain_{metric}_{margin:+g}": gained(metric, margin) for metric, margin in GAINS.items()}
    checks["gain"] = any(checks[f"gain_{metric}_{margin:+g}"] for metric, margin in GAINS.items())
    return checks


def stage4_checks(comparisons: list[dict]) -> dict:
    """{comparison: abstention_checks} for every comparison against a stage-4 arm that has all the metrics."""
    by_name = {}
    for c in comparisons:
        if ARMS.get(c["b"], {}).get("stage") == 4:
            by_name.setdefault(c["name"], {})[c["metric"]] = {
                "mean": c["mean_b"],
                "diff": c["diff"],
                "ci95": c["ci95"],
            }
    return {
        name: abstention_checks(stats)
        for name, stats in by_name.items()
        if all(v["mean"] is not None and v["diff"] is not None for v in stats.values())
    }


def report_comparisons(results: dict) -> None:
    for c in results["comparisons"]:
        print(
            f"[ablations] {c['name']:<24} {c['metric']:<24} {c['a']}={fmt(c['mean_a'])} {c['b']}="
            f"{fmt(c['mean_b'])} diff={fmt(c['diff'])} p={fmt(c['p_value'])} -> {c['verdict']}"
        )


def plot(results: dict, out: str) -> None:
    """ablations_bars.png: per comparison, exact match and abstention F1 (mean +- std over seeds) of both arms;
    ablations_losses.png: mean training-loss curve per arm, a panel per stage (stage 4: per trainer)."""
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
    panel = lambda arm: (arm["stage"], arm.get("trainer", "sft"))  # noqa: E731  DPO and GRPO losses differ in kind
    panels = sorted({(1, "sft"), (2, "sft")} | {panel(arm) for arm in arms.values()})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for name, arm in arms.items():
        curves = [dict(map(tuple, r["losses"])) for r in arm["seeds"].values() if r.get("losses")]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            mean = [np.mean([c[s] for c in curves]) for s in steps]
            axes[panels.index(panel(arm))].plot(steps, mean, label=f"{name} (n={len(curves)})")
    titles = [
        f"stage {s} arms"
        + (f", {t} loss" if t != "sft" else "")
        + (f" (from {INIT_ARMS[s]})" if s in INIT_ARMS else "")
        for s, t in panels
    ]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (mean over seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ablations_losses.png"), dpi=100)
    plt.close(fig)
