"""scripts/ablations.py: arms discovered from recipes/ablations/*.yaml, the paired statistics against hand-computed
values (and an example where pairing decides the verdict), recomputing an old results file, and a 1-seed, 2-step run
of the baseline comparison (stage 1 -> stage 2 through the real run_sft / run_eval subprocesses) that must write a
valid ablations.json and its plots."""

import json
import math
import os
import shutil

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
    for trainer in ("dpo", "grpo"):  # stage 4 continues from the baseline's stage 2 of the same seed
        arm = abl.ARMS[f"s4_{trainer}"]
        assert (arm["stage"], arm["trainer"], arm["base"]) == (4, trainer, f"recipes/smoke/stage4_{trainer}.yaml")
        assert arm["init"] == abl.INIT_ARMS[4] == "s2_lora_r16_top1" and arm["keys"]["lora_r"] == 16
        assert abl.COMPARISONS[f"stage4_{trainer}"][:2] == ("s2_lora_r16_top1", f"s4_{trainer}")
        assert f"s4_{trainer}" not in abl.DEFAULT_ARMS  # opt-in: --only stage4_dpo stage4_grpo


def test_stage4_arms_need_the_stage2_arm_they_continue_from(tmp_path, monkeypatch):
    import ablation_arms

    monkeypatch.setattr(ablation_arms, "ROOT", str(tmp_path))
    folder = tmp_path / "recipes" / "ablations"
    folder.mkdir(parents=True)
    header = "#   accelerate launch run_sft.py recipes/smoke/stage{} recipes/ablations/{}.yaml\n"
    (folder / "s4_x.yaml").write_text(header.format("4_grpo.yaml", "s4_x") + "lora_r: 4\n")
    with pytest.raises(ValueError, match="Stage-4 arms continue from 's2_lora_r16_top1', which is not a stage-2 arm"):
        ablation_arms.discover_arms(str(folder))
    (folder / "s2_lora_r16_top1.yaml").write_text(header.format("2.yaml", "s2_lora_r16_top1"))
    (folder / "s1_mlp.yaml").write_text(header.format("1.yaml", "s1_mlp"))
    arms = ablation_arms.discover_arms(str(folder))
    assert arms["s4_x"] | {"keys": None} == {
        "stage": 4,
        "base": "recipes/smoke/stage4_grpo.yaml",
        "overlay": "recipes/ablations/s4_x.yaml",
        "keys": None,
        "init": "s2_lora_r16_top1",
        "trainer": "grpo",
    }


def stage4_stats(**changes) -> dict:
    """Comparison numbers that pass every check, each by its margin exactly, the differences as float means give
    them (0.25 - 0.3 is -0.04999999999999999); changes: metric=(mean, diff, ci95)."""
    stats = {
        "hallucination_rate": (0.02, 0.0, [0.0, 0.0]),
        "contrastive_hallucination_rate": (0.02, 0.0, [0.0, 0.0]),
        "exact_match": (0.19, 0.19 - 0.2, [-0.02, 0.0]),
        "phi@1": (0.2, 0.0, [-0.01, 0.01]),
        "answerable_abstain_rate": (0.25, 0.25 - 0.3, [-0.07, -0.03]),
        "model_abstain_f1": (0.8, 0.02, [0.01, 0.03]),
    }
    stats.update(changes)
    return {k: {"mean": m, "diff": d, "ci95": ci} for k, (m, d, ci) in stats.items()}


def test_abstention_checks_are_the_issues_thresholds():
    checks = abl.abstention_checks(stage4_stats())
    assert checks["do_no_harm"] and checks["gain"] and checks["gain_answerable_abstain_rate_-0.05"]
    assert not checks["gain_model_abstain_f1_+0.03"]
    harms = {
        "hallucination_rate_at_most_0.02": {"hallucination_rate": (0.021, 0.021, [0.0, 0.04])},
        "contrastive_hallucination_not_higher": {"contrastive_hallucination_rate": (0.03, 0.011, [0.0, 0.02])},
        "exact_match_down_at_most_0.01": {"exact_match": (0.19, -0.0101, [-0.02, 0.0])},
        "phi@1_not_lower": {"phi@1": (0.19, -0.001, [-0.002, 0.0])},
    }
    for check, change in harms.items():
        checks = abl.abstention_checks(stage4_stats(**change))
        assert not checks[check] and not checks["do_no_harm"] and checks["gain"], check
    # short of the margin, or by it but with the interval touching 0, is no gain; the F1 line counts on its own
    assert not abl.abstention_checks(stage4_stats(answerable_abstain_rate=(0.25, -0.049, [-0.07, -0.03])))["gain"]
    assert not abl.abstention_checks(stage4_stats(answerable_abstain_rate=(0.2, -0.06, [-0.12, 0.0])))["gain"]
    checks = abl.abstention_checks(
        stage4_stats(answerable_abstain_rate=(0.2, 0.0, None), model_abstain_f1=(0.8, 0.03, [0.01, 0.05]))
    )
    assert checks["gain"] and checks["gain_model_abstain_f1_+0.03"]
    # the model's own over-abstention is reported, not a way to pass: the issue's over-abstention is run_eval's
    assert set(abl.GAINS) == {"answerable_abstain_rate", "model_abstain_f1"}


