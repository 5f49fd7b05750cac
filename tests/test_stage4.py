"""Stage 4: the GRPO reward's exact values, on-policy preference pairs from run_eval predictions (kinds, balance,
anchors), and `trainer: dpo | grpo` recipes running through the same builder as SFT (data check, LoRA, checkpoints
with manifests, provenance, merged folder), with the recipe mistakes refused at parse time."""

import json
import math
import shutil
from collections import Counter

import pytest
import torch
import yaml
from safetensors.torch import load_file

import recipes
from data_scripts.make_preferences import build_preferences
from data_scripts.schema import ABSTAIN_ANSWER, load_dataset_dir
from metrics.rewards import make_abstention_reward
from recipes import checkpoints


def test_abstention_reward_values():
    reward = make_abstention_reward(0.5)
    said = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731  TRL's conversational completions
    completions = [said("Acme"), said("Zenith"), said("Unanswerable."), said(""), said("unanswerable"), said("12")]
    answers = [["acme"], ["acme"], ["acme"], ["acme"], [], []]
    answerable = [True, True, True, True, False, False]
    assert reward(completions, answers=answers, answerable=answerable) == [1.0, 0.0, -0.5, -0.5, 1.0, 0.0]
    assert reward(["Acme"], answers=[["Acme"]], answerable=[True]) == [1.0]  # plain-text completions too
    for cost in (0, -1):
        with pytest.raises(ValueError, match=f"abstain_cost={cost}: must be > 0"):
            make_abstention_reward(cost)


