"""REPORT.md's stage-4 section, read from scripts/stage4.sh's OUT/stage4_summary-seedS.json (stage 2 against DPO and
GRPO on the test and contrastive splits, with the do-no-harm checks)."""

from report_format import NOT_MEASURED, fmt, table

LABELS = {
    "exact_match": "exact match (answerable)",
    "phi@1": "phi@1",
    "hallucination_rate": "hallucination (thresholded)",
    "answerable_abstain_rate": "over-abstention (thresholded)",
    "model_hallucination_rate": "hallucination (model's own)",
    "model_answerable_abstain_rate": "over-abstention (model's own)",
    "model_abstain_f1": "abstain F1 (model's own)",
}


def stage4_section(summary: dict | None) -> str:
    if not summary:
        return f"## Stage 4: training the abstention\n\n{NOT_MEASURED} (run `bash scripts/stage4.sh`)."
    results, seed = summary["metrics"], summary["seed"]
    rows = []
    for split in ("test", "contrastive"):
        for key, label in LABELS.items():
            rows.append([f"{split}: {label}", *(fmt(results[m][split].get(key)) for m in ("stage2", "dpo", "grpo"))])
    checks = [
        [name.replace("_", " "), *("pass" if summary["checks"][m][name] else "FAIL" for m in ("dpo", "grpo"))]
        for name in summary["checks"]["dpo"]
    ]
    return "\n\n".join(
        [
            "## Stage 4: training the abstention",
            f"From the offline default's merged stage-2 model, seed {seed} (`bash scripts/stage4.sh`): DPO on stage "
            "2's own mistakes on the train split (`recipes/smoke/stage4_dpo.yaml`, sigmoid + SFT anchor) and GRPO "
            "with the exact-match / abstention reward (`recipes/smoke/stage4_grpo.yaml`, abstain_cost 0.5), both "
            "LoRA. Test split with the threshold refitted on validation; the contrastive split asks each question of "
            "two images, the field present in one only, so the wording alone cannot predict abstention.",
            table(["split: metric", "stage 2", "DPO", "GRPO"], rows),
            "Do-no-harm and gain checks of the issue (one seed: the paired interval over 3 seeds is not run yet):",
            table(["check", "DPO", "GRPO"], checks),
        ]
    )