def test_a_record_is_stale_when_its_recipes_or_the_run_it_continued_change(tmp_path, monkeypatch):
    arm = abl.ARMS["s4_dpo"]
    for rel in (arm["base"], arm["overlay"]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), tmp_path / rel)
    monkeypatch.setattr(abl, "ROOT", str(tmp_path))
    out, stage2 = str(tmp_path / "out"), tmp_path / "out" / "runs" / "s2_lora_r16_top1-seed0"
    stage2.mkdir(parents=True)
    (stage2 / "train_results.json").write_text('{"last_loss": 1.0}')
    record = {"budget": abl.BUDGET, "overlay": arm["overlay"], "keys": arm["keys"], **abl.provenance(arm, 0, out)}
    assert abl.is_current(record, arm, abl.BUDGET, 0, out)
    assert not abl.is_current(record, arm, abl.QUICK, 0, out)  # another budget
    assert not abl.is_current(record, arm, abl.BUDGET, 1, out)  # seed 1's stage 2 never ran
    (stage2 / "train_results.json").write_text('{"last_loss": 1.1}')  # stage 2 retrained
    assert not abl.is_current(record, arm, abl.BUDGET, 0, out)
    (stage2 / "train_results.json").write_text('{"last_loss": 1.0}')
    assert abl.is_current(record, arm, abl.BUDGET, 0, out)
    with open(tmp_path / arm["base"], "a") as f:  # the smoke recipe under the arm changed (its overlay did not)
        f.write("beta: 0.25\n")
    assert not abl.is_current(record, arm, abl.BUDGET, 0, out)


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


# After the baseline's test, which reads ablations.json as the baseline alone wrote it.
@pytest.fixture(scope="module")
def quick_stage4(quick_run):
    """The stage-4 arms added to the same folder: the baseline's runs are reused, not retrained."""
    _, out = quick_run
    stage2 = out / "runs" / "s2_lora_r16_top1-seed0"
    before = [(stage2 / f).stat().st_mtime_ns for f in ("train_results.json", "merged/model.safetensors")]
    rc = abl.main(["--out", str(out), "--quick", "--only", "stage4_dpo", "stage4_grpo"])
    after = [(stage2 / f).stat().st_mtime_ns for f in ("train_results.json", "merged/model.safetensors")]
    return rc, out, before == after


@pytest.mark.slow
def test_quick_stage4_arms_pair_with_their_seeds_stage2(quick_stage4):
    rc, out, stage2_kept = quick_stage4
    assert rc == 0, (out / "ablations.json").read_text()[-2000:]
    results = json.loads((out / "ablations.json").read_text())
    assert set(results["arms"]) == {"s1_mlp", "s2_lora_r16_top1", "s4_dpo", "s4_grpo"}
    runs = out / "runs"
    for trainer in ("dpo", "grpo"):
        with open(runs / f"s4_{trainer}-seed0" / "recipe.yaml") as f:
            resolved = yaml.safe_load(f)
        assert resolved["trainer"] == trainer and resolved["init_from"] == str(
            runs / "s2_lora_r16_top1-seed0" / "merged"
        )
        rows = [c for c in results["comparisons"] if c["name"] == f"stage4_{trainer}"]
        assert [c["metric"] for c in rows] == list(abl.STAGE4_METRICS)  # no loss: DPO / GRPO losses are not SFT's
        assert all(c["a"] == "s2_lora_r16_top1" and c["b"] == f"s4_{trainer}" and c["seeds"] == [0] for c in rows)
        assert set(results["stage4_checks"][f"stage4_{trainer}"]) >= {"do_no_harm", "gain"}
    # DPO trained on this seed's pairs, made from stage 2's answers on (part of) the train split
    assert yaml.safe_load((runs / "s4_dpo-seed0" / "preferences.yaml").read_text()) == {
        "datasets": [{"path": str(runs / "s4_dpo-seed0" / "preferences"), "split": "train"}]
    }
    manifest = json.loads((runs / "s4_dpo-seed0" / "preferences" / "manifest.json").read_text())
    assert manifest["anchor"] == "other_image" and manifest["split"] == "train"
    assert results["arms"]["s4_dpo"]["seeds"]["0"]["preference_pairs"] == manifest["pairs"]
    predictions = (runs / "s2_lora_r16_top1-seed0" / "eval-train" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == abl.QUICK["train_eval_max_samples"]
    # stage 2 is scored on the contrastive set once, its record extended in place, its training not rerun
    s2 = json.loads((runs / "s2_lora_r16_top1-seed0" / "record.json").read_text())
    contrastive = json.loads((runs / "s2_lora_r16_top1-seed0" / "eval-contrastive" / "eval_results.json").read_text())
    assert s2["contrastive_hallucination_rate"] == contrastive["metrics"]["hallucination_rate"]
    assert contrastive["dataset_name"] == "synthetic_contrastive"
    assert stage2_kept  # the baseline's stage 2 was reused, not retrained
    assert (out / "ablations_losses.png").stat().st_size > 1000