def fabricated_predictions(rows, path) -> dict:
    """Predictions as run_eval writes them: answerable rows alternate abstained / wrong / right; unanswerable rows
    alternate answered (a hallucination) / abstained. Returns {id: what the model said}."""
    said, lines = {}, []
    counters = Counter()
    for row_id, answerable, answers in zip(rows["id"], rows["answerable"], rows["answers"]):
        side = "a" if answerable else "u"
        turn = counters[side] % (3 if answerable else 2)
        counters[side] += 1
        if answerable:
            answer, score = [(ABSTAIN_ANSWER, 0.0), ("Zenith 99", 0.0), (answers[0], 1.0)][turn]
        else:
            answer, score = [("Zenith 42", 0.0), (ABSTAIN_ANSWER, 0.0)][turn]
        said[row_id] = answer
        lines.append({"id": row_id, "answer": answer, "score": score, "answerable": answerable, "image_error": None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return said


@pytest.fixture(scope="module")
def preferences(synthetic_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("preferences")
    train = load_dataset_dir(synthetic_set)["train"]
    said = fabricated_predictions(train, root / "predictions.jsonl")
    manifests = {
        anchor: build_preferences(synthetic_set, str(root / "predictions.jsonl"), str(root / anchor), anchor=anchor)
        for anchor in ("other_image", "own")
    }
    return {"dir": str(root / "other_image"), "root": root, "manifests": manifests, "said": said, "train": train}


@pytest.mark.parametrize("anchor", ["other_image", "own"])
def test_preference_pairs_are_on_policy_balanced_and_anchored(preferences, anchor):
    pairs, train, said = (
        load_dataset_dir(str(preferences["root"] / anchor))["train"],
        preferences["train"],
        preferences["said"],
    )
    manifest = preferences["manifests"][anchor]
    assert manifest["anchor"] == anchor
    rows = {row_id: i for i, row_id in enumerate(train["id"])}
    kinds = Counter(pairs["kind"])
    n = sum(pairs["answerable"])
    assert n == len(pairs) - n > 0  # balanced
    candidates = manifest["candidates"]
    # Each side in kind order: over-abstention before wrong answers, hallucinations before anchors.
    assert kinds["over_abstention"] == min(n, candidates["over_abstention"])
    assert kinds["wrong_answer"] == n - kinds["over_abstention"]
    assert kinds["hallucination"] == candidates["hallucination"] > 0 and kinds["abstention_anchor"] > 0
    assert kinds["hallucination"] + kinds["abstention_anchor"] == n
    assert manifest["pairs"] == {k: v for k, v in kinds.items() if v}
    answered, gold = {}, {}  # question -> the model's answers where it did answer / the gold answers of other images
    for i, row_id in enumerate(train["id"]):
        question = train["messages"][i][0]["content"][-1]["text"]
        if said[row_id] != ABSTAIN_ANSWER:
            answered.setdefault(question, Counter())[said[row_id]] += 1
        if train["answerable"][i]:
            gold.setdefault(question, set()).add(train["messages"][i][1]["content"][0]["text"])
    for pair in pairs:
        row_id = pair["id"].removesuffix(f"-{pair['kind']}")
        source = train[rows[row_id]]
        chosen, rejected = pair["chosen"][0]["content"][0]["text"], pair["rejected"][0]["content"][0]["text"]
        assert pair["prompt"] == source["messages"][:1] and pair["answerable"] == source["answerable"]
        assert chosen == source["messages"][1]["content"][0]["text"]  # the gold, or the abstention answer
        assert pair["images"][0].tobytes() == source["images"][0].tobytes()
        if pair["kind"] == "abstention_anchor":
            question = source["messages"][0]["content"][-1]["text"]
            assert said[row_id] == ABSTAIN_ANSWER and not source["answerable"]
            if anchor == "own":  # the model's own most frequent answer to this wording elsewhere
                assert rejected == answered[question].most_common(1)[0][0]
            else:  # the gold answer of another image to the same question
                assert rejected in gold[question]
        else:
            assert rejected == said[row_id] and chosen != rejected


def stage4_recipe(tmp_path, init, data, kind, **changes) -> str:
    recipe = {
        "trainer": kind,
        "init_from": init,
        "train_projector": False,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "datasets": [{"path": data, "split": "train"}],
        "eval_split": None,
        "max_train_samples": 8,
        "output_dir": str(tmp_path / kind),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "save_total_limit": 1,
        "report_to": "none",
        "seed": 0,
        **({"loss_type": ["sigmoid", "sft"]} if kind == "dpo" else {}),
        **({"num_generations": 2, "max_completion_length": 4} if kind == "grpo" else {}),
        **changes,
    }
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    return str(path)


@pytest.fixture(scope="module")
def stage2_model(save_quiet_model, tmp_path_factory):
    return save_quiet_model(tmp_path_factory.mktemp("stage4") / "stage2")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_stage4_trains_through_the_builder(kind, stage2_model, preferences, synthetic_set, tmp_path):
    data = preferences["dir"] if kind == "dpo" else synthetic_set
    summary = recipes.run([stage4_recipe(tmp_path, stage2_model, data, kind)])
    out = tmp_path / kind
    assert summary["global_step"] == 2 and all(math.isfinite(loss) for _, loss in summary["losses"])
    assert summary["collator"]["seen"] >= 8 and summary["collator"]["skipped"] == {}
    (report,) = json.loads((out / "data_check.json").read_text())["splits"]
    assert report["kept"] == report["rows"] == 8  # every row checked with the collator's rules
    assert checkpoints.last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")  # guarded, rotated
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    logged = {key for entry in history for key in entry}
    assert ("rewards/margins" in logged) if kind == "dpo" else ("reward" in logged)
    before = load_file(f"{stage2_model}/model.safetensors")
    after = load_file(str(out / "merged" / "model.safetensors"))
    changed = [k for k in before if "language_model.layers" in k and not torch.equal(before[k], after[k])]
    # The LoRA update was merged into the LLM. GRPO learns only from groups whose rewards differ: the random tiny
    # model's samples all score 0, so there its advantages, and its update, are exactly zero.
    learned = kind == "dpo" or any(e.get("reward_std", 0) > 0 for e in history)
    assert bool(changed) == learned
    assert all(torch.equal(before[k], after[k]) for k in before if "vision_tower" in k or "projector" in k)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["trainer"] == kind


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        ("dpo", {"init_from": None, "vision_name": "v", "llm_name": "l"}, "`trainer: dpo` trains a trained model"),
        ("dpo", {"trainer": "ppo"}, "'trainer' must be one of ['dpo', 'grpo', 'sft'], got 'ppo'"),
        ("grpo", {"abstain_cost": 0.0}, "'abstain_cost' must be > 0"),
    ],
)
def test_stage4_recipe_mistakes_are_refused_at_parse_time(tmp_path, kind, changes, message):
    recipe = stage4_recipe(tmp_path, "stage2", "prefs", kind, **changes)
    with pytest.raises(ValueError) as error:
        recipes.parse_recipe([recipe])
    assert message in str(error.value)


def test_dpo_on_rows_that_are_not_preference_pairs_stops_before_the_model(stage2_model, synthetic_set, tmp_path):
    with pytest.raises(ValueError, match="bad_messages"):
        recipes.run([stage4_recipe(tmp_path, stage2_model, synthetic_set, "dpo")])
    report = json.loads((tmp_path / "dpo" / "data_check.json").read_text())["splits"][0]
    assert report["dropped"] == {"bad_messages": 8}
    assert "not a preference row" in report["rows_dropped"][0]["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_stage4_resumes_to_the_same_run(kind, stage2_model, preferences, synthetic_set, tmp_path):
    """3 steps straight through vs stopped after the save of step 2 and resumed (`resume_from_checkpoint: true`): the
    same step-3 log (GRPO's sampled completions included: the RNG state comes back) and the same merged weights."""
    data = preferences["dir"] if kind == "dpo" else synthetic_set
    runs = {}
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
        runs[name] = stage4_recipe(tmp_path / name, stage2_model, data, kind, max_steps=3, save_total_limit=None)
    recipes.run([runs["straight"]])
    straight, resumed = tmp_path / "straight" / kind, tmp_path / "resumed" / kind
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")  # what a run stopped after step 2 leaves
    summary = recipes.run([runs["resumed"], "--resume_from_checkpoint", "true"])
    assert summary["resumed_from"] == str(resumed / "checkpoint-2") and summary["global_step"] == 3

    def step3(folder):
        history = json.loads((folder / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
        (entry,) = [e for e in history if e.get("step") == 3 and "loss" in e]
        return {k: v for k, v in entry.items() if "time" not in k and "per_second" not in k}

    assert step3(resumed) == step3(straight)
    before, after = (load_file(str(f / "merged" / "model.safetensors")) for f in (straight, resumed))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
