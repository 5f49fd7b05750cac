"""scripts/ablations.py: the statistics against hand-computed values, and a 1-seed, 2-step run of the baseline
comparison (stage 1 -> stage 2 through the real run_sft / run_eval subprocesses) that must write a valid ablations.json
and its plots."""

import importlib.util
import json
import math
import os

import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ablations():
    spec = importlib.util.spec_from_file_location("ablations", os.path.join(ROOT, "scripts", "ablations.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


abl = load_ablations()


def test_welch_p_value_matches_the_hand_formula():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    # means 2 and 4, sample variances 1 and 4, n = 3: se^2 = 1/3 + 4/3 = 5/3
    t = (4 - 2) / math.sqrt(5 / 3)
    df = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # Welch-Satterthwaite = 50/17
    assert df == pytest.approx(50 / 17)
    p_hand = 2 * stats.t.sf(t, df)
    assert abl.welch_p_value(a, b) == pytest.approx(p_hand, rel=1e-9)
    assert abl.welch_p_value([1.0], b) is None  # one seed: no test
    assert abl.welch_p_value([0.0, 0.0], [0.0, 0.0]) == 1.0  # identical constant seeds (scipy: nan)
    assert abl.welch_p_value([0.0, 0.0], [1.0, 1.0]) == 0.0


def test_paired_bootstrap_and_verdicts():
    a = {0: 0.10, 1: 0.11, 2: 0.12}
    b = {0: 0.50, 1: 0.51, 2: 0.52}
    assert abl.bootstrap_ci(a, b) == pytest.approx([0.4, 0.4])  # every seed's difference is 0.4
    rec = lambda d: {s: {"exact_match": v} for s, v in d.items()}
    real = abl.compare("c", "q", "A", "B", rec(a), rec(b), "exact_match")
    assert real["verdict"] == "real: B higher" and real["diff"] == pytest.approx(0.4)
    assert real["p_value"] < 0.05 and real["n_a"] == real["n_b"] == 3
    noisy = abl.compare(
        "c", "q", "A", "B", rec({0: 0.1, 1: 0.5, 2: 0.3}), rec({0: 0.4, 1: 0.2, 2: 0.35}), "exact_match"
    )
    assert noisy["verdict"] == "within seed noise"
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    single = abl.compare("c", "q", "A", "B", rec({0: 0.1}), rec({0: 0.2}), "exact_match")
    assert single["p_value"] is None and single["verdict"].startswith("not testable")


def test_only_expands_comparisons_and_rejects_unknown_names():
    assert abl.select_arms(["baseline"]) == ["s1_mlp", "s2_lora_r16_top1"]
    assert abl.select_arms(None) == abl.DEFAULT_ARMS
    with pytest.raises(SystemExit, match="not an arm"):
        abl.select_arms(["no_such_arm"])


@pytest.fixture(scope="module")
def quick_run(backbones, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    rc = abl.main(
        ["--out", str(out), "--quick", "--only", "baseline", "--backbones", os.path.dirname(backbones["llm-qwen2"])]
    )
    return rc, out


def test_quick_run_writes_a_valid_ablations_json(quick_run):
    rc, out = quick_run
    assert rc == 0, (out / "ablations.json").read_text()[-2000:]
    text = (out / "ablations.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in ablations.json"))
    cfg = results["config"]
    assert cfg["quick"] and cfg["seeds"] == [0] and cfg["budget"]["max_steps"] == 2
    assert len(cfg["dataset_fingerprint"]) == 64 and cfg["machine"]["cpu_count"]
    assert set(results["arms"]) == {"s1_mlp", "s2_lora_r16_top1"}
    for name, arm in results["arms"].items():
        assert arm["n_seeds"] == 1 and not arm["errors"]
        run = arm["seeds"]["0"]
        for field in (
            "exact_match",
            "abstain_f1",
            "hallucination_rate",
            "final_loss",
            "train_samples_per_second",
            "seconds",
            "num_image_tokens",
        ):
            assert isinstance(run[field], (int, float)) and math.isfinite(run[field]), (name, field)
        assert 0 <= run["exact_match"] <= 1 and run["num_image_tokens"] == 64
        assert run["global_step"] == 2 and len(run["losses"]) == 2
        assert set(arm["mean"]) >= set(abl.METRICS)
    assert results["arms"]["s2_lora_r16_top1"]["flags"]["lora_r"] == 16
    comparisons = results["comparisons"]
    assert [(c["name"], c["a"], c["b"]) for c in comparisons] == [("baseline", "s1_mlp", "s2_lora_r16_top1")] * len(
        abl.METRICS
    )
    assert {c["metric"] for c in comparisons} == set(abl.METRICS)
    for c in comparisons:
        assert c["p_value"] is None and c["verdict"].startswith("not testable")  # 1 seed
        assert c["diff"] == pytest.approx(c["mean_b"] - c["mean_a"])
    assert (out / "ablations_bars.png").stat().st_size > 1000
    assert (out / "ablations_losses.png").stat().st_size > 1000
    assert (out / "runs" / "s2_lora_r16_top1-seed0" / "merged" / "config.json").exists()  # stage 2 from stage 1
