"""Summarise the offline default run (scripts/smoke.sh): OUT/summary.json, printed, and a non-zero exit when the run
did not show learning (stage-1 loss must at least halve; stage 2 must beat stage 1 on held-out exact match and on
the F1 of the model's own abstentions on unanswerable questions)."""

import argparse
import json
import os
import sys

FIELDS = (
    "exact_match",
    "model_abstain_f1",
    "model_hallucination_rate",
    "model_answerable_abstain_rate",
    "abstain_f1",
    "hallucination_rate",
    "answerable_abstain_rate",
    "auc",
)


def stage_summary(out: str, stage: str) -> dict:
    with open(os.path.join(out, stage, "train_results.json")) as f:
        train = json.load(f)
    with open(os.path.join(out, "eval", stage, "eval_results.json")) as f:
        ev = json.load(f)
    return {
        "first_loss": train["first_loss"],
        "last_loss": train["last_loss"],
        "global_step": train["global_step"],
        "train_samples_per_second": train["train_samples_per_second"],
        **{k: ev["metrics"].get(k) for k in FIELDS},
        "threshold": ev.get("threshold"),
        "counts": ev.get("counts"),
        "per_question_type": {k: v.get("exact_match") for k, v in ev.get("per_question_type", {}).items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    s1, s2 = stage_summary(args.out, "stage1"), stage_summary(args.out, "stage2")
    with open(os.path.join(args.out, "data", "synthetic", "manifest.json")) as f:
        manifest = json.load(f)
    checks = {
        "stage1_loss_at_least_halved": s1["last_loss"] <= s1["first_loss"] / 2,
        "stage2_beats_stage1_exact_match": s2["exact_match"] > s1["exact_match"],
        # the model's own abstentions: the thresholded F1 mostly measures the post-hoc policy fitted on validation
        "stage2_beats_stage1_model_abstain_f1": s2["model_abstain_f1"] > s1["model_abstain_f1"],
    }
    summary = {
        "stage1": s1,
        "stage2": s2,
        "unanswerable_share": s2["counts"]["unanswerable"] / s2["counts"]["rows"],  # of the held-out test split
        "dataset_fingerprint": manifest["fingerprint"],
        "checks": checks,
        "seconds": args.seconds,
        "artefacts": {
            "final_model": os.path.join(args.out, "final"),
            "eval": os.path.join(args.out, "eval"),
            "gallery": os.path.join(args.out, "eval", "stage2", "failures.html"),
        },
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(
        f"\nArtefacts in {args.out} (summary.json, final/, eval/*/failures.html). "
        f"Try the demo: MODEL_ID={args.out}/final python spaces_demo/app.py"
    )
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        print(f"FAILED learning checks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
