"""scripts/make_report.py fills its tables from fixture inputs (ablations, bench, smoke run), and missing inputs give
"not measured" statements instead of numbers."""

import os
import re

import make_report as report  # scripts/make_report.py (scripts/ is on pytest's pythonpath)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def row(text: str, *starts: str) -> str:
    """The one markdown table row that begins with these cells."""
    prefix = "| " + " | ".join(starts)
    rows = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (prefix, rows)
    return rows[0]


def render_report(folder, ablations: str, bench: str, smoke: str, image_splitting: str) -> str:
    """make_report's main on these inputs, the REPORT.md it writes into `folder`."""
    out = os.path.join(folder, "REPORT.md")
    report.main(
        [
            "--ablations",
            ablations,
            "--bench",
            bench,
            "--smoke",
            smoke,
            "--image_splitting",
            image_splitting,
            "--stage4",
            os.path.join(folder, "no_stage4.json"),  # its section is tested on its own
            "--out",
            out,
        ]
    )
    with open(out) as f:
        return f.read()


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    return render_report(
        tmp_path_factory.mktemp("report"),
        ablations=os.path.join(FIXTURES, "ablations_fixture.json"),
        bench=os.path.join(FIXTURES, "report_bench"),
        smoke=os.path.join(FIXTURES, "report_smoke", "summary.json"),
        image_splitting=os.path.join(FIXTURES, "no_such_image_splitting.json"),  # its section is tested on its own
    )


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    missing = str(tmp_path_factory.mktemp("missing"))
    return render_report(
        missing,
        ablations=os.path.join(missing, "ablations.json"),
        bench=os.path.join(missing, "bench"),
        smoke=os.path.join(missing, "summary.json"),
        image_splitting=os.path.join(missing, "image_splitting.json"),
    )


def test_ablation_tables_come_from_the_fixture(filled):
    arm = row(
        filled, "`s1_mlp`", "1", "`recipes/ablations/s1_mlp.yaml` (projector_type=mlp2x_gelu image_position=user_turn)"
    )
    assert "0.425 ± 0.0221" in arm and "| 3 | 64 |" in arm  # exact match mean ± std; seeds; image tokens
    assert "| 3.2 ± 0.1 |" in arm  # last loss
    assert "0.712 ± 0.0132" in row(filled, "`s1_prefix`", "1")
    real = row(filled, "image_position", "exact match")
    assert "| 0.287 | 0.000943 | [0.27, 0.3] | real: s1_prefix higher |" in real
    assert "within seed noise" in row(filled, "image_position", "abstain F1")
    assert "real: s1_prefix lower" in row(filled, "image_position", "last loss")
    assert "exact match 0.425 -> 0.712 (p = 0.000943)" in filled  # the conclusion quotes the numbers
    assert "Within seed noise: abstain F1" in filled
    assert "failed: 3" in filled and "Fixture CPU 9000" in filled  # the failed seed and the machine are reported
    assert "test: paired design" in filled and "scipy.stats.ttest_rel" in filled  # the test used is named
    assert "final loss" not in filled and "Welch" not in filled


def test_bench_smoke_and_failure_tables_come_from_the_fixtures(filled):
    assert "**tiny.ratio_ours_over_llava_samples_per_s** | 0.927" in filled
    assert "tiny.ours.median_s | 0.178" in filled and "min_s" not in filled
    assert "- note: fixture note" in filled
    assert row(filled, "first_loss").endswith("| 6.43 | 1.5 |")
    assert row(filled, "exact_match").endswith("| 0.111 | 0.555 |")
    # steps and tokens as train_results.json recorded them; samples seen = samples/s x runtime (9.5 x 505.3)
    assert "| stage1 | 1,600 | 300 | 4,800 | 123,456 | 505 | 9.5 |" in filled
    assert "1,234 s wall time" in filled
    assert "Machine: Recorded CPU 7000, 4 cores, no GPU (recorded in stage1/run_info.json)" in filled
    assert row(filled, "false_abstention", "9")
    assert "| ocr_miss | What is the invoice total? | $12.50 | $15.20 | 0.457 |" in filled


def test_stage_tables_are_computed_from_the_recipes(filled):
    stage1 = row(filled, "stage1 (`recipes/stage1.yaml`)", "FROZEN")
    assert "| 729 |" in stage1  # SigLIP-so400m 27x27 grid, computed by the config
    assert re.search(r"FROZEN 0 / 428,\d{3},\d{3}", stage1)  # the tower's size, counted on the meta device
    # a stage that recorded its train plan is read from run_info.json; one without the record is planned
    recorded = row(filled, "offline stage1 (`recipes/smoke/stage1.yaml`)")
    assert recorded.startswith(
        "| offline stage1 (`recipes/smoke/stage1.yaml`) | TRAINED 1,111 / 1,111 | TRAINED 2,222"
    )
    assert recorded.endswith("| 6,666 | 0 | not measured | run_info.json |")
    planned = row(filled, "offline stage2 (`recipes/smoke/stage2.yaml`)")
    assert planned.endswith("| meta-device plan |") and "PARTIAL" in planned  # LoRA inside the LLM
    assert row(filled, "stage2 (`recipes/stage2.yaml`)", "FROZEN").endswith("| meta-device plan |")  # never ran
    assert "user_turn:\n<|im_start|>system" in filled and "prefix:\n[64 x <|image_pad|>]<|im_start|>" in filled
    assert "Estimate, not a measurement" in filled and "989 TFLOP/s" in filled
    assert "Published reference points" in filled and "58.2" in filled


