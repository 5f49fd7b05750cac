"""The data check before training: a 200-row run with one corrupt image, one truncated PNG and one over-long row trains
on the other 197 and names the three in data_check.json; too many bad rows refuse the run before any model is built;
verdicts are cached by dataset fingerprint."""

import json

import datasets
import pytest
import yaml

import recipes
from data_scripts import check_rows as check_rows_module
from data_scripts.check_rows import check_rows
from data_scripts.make_synthetic import build_synthetic
from data_scripts.schema import load_dataset_dir
from processing.collator import MiniLlavaDataCollator

N_ROWS = 200
BAD = {"corrupt": 17, "truncated": 101, "long": 150}  # row index -> what is wrong with it


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> str:
    """200 train rows in our schema (the synthetic rows repeated, ids unique) with three bad ones."""
    root = tmp_path_factory.mktemp("bad_data")
    build_synthetic(str(root / "synthetic"), n=60, seed=1)
    train = load_dataset_dir(str(root / "synthetic"))["train"]
    encoded = train.cast_column("images", datasets.List(datasets.Image(decode=False)))  # bytes, to break some
    rows = [dict(encoded[i % len(train)], id=f"row-{i:03d}") for i in range(N_ROWS)]
    png = rows[BAD["truncated"]]["images"][0]["bytes"]
    rows[BAD["corrupt"]]["images"] = [{"bytes": bytes(range(256)) * 8, "path": None}]
    rows[BAD["truncated"]]["images"] = [{"bytes": png[: len(png) // 3], "path": None}]
    long_answer = " ".join(["Acme Corp invoice total"] * 40)
    rows[BAD["long"]]["messages"][1]["content"][0]["text"] = long_answer
    split = datasets.Dataset.from_list(rows, features=train.features)  # saved as make_synthetic saves: decoded
    out = root / "bad"
    datasets.DatasetDict({"train": split}).save_to_disk(str(out))
    return str(out)


def write_recipe(path, backbones, data, output_dir, **overrides) -> str:
    recipe = {
        "vision_name": backbones["vision-siglip"],
        "llm_name": backbones["llm-qwen2"],
        "datasets": [{"path": data, "split": "train"}],
        "eval_split": None,
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "max_length": 160,  # normal rows are ~100 tokens; the long answer pushes one past it
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.slow
def test_run_trains_on_the_good_rows_and_names_the_bad_ones(backbones, bad_data, tmp_path):
    out = tmp_path / "run"
    summary = recipes.run([write_recipe(tmp_path / "r.yaml", backbones, bad_data, out)])
    assert summary["train_rows"] == N_ROWS - 3
    assert sum(summary["collator"]["skipped"].values()) == 0 and summary["collator"]["all_masked"] == 0
    report = json.loads((out / "data_check.json").read_text())
    (train,) = report["splits"]
    assert (train["rows"], train["kept"]) == (N_ROWS, N_ROWS - 3)
    assert train["dropped"] == {"unreadable_image": 2, "too_long": 1}
    named = {r["id"]: r["reason"] for r in train["rows_dropped"]}
    assert named == {"row-017": "unreadable_image", "row-101": "unreadable_image", "row-150": "too_long"}
    assert "max_length=160" in next(r["detail"] for r in train["rows_dropped"] if r["reason"] == "too_long")


@pytest.mark.slow
def test_more_bad_rows_than_max_skip_fraction_refuse_the_run_before_any_model(
    backbones, bad_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(recipes.builder, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    recipe = write_recipe(tmp_path / "r.yaml", backbones, bad_data, tmp_path / "run", max_skip_fraction=0.01)
    with pytest.raises(ValueError, match=r"3 of 200 rows dropped \(1\.5%\).*more than max_skip_fraction=1\.0%"):
        recipes.run([recipe])
    assert json.loads((tmp_path / "run" / "data_check.json").read_text())["splits"][0]["kept"] == N_ROWS - 3


def test_verdicts_are_cached_by_fingerprint_and_settings(bad_data, tmp_path):
    ds = load_dataset_dir(bad_data)["train"].select(range(20))
    calls = []

    def check(row):
        calls.append(row["id"])
        return ("bad", "test") if row["id"] == "row-017" else None

    kept, report = check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path))
    assert len(calls) == 20 and len(kept) == 19 and report["dropped"] == {"bad": 1}
    again, cached = check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path))
    assert len(calls) == 20 and cached == report and again["id"] == kept["id"]
    check_rows(ds, check, name="train", settings="b", cache_dir=str(tmp_path))  # other settings: checked again
    assert len(calls) == 40


@pytest.mark.parametrize("damage", ["empty", "cut short", "another split's"])
def test_an_unreadable_cache_is_discarded_with_a_warning_and_rewritten(bad_data, tmp_path, damage, caplog):
    """A kill during an older plain write left an empty or cut file: every later run crashed with JSONDecodeError."""
    ds = load_dataset_dir(bad_data)["train"].select(range(20))
    check = lambda row: ("bad", "test") if row["id"] == "row-017" else None  # noqa: E731
    _, report = check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path))
    (cache,) = tmp_path.glob("train-*.json")
    text = cache.read_text()
    bad = {"empty": "", "cut short": text[: len(text) // 2], "another split's": json.dumps({**report, "rows": 7})}
    cache.write_text(bad[damage])
    kept, again = check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path))
    assert again == report and len(kept) == 19
    assert f"Discarding the data-check cache {cache}" in caplog.text
    assert json.loads(cache.read_text()) == report  # rewritten whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # no temporary file left


