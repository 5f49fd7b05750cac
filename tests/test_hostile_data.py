"""A hostile data set, as a careless converter or a damaged disk leaves one: training keeps exactly the good rows (odd
but valid images included) and names every bad one with its reason in data_check.json; run_eval scores the rows it
cannot feed the model as failures, named with their reason, and answers the rest."""

import io
import json
import random

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

import recipes
from data_scripts.schema import encode_png, load_dataset_dir
from metrics import evaluation

GOOD_ROWS = 12  # plain synthetic rows


def odd_images() -> dict:
    """Valid images in modes and shapes a naive `convert("RGB")` or resize gets wrong: each must train."""
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 80, 200, 10)).save(cmyk, format="JPEG")
    palette = Image.new("P", (64, 48), 0)
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.paste(1, (8, 8, 40, 20))
    palette.info["transparency"] = 0
    sixteen = Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16))
    return {
        "cmyk": cmyk.getvalue(),
        "palette_alpha": encode_png(palette),
        "one_pixel": encode_png(Image.new("RGB", (1, 1), "white")),
        "banner_10000x40": encode_png(Image.new("RGB", (10000, 40), "white")),
        "sixteen_bit": encode_png(sixteen),
    }


def decompression_bomb() -> bytes:
    """225 M pixels (PIL refuses above 2 x 89.5 M) in a few tens of KB: a 1-bit blank page."""
    return encode_png(Image.new("1", (15000, 15000), 1))


def hostile_rows(train) -> tuple[list[dict], dict, dict]:
    """(rows, {id: training reason} of the bad ones, {id: run_eval error tag} of those eval cannot feed)."""
    encoded = train.cast_column("images", datasets.List(datasets.Image(decode=False)))
    base = [dict(encoded[i]) for i in range(GOOD_ROWS + 20)]
    rows, bad, eval_bad = base[:GOOD_ROWS], {}, {}
    spare = iter(base[GOOD_ROWS:])
    image = base[0]["images"][0]["bytes"]

    def add(name: str, reason: str | None, eval_tag: str | None = None, **change):
        row = {**next(spare), "id": name, **change}
        rows.append(row)
        if reason:
            bad[name] = reason
        if eval_tag:
            eval_bad[name] = eval_tag

    def stored(data):
        return [{"bytes": data, "path": None}]

    for name, data in odd_images().items():
        add(name, None, images=stored(data))
    add("corrupt", "unreadable_image", "unreadable_image", images=stored(random.Random(0).randbytes(3000)))
    add("truncated", "unreadable_image", "unreadable_image", images=stored(image[: len(image) // 2]))
    add("zero_byte", "unreadable_image", "unreadable_image", images=stored(b""))
    add("none_image", "unreadable_image", "unreadable_image", images=[None])
    add("bomb", "unreadable_image", "unreadable_image", images=stored(decompression_bomb()))
    add("two_images_one_part", "image_count_mismatch", "image_count_mismatch", images=stored(image) * 2)
    add("no_image_one_part", "image_count_mismatch", "image_count_mismatch", images=[])
    long_row = next(spare)
    long_row["messages"][1]["content"][0]["text"] = " ".join(["Acme Corp invoice total"] * 60)
    add("over_long", "too_long", messages=long_row["messages"])  # eval reads the question only: answered
    add("no_assistant_turn", "all_masked", messages=base[1]["messages"][:1])  # eval needs no answer turn
    return rows, bad, eval_bad


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, synthetic_set):
    root = tmp_path_factory.mktemp("hostile")
    train = load_dataset_dir(synthetic_set)["train"]
    rows, bad, eval_bad = hostile_rows(train)
    features = train.features.copy()
    features["images"] = datasets.List(datasets.Image(decode=False))  # as stored: decoding is the collator's job
    split = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(root / "data"))
    return {"data": str(root / "data"), "rows": rows, "bad": bad, "eval_bad": eval_bad}


@pytest.mark.slow
def test_training_keeps_every_good_row_and_names_every_bad_one(hostile, backbones, tmp_path):
    out = tmp_path / "run"
    recipe = {
        "vision_name": backbones["vision-siglip"],
        "llm_name": backbones["llm-qwen2"],
        "datasets": [{"path": hostile["data"], "split": "train"}],
        "eval_split": None,
        "output_dir": str(out),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "max_length": 160,  # normal rows take ~100 tokens; the long answer ~400
        "max_skip_fraction": 0.5,  # a third of this set is bad on purpose
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "seed": 0,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    summary = recipes.run([str(tmp_path / "r.yaml")])

    (report,) = json.loads((out / "data_check.json").read_text())["splits"]
    assert {r["id"]: r["reason"] for r in report["rows_dropped"]} == hostile["bad"]
    good = len(hostile["rows"]) - len(hostile["bad"])
    assert (report["rows"], report["kept"], summary["train_rows"]) == (len(hostile["rows"]), good, good)
    # Every good row (the odd images included) reached the collator once and trained; nothing was dropped there.
    assert summary["collator"]["seen"] == summary["collator"]["kept"] == good
    assert summary["collator"]["skipped"] == {} and summary["collator"]["all_masked"] == 0
    details = {r["id"]: r["detail"] for r in report["rows_dropped"]}
    assert "0 bytes" in details["zero_byte"] and "DecompressionBombError" in details["bomb"]
    assert details["two_images_one_part"] == "1 image part(s) but 2 image(s)"
    assert details["no_image_one_part"] == "1 image part(s) but 0 image(s)"


@pytest.mark.slow
def test_run_eval_scores_what_it_cannot_feed_as_named_failures_and_answers_the_rest(
    hostile, save_quiet_model, tmp_path, capsys
):
    model = save_quiet_model(tmp_path / "model")
    out = tmp_path / "eval"
    args = ["--model", model, "--dataset", hostile["data"], "--split", "test", "--output_dir", str(out)]
    results = evaluation.main([*args, "--max_new_tokens", "3", "--batch_size", "4", "--threshold", "0.5"])
    log = capsys.readouterr().out
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in hostile["rows"]]  # every row, in order
    failed = {r["id"]: r["error_tag"] for r in records if r["image_error"]}
    assert failed == hostile["eval_bad"]
    for row_id, tag in failed.items():
        assert f"row {row_id!r}: {tag.replace('_', ' ')}, scored as a failure" in log
    assert results["counts"]["unreadable_images"] == len(hostile["eval_bad"])
    answered = [r for r in records if r["id"] not in failed]
    assert len(answered) == len(hostile["rows"]) - len(failed) and all(r["answer_tokens"] > 0 for r in answered)