def test_missing_inputs_say_not_measured_and_invent_nothing(empty):
    for statement in (
        "Ablations: not measured",
        "Benchmarks: not measured",
        "Offline default results: not measured",
        "Compute of the offline default: not measured",
        "Failure modes: not measured",
        "## Stage 4: training the abstention\n\nnot measured",
    ):
        assert statement in empty
    for fixture_number in ("0.432", "0.927", "6.43", "0.000417", "`s1_mlp`"):
        assert fixture_number not in empty


def test_image_splitting_section_reads_its_own_ablation():
    """Per arm, the paired comparisons and exact match per question type, all from the JSON; one answerable row's
    worth of difference is called out as no evidence."""
    import report_sections

    run = lambda em, loss, kv: {
        "exact_match": em,
        "last_loss": loss,
        "num_tokens": 1000,
        "per_question_type": {
            "key_value": {"count": 40, "exact_match": kv},
            "unanswerable": {"count": 10, "exact_match": 0.5},
        },
    }
    arms = {
        "hr_single": {
            "keys": {"num_train_epochs": 7},
            "n_seeds": 2,
            "seeds": {"0": run(0.025, 1.3, 0.025), "1": run(0.025, 1.4, 0.025)},
            "mean": {"exact_match": 0.025, "last_loss": 1.35},
            "std": {},
        },
        "hr_anyres": {
            "keys": {"max_tiles": 12},
            "n_seeds": 2,
            "seeds": {"0": run(0.0, 2.5, 0.0), "1": run(0.0, 2.9, 0.0)},
            "mean": {"exact_match": 0.0, "last_loss": 2.7},
            "std": {},
        },
    }
    comparisons = [
        {
            "metric": "exact_match",
            "mean_a": 0.025,
            "std_a": 0,
            "mean_b": 0.0,
            "std_b": 0,
            "diff": -0.025,
            "p_value": 0.0,
            "ci95": [-0.025, -0.025],
            "verdict": "real: hr_anyres lower",
        }
    ]
    text = report_sections.image_splitting_section(
        {"config": {"seeds": [0, 1]}, "arms": arms, "comparisons": comparisons}
    )
    assert "| key_value | 0.025 (n=40) | 0.000 (n=40) |" in text
    assert "max_tiles=12" in text and "real: hr_anyres lower" in text
    assert "one row of 40 is 0.025" in text and "Neither arm learned" in text
    assert "`hr_single` ends at the lower training loss (1.35 vs 2.70)" in text
    assert "not measured" in report_sections.image_splitting_section(None)


def test_stage4_section_reads_the_stage4_ablation():
    import ablation_stats
    import report_stage4
    from ablation_arms import METRICS, STAGE4_METRICS

    def seeds(**changes) -> dict:  # two seeds; a change is (seed 0, seed 1)
        values = {metric: (0.5, 0.5) for metric in (*METRICS, *STAGE4_METRICS)}
        values |= {"hallucination_rate": (0.0, 0.0), "contrastive_hallucination_rate": (0.02, 0.04), **changes}
        return {s: {metric: v[s] for metric, v in values.items()} for s in (0, 1)}

    stage2 = seeds(model_answerable_abstain_rate=(0.25, 0.35), contrastive_model_answerable_abstain_rate=(0.9, 1.0))
    arms = {
        "s2_lora_r16_top1": stage2,
        "s4_dpo": seeds(
            model_answerable_abstain_rate=(0.125, 0.225),
            answerable_abstain_rate=(0.375, 0.375),
            contrastive_model_answerable_abstain_rate=(0.9, 1.0),
        ),
        "s4_grpo": seeds(contrastive_hallucination_rate=(0.5, 0.5), **{"phi@1": (0.4, 0.4)}),
    }
    arms = {name: ablation_stats.summarize_arm(name, per_seed, {}) for name, per_seed in arms.items()}
    comparisons = ablation_stats.build_comparisons(arms)
    results = {
        "config": {"git_commit": "abc", "started": "t0", "finished": "t1", "budget": {"stage2_epochs": 4}},
        "arms": arms,
        "comparisons": comparisons,
        "stage4_checks": ablation_stats.stage4_checks(comparisons),
    }
    text = report_stage4.stage4_section(results)
    # DPO lowers the model's own over-abstention by 0.125 on both seeds: the paired interval is exactly that
    assert row(text, "test: over-abstention (model's own)") == (
        "| test: over-abstention (model's own) | 0.3 | 0.175 (-0.125, [-0.125, -0.125]) | 0.5 (+0.200, [0.15, 0.25]) |"
    )
    assert row(text, "contrastive: hallucination (thresholded)").endswith(
        "| 0.03 (+0.000, [0, 0]) | 0.5 (+0.470, [0.46, 0.48]) |"
    )
    assert row(text, "do no harm") == "| do no harm | pass | FAIL |"
    assert (
        row(text, "contrastive hallucination not higher") == "| contrastive hallucination not higher | pass | FAIL |"
    )
    assert row(text, "phi@1 not lower") == "| phi@1 not lower | pass | FAIL |"
    assert row(text, "gain answerable abstain rate -0.05") == "| gain answerable abstain rate -0.05 | pass | FAIL |"
    assert row(text, "test: over-abstention (thresholded)").endswith(
        "| 0.375 (-0.125, [-0.125, -0.125]) | 0.5 (+0.000, [0, 0]) |"
    )
    # a method with no checks (not run) is not a failure
    del results["stage4_checks"]["stage4_grpo"]
    assert row(report_stage4.stage4_section(results), "do no harm") == "| do no harm | pass | not measured |"
    assert row(text, "gain", "pass") == "| gain | pass | FAIL |"
    assert "seeds [0, 1]" in text and "95% of the answerable contrastive questions against 30%" in text
    assert "not measured" in report_stage4.stage4_section(None)