def test_cache_writes_are_atomic_and_only_the_writer_writes(bad_data, tmp_path, monkeypatch):
    ds = load_dataset_dir(bad_data)["train"].select(range(20))
    check = lambda row: None  # noqa: E731
    check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path / "rank1"), write_cache=False)
    assert not (tmp_path / "rank1").exists()  # another rank: checks, writes nothing
    _, report = check_rows(ds, check, name="train", settings="a", cache_dir=str(tmp_path))
    (cache,) = tmp_path.glob("train-*.json")

    def killed(obj, f, **kwargs):  # a kill while writing: half the text on disk, then nothing
        f.write(json.dumps(obj)[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(check_rows_module.json, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        check_rows_module.write_json_atomically(str(cache), {"rows": 0})
    assert json.loads(cache.read_text()) == report  # the old file, whole


@pytest.mark.slow
def test_without_max_length_rows_beyond_the_llms_context_are_dropped(backbones, bad_data, tmp_path):
    """`max_length: null`: the LLM's own context (4096 for the tiny Qwen2) is the limit, so a 20,000-token row is
    dropped before training instead of allocating tens of GB at its first step."""
    path = write_recipe(tmp_path / "r.yaml", backbones, bad_data, tmp_path / "run", max_length=None)
    model_args, data_args, training_args = recipes.parse_recipe([path])
    processor, config = recipes.build_processor(model_args)
    collator = recipes.build_collator(model_args, data_args, training_args, processor, config)
    assert collator.max_length == config.text_config.max_position_embeddings == 4096
    row = dict(load_dataset_dir(bad_data)["train"][0])
    row["messages"][1]["content"][0]["text"] = "Acme Corp invoice total " * 5000
    assert collator.check_row(row)[0] == "too_long"


@pytest.mark.slow
def test_the_recipes_max_length_and_too_long_policy_change_what_trains(backbones, bad_data, tmp_path):
    """The long row (row-150, its answer past max_length=160) is dropped with `too_long: skip` and trains, cut at
    max_length, with `too_long: truncate`: the data check, the counters and the losses all see the difference."""
    runs = {}
    for policy in ("skip", "truncate"):
        out = tmp_path / policy
        runs[policy] = recipes.run(
            [
                write_recipe(
                    tmp_path / f"{policy}.yaml", backbones, bad_data, out, too_long=policy, data_seed=0, max_steps=3
                )
            ]
        )
        runs[policy]["report"] = json.loads((out / "data_check.json").read_text())["splits"][0]
    assert runs["skip"]["report"]["dropped"] == {"unreadable_image": 2, "too_long": 1}
    assert runs["truncate"]["report"]["dropped"] == {"unreadable_image": 2}  # kept, to be cut
    assert (runs["skip"]["train_rows"], runs["truncate"]["train_rows"]) == (N_ROWS - 3, N_ROWS - 2)
    assert runs["skip"]["collator"].get("truncated", 0) == 0
    # the same order of the kept rows (data_seed); the truncate run trains on 197 + 1 rows: its batches differ
    assert runs["skip"]["losses"] != runs["truncate"]["losses"]


@pytest.mark.slow
def test_cached_verdicts_follow_the_anyres_budget(build, synthetic_set, tmp_path):
    """A verdict depends on how many placeholders a row takes: changing max_image_tokens checks the rows again."""
    from trl import SFTConfig

    from recipes.builder import check_data

    _, processor = build(max_tiles=4)
    collator = MiniLlavaDataCollator(processor)
    rows = load_dataset_dir(synthetic_set)["train"].select(range(4))
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    checked = []
    collator.check_row = lambda row: checked.append(row["id"])  # every row passes; we count the checks

    def run() -> int:
        before = len(checked)
        check_data({"train": rows}, collator, args, recipes.DataArguments())
        return len(checked) - before

    assert run() == 4 and run() == 0  # the second check is served from the cache
    processor.max_image_tokens = 500
    assert run() == 4  # another budget: checked again
