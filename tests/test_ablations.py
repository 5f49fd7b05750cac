"""scripts/ablations.py: arms discovered from recipes/ablations/*.yaml, the paired statistics against hand-computed
values (and an example where pairing decides the verdict), recomputing an old results file, and a 1-seed, 2-step run
of the baseline comparison (stage 1 -> stage 2 through the real run_sft / run_eval subprocesses) that must write a
valid ablations.json and its plots."""

import json
import math
import os

import ablations as abl  # scripts/ablations.py (scripts/ is on pytest's pythonpath)
import pytest
import yaml
from scipy import stats

from recipes.arguments import ModelArguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_t_matches_the_hand_formula():
    # differences b - a = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 df, whose two-sided p has the
    # closed form 1 - |t| / sqrt(2 + t^2) = 1 - sqrt(12 / 14)
    a, b = [1.0, 5.0, 9.0], [2.0, 7.0, 12.0]
    assert abl.paired_t_p_value(a, b) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)  # 0.07418
    assert abl.paired_t_p_value(b, a) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)  # two-sided
    assert abl.paired_t_p_value([1.0], [2.0]) is None  # one pair: no test
    assert abl.paired_t_p_value([0.0, 1.0], [0.0, 1.0]) == 1.0  # identical differences (scipy: nan)
    assert abl.paired_t_p_value([0.0, 1.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="one value per seed"):
        abl.paired_t_p_value([1.0, 2.0], [1.0])


def test_paired_bootstrap_resamples_seeds_jointly():
    # 3 pairs: a resample's mean difference is 1 with probability 1/27 > 2.5%, 3 likewise, so the 95% percentile
    # interval is exactly [1, 3] (an unpaired resampling of a and b separately would reach below 0)
    a, b = {0: 1.0, 1: 5.0, 2: 9.0}, {0: 2.0, 1: 7.0, 2: 12.0}
    assert abl.paired_bootstrap_ci(a, b) == [1.0, 3.0]
    assert abl.paired_bootstrap_ci(a, b) == abl.paired_bootstrap_ci(a, b)  # fixed RNG seed
    assert abl.paired_bootstrap_ci({0: 1.0, 3: 2.0}, {0: 2.0, 1: 3.0}) is None  # one common seed
    assert abl.paired_bootstrap_ci({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.5, 1: 0.6, 2: 0.7}) == pytest.approx([0.4, 0.4])


def rec(d: dict) -> dict:
    return {s: {"exact_match": v} for s, v in d.items()}


def test_pairing_matters_a_consistent_gain_under_large_seed_spread_is_real():
    # Seeds differ a lot (0.1 .. 0.9) but B beats A by 0.10-0.12 on every seed: the paired test sees it, an unpaired
    # (Welch) test on the same numbers does not.
    a, b = {0: 0.1, 1: 0.5, 2: 0.9}, {0: 0.2, 1: 0.61, 2: 1.02}
    welch = stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False).pvalue
    assert welch > 0.5
    c = abl.compare("c", "q", "A", "B", rec(a), rec(b), "exact_match")
    # differences [0.1, 0.11, 0.12]: mean 0.11, sd 0.01, t = 0.11 sqrt 3 / 0.01 on 2 df
    t = 0.11 * math.sqrt(3) / 0.01
    assert c["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6) and c["p_value"] < 0.01
    assert c["ci95"] == pytest.approx([0.1, 0.12]) and c["diff"] == pytest.approx(0.11)
    assert c["verdict"] == "real: B higher" and c["seeds"] == [0, 1, 2] and "paired t" in c["test"]
    # The same per-arm values with the pairing shuffled: no consistent difference any more.
    shuffled = abl.compare("c", "q", "A", "B", rec(a), rec({0: 1.02, 1: 0.2, 2: 0.61}), "exact_match")
    assert shuffled["diff"] == pytest.approx(c["diff"]) and shuffled["verdict"] == "within seed noise"
    assert shuffled["ci95"][0] < 0 < shuffled["ci95"][1]


def test_compare_uses_only_the_paired_seeds():
    c = abl.compare("c", "q", "A", "B", rec({0: 0.1, 1: 0.5, 2: 0.3}), rec({0: 0.4, 1: 0.2}), "exact_match")
    assert c["seeds"] == [0, 1] and c["n_a"] == c["n_b"] == 2 and c["mean_a"] == pytest.approx(0.3)
    single = abl.compare("c", "q", "A", "B", rec({0: 0.1}), rec({0: 0.2}), "exact_match")
    assert single["p_value"] is None and single["verdict"].startswith("not testable")


def test_arms_are_the_overlay_files_with_the_stage_of_their_base():
    assert set(abl.ARMS) == {p[:-5] for p in os.listdir(os.path.join(ROOT, "recipes", "ablations"))}
    mlp, top1 = abl.ARMS["s1_mlp"], abl.ARMS["s2_lora_r16_top1"]
    assert (mlp["stage"], mlp["base"], mlp["overlay"]) == (
        1,
        "recipes/smoke/stage1.yaml",
        "recipes/ablations/s1_mlp.yaml",
    )
    assert top1["stage"] == 2 and top1["init"] == abl.INIT_ARM == "s1_mlp"
    assert top1["keys"] == {"lora_r": 16, "lora_alpha": 32, "llm_top_k_blocks": 1}
    for a, b, _ in abl.COMPARISONS.values():
        assert a in abl.ARMS and b in abl.ARMS


def test_an_overlay_without_its_header_line_is_refused(tmp_path):
    (tmp_path / "x.yaml").write_text("# no command line\nlora_r: 4\n")
    with pytest.raises(ValueError, match=r"x\.yaml: its header needs the line"):
        abl.discover_arms(str(tmp_path))


def test_recompute_stats_renames_and_recomputes_from_the_per_seed_values(tmp_path):
    with open(os.path.join(ROOT, "tests", "fixtures", "ablations_fixture.json")) as f:
        old = json.load(f)
    for arm in old["arms"].values():  # an earlier file: final_loss, flags, unpaired statistics
        arm["flags"] = arm.pop("keys")
        for r in [*arm["seeds"].values(), arm["mean"], arm["std"]]:
            r["final_loss"] = r.pop("last_loss")
    old["comparisons"] = [{"name": "stale", "verdict": "made up"}]
    (tmp_path / "ablations.json").write_text(json.dumps(old))
    new = abl.recompute_stats(str(tmp_path))
    assert json.loads((tmp_path / "ablations.json").read_text()) == new
    assert new["arms"]["s1_mlp"]["overlay"] == "recipes/ablations/s1_mlp.yaml" and "flags" not in new["arms"]["s1_mlp"]
    assert new["arms"]["s1_mlp"]["mean"]["last_loss"] == pytest.approx(3.2)  # (3.1 + 3.2 + 3.3) / 3
    em = next(c for c in new["comparisons"] if c["name"] == "image_position" and c["metric"] == "exact_match")
    a = [r["exact_match"] for r in old["arms"]["s1_mlp"]["seeds"].values()]
    b = [r["exact_match"] for r in old["arms"]["s1_prefix"]["seeds"].values()]
    assert em["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert new["config"]["statistics"] == abl.STATISTICS and "ttest_rel" in abl.STATISTICS
    assert (tmp_path / "ablations_bars.png").stat().st_size > 1000
    old["arms"]["s1_mlp"]["flags"] = {"projector_type": "perceiver"}  # the overlay says otherwise now: refused
    (tmp_path / "ablations.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="rerun it"):
        abl.recompute_stats(str(tmp_path))


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


@pytest.mark.slow
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
            "last_loss",
            "train_samples_per_second",
            "seconds",
            "num_image_tokens",
        ):
            assert isinstance(run[field], (int, float)) and math.isfinite(run[field]), (name, field)
        assert 0 <= run["exact_match"] <= 1 and run["num_image_tokens"] == 64
        assert run["global_step"] == 2 and len(run["losses"]) == 2
        assert set(arm["mean"]) >= set(abl.METRICS)
    top1 = results["arms"]["s2_lora_r16_top1"]
    assert top1["overlay"] == "recipes/ablations/s2_lora_r16_top1.yaml" and top1["keys"]["lora_r"] == 16
    assert "ttest_rel" in cfg["statistics"]
    # the run really composed base + overlay: its resolved recipe has the overlay's keys over the smoke base's
    with open(out / "runs" / "s2_lora_r16_top1-seed0" / "recipe.yaml") as f:
        resolved = yaml.safe_load(f)
    alpha = resolved.get("lora_alpha", ModelArguments.lora_alpha)  # the resolved recipe omits default values
    assert (resolved["lora_r"], alpha, resolved["llm_top_k_blocks"]) == (16, 32, 1)
    assert resolved["lora_dropout"] == 0.0 and resolved["init_from"].endswith("s1_mlp-seed0")
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
