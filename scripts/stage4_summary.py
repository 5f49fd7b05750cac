"""Stage 4 against stage 2 (scripts/stage4.sh, one call per seed): each model's abstention metrics on the test split
(threshold refitted on validation) and the contrastive split, per seed, their means, the paired difference to stage 2
with a 95% bootstrap interval over seeds, and the issue's checks, into OUT/stage4_summary.json, printed as a table.

    python scripts/stage4_summary.py --out outputs/offline --seeds 0 1 2

Checks, per stage-4 model, on the seed means: the ablation's (ablation_stats.abstention_checks). Every stage-4 seed
here starts from the same stage-2 model (the smoke run's), so stage 2 is one value paired with each seed; the paired
comparison with stage 2 retrained per seed is the ablation's `--only stage4_dpo stage4_grpo`.
"""

import argparse
import json
import os

from ablation_arms import ABSTENTION_FIELDS  # scripts/ siblings: the ablation's metrics and statistics
from ablation_stats import abstention_checks, paired_bootstrap_ci

FIELDS = ABSTENTION_FIELDS
SPLITS = {"test": "", "contrastive": "-contrastive"}


def metrics(path: str) -> dict:
    with open(os.path.join(path, "eval_results.json")) as f:
        results = json.load(f)["metrics"]
    return {k: results.get(k) for k in FIELDS}


def model_results(out: str, name_of, seeds: list[int]) -> dict:
    """{split: {field: {"seeds": {seed: x}, "mean": m}}}; name_of(seed) is the model's eval folder for that seed."""
    results = {}
    for split, suffix in SPLITS.items():
        per_seed = {s: metrics(os.path.join(out, "eval", name_of(s) + suffix)) for s in seeds}
        results[split] = {
            field: {
                "seeds": {s: v[field] for s, v in per_seed.items()},
                "mean": mean(v[field] for v in per_seed.values()),
            }
            for field in FIELDS
        }
    return results


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def with_differences(model: dict, base: dict) -> dict:
    for split, fields in model.items():
        for field, values in fields.items():
            paired = {s: base[split][field]["seeds"][s] for s in values["seeds"]}
            values["diff"] = values["mean"] - mean(paired.values())
            values["ci95"] = paired_bootstrap_ci(paired, values["seeds"])
    return model


def checks(model: dict) -> dict:
    """The issue's checks on one stage-4 model's results (with_differences applied)."""
    stats = {f: model["test"][f] for f in FIELDS} | {f"contrastive_{f}": model["contrastive"][f] for f in FIELDS}
    return abstention_checks(stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    base = model_results(args.out, lambda s: "stage2", args.seeds)
    models = {
        kind: model_results(args.out, lambda s, k=kind: f"stage4_{k}-seed{s}", args.seeds) for kind in ("dpo", "grpo")
    }
    models = {kind: with_differences(results, base) for kind, results in models.items()}
    summary = {"seeds": args.seeds, "metrics": {"stage2": base, **models}}
    summary["checks"] = {kind: checks(results) for kind, results in models.items()}
    with open(os.path.join(args.out, "stage4_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{'model / split':24}" + "".join(f"{field[:14]:>15}" for field in FIELDS))
    for key, splits in summary["metrics"].items():
        for split, fields in splits.items():
            print(f"{key + ' / ' + split:24}" + "".join(f"{fields[f]['mean']:15.3f}" for f in FIELDS))
    print(json.dumps(summary["checks"], indent=1))


if __name__ == "__main__":
    main()
