"""REPORT.md's stage-4 section, read from the stage-4 ablation's ablations.json (`python scripts/ablations.py --only
stage4_dpo stage4_grpo`): per seed, stage 2 retrained (s2_lora_r16_top1) and DPO / GRPO continued from it, compared
on the test split (threshold refitted on validation) and the contrastive split, with the issue's checks."""

from report_format import NOT_MEASURED, fmt, short_version, table

STAGE2 = "s2_lora_r16_top1"
METHODS = {"stage4_dpo": "DPO", "stage4_grpo": "GRPO"}  # comparison -> column
LABELS = {
    "exact_match": "test: exact match (answerable)",
    "phi@1": "test: phi@1",
    "hallucination_rate": "test: hallucination (thresholded)",
    "answerable_abstain_rate": "test: over-abstention (thresholded)",
    "model_hallucination_rate": "test: hallucination (model's own)",
    "model_answerable_abstain_rate": "test: over-abstention (model's own)",
    "model_abstain_f1": "test: abstain F1 (model's own)",
    "abstain_f1": "test: abstain F1 (thresholded)",
    "contrastive_hallucination_rate": "contrastive: hallucination (thresholded)",
    "contrastive_model_hallucination_rate": "contrastive: hallucination (model's own)",
    "contrastive_model_answerable_abstain_rate": "contrastive: over-abstention (model's own)",
}


def cell(c: dict | None) -> str:
    """mean (difference to stage 2, paired 95% bootstrap interval over seeds)."""
    if c is None or c["mean_b"] is None:
        return NOT_MEASURED
    ci = c.get("ci95")
    interval = f", [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
    return f"{fmt(c['mean_b'])} ({c['diff']:+.3f}{interval})"


def stage4_section(results: dict | None) -> str:
    title = "## Stage 4: training the abstention"
    if not results or not results.get("stage4_checks"):
        return f"{title}\n\n{NOT_MEASURED} (run `python scripts/ablations.py --only stage4_dpo stage4_grpo`)."
    cfg = results["config"]
    by = {(c["name"], c["metric"]): c for c in results["comparisons"]}
    first = next(c for c in results["comparisons"] if c["name"] in METHODS)
    stage2 = {metric: by[(first["name"], metric)]["mean_a"] for metric in LABELS}  # over the paired seeds
    rows = [
        [label, fmt(stage2[metric]), *(cell(by.get((name, metric))) for name in METHODS)]
        for metric, label in LABELS.items()
    ]
    checks = results["stage4_checks"]
    verdict = lambda m, name: NOT_MEASURED if m not in checks else ("pass" if checks[m][name] else "FAIL")  # noqa: E731
    check_rows = [
        [name.replace("_", " "), *(verdict(m, name) for m in METHODS)] for name in next(iter(checks.values()))
    ]
    return "\n\n".join(
        [
            title,
            f"`python scripts/ablations.py --out OUT --only stage4_dpo stage4_grpo` (git "
            f"`{short_version(cfg.get('git_commit'))}`, {cfg.get('started')} -> {cfg.get('finished')}), seeds "
            f"{first['seeds']}: each seed trains stage 1 (`s1_mlp`) and stage 2 (`{STAGE2}`, the ablation budget: "
            f"`{cfg['budget']['stage2_epochs']}` epochs), then from that stage 2 DPO on its own mistakes on the "
            "train split (`recipes/ablations/s4_dpo.yaml` over `recipes/smoke/stage4_dpo.yaml`: sigmoid + SFT "
            "anchor, abstention anchors rejecting another image's answer to the same question) and GRPO with the "
            "exact-match / abstention reward (`recipes/ablations/s4_grpo.yaml` over `recipes/smoke/stage4_grpo.yaml`"
            "), both LoRA. Test split with the threshold refitted on validation; the contrastive split asks each "
            "question of two images, the field present in one only, so the wording alone cannot predict abstention. "
            "Cells: stage 4's mean over seeds (difference to the same seeds' stage 2, paired 95% bootstrap interval "
            "over seeds).",
            table(["metric", "stage 2", *METHODS.values()], rows),
            "The issue's checks on the seed means (a gain needs its margin and the paired interval clear of 0):",
            table(["check", *METHODS.values()], check_rows),
            reading(stage2),
        ]
    )


def reading(stage2: dict) -> str:
    """What the contrastive split shows about stage 2, in numbers read from the results."""
    test, contrastive = stage2["model_answerable_abstain_rate"], stage2["contrastive_model_answerable_abstain_rate"]
    if test is None or contrastive is None:
        return ""
    return (
        f"Stage 2 abstains on its own on {contrastive:.0%} of the answerable contrastive questions against {test:.0%} "
        "of the answerable test questions: asked what is usually absent from its template, it abstains whatever "
        "the image shows, which the test split (where the wording predicts the label) cannot reveal."
    )
