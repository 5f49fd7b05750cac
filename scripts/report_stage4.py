"""REPORT.md's stage-4 section, read from scripts/stage4.sh's OUT/stage4_summary-seedS.json (stage 2 against DPO and
GRPO on the test and contrastive splits, with the do-no-harm checks)."""

from report_format import NOT_MEASURED, fmt, table

SPLITS = ("test", "contrastive")

LABELS = {
    "exact_match": "exact match (answerable)",
    "phi@1": "phi@1",
    "hallucination_rate": "hallucination (thresholded)",
    "answerable_abstain_rate": "over-abstention (thresholded)",
    "model_hallucination_rate": "hallucination (model's own)",
    "model_answerable_abstain_rate": "over-abstention (model's own)",
    "model_abstain_f1": "abstain F1 (model's own)",
}


def cell(values: dict) -> str:
    """mean (difference to stage 2, 95% interval over seeds)."""
    ci = values.get("ci95")
    interval = f", [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
    return f"{fmt(values['mean'])} ({values['diff']:+.3f}{interval})"


def stage4_section(summary: dict | None) -> str:
    if not summary:
        return f"## Stage 4: training the abstention\n\n{NOT_MEASURED} (run `bash scripts/stage4.sh`)."
    results, seeds = summary["metrics"], summary["seeds"]
    rows = []
    for split in SPLITS:
        for key, label in LABELS.items():
            base = fmt(results["stage2"][split][key]["mean"])
            rows.append([f"{split}: {label}", base, *(cell(results[m][split][key]) for m in ("dpo", "grpo"))])
    checks = [
        [name.replace("_", " "), *("pass" if summary["checks"][m][name] else "FAIL" for m in ("dpo", "grpo"))]
        for name in summary["checks"]["dpo"]
    ]
    return "\n\n".join(
        [
            "## Stage 4: training the abstention",
            f"From the offline default's merged stage-2 model, seeds {seeds} (`bash scripts/stage4.sh OUT SEED`, "
            "then `scripts/stage4_summary.py`): DPO on stage 2's own mistakes on the train split "
            "(`recipes/smoke/stage4_dpo.yaml`, sigmoid + SFT anchor) and GRPO with the exact-match / abstention "
            "reward (`recipes/smoke/stage4_grpo.yaml`, abstain_cost 0.5), both LoRA. Test split with the "
            "threshold refitted on validation; the contrastive split asks each question of two images, the field "
            "present in one only, so the wording alone cannot predict abstention. Cells: mean over seeds "
            "(difference to stage 2, 95% bootstrap interval over seeds; every seed starts from the same stage-2 "
            "model).",
            table(["split: metric", "stage 2", "DPO", "GRPO"], rows),
            "The issue's do-no-harm and gain checks, on the seed means:",
            table(["check", "DPO", "GRPO"], checks),
            reading(results),
        ]
    )


def reading(results: dict) -> str:
    """What the contrastive split shows about stage 2, in numbers read from the summary."""
    test, contrastive = (results["stage2"][split]["model_answerable_abstain_rate"]["mean"] for split in SPLITS)
    return (
        f"Stage 2 abstains on its own on {contrastive:.0%} of the answerable contrastive questions against {test:.0%} "
        "of the answerable test questions: asked what is usually absent from its template, it abstains whatever "
        "the image shows, which the test split (where the wording predicts the label) cannot reveal."
    )
