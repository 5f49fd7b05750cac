"""run_eval.py survives bad data and crashes: a corrupt, truncated or missing image is scored as an `unreadable_image`
failure (named in the log, predictions.jsonl and the gallery) while the other rows are evaluated as usual; predictions
are written batch by batch, so a crash leaves the finished rows, and a rerun starts over."""

import json
import random
from html.parser import HTMLParser

import pytest
from datasets import Image, List
from PIL import Image as PILImage

from data_scripts.schema import encode_png, load_dataset_dir, save_dataset_dict
from metrics import evaluation
from metrics.gallery import render_gallery, select_failures

TEST_ROWS, VALIDATION_ROWS = 8, 4
# Row index -> what replaces its image: row 2 is answerable (counting), row 6 unanswerable (synthetic, seed 0).
BAD_TEST, BAD_VALIDATION = {2: "truncated", 6: "random"}, {1: "missing"}


def _png(color="white") -> bytes:
    return encode_png(PILImage.new("RGB", (64, 48), color))


def _broken(kind: str, png: bytes):
    if kind == "random":
        return [{"bytes": random.Random(0).randbytes(2000), "path": None}]
    if kind == "truncated":
        return [{"bytes": png[: len(png) // 2], "path": None}]
    return [None]  # an image entry with nothing in it


def _with_bad_images(ds, bad: dict):
    rows = ds.cast_column("images", List(Image(decode=False)))
    rows = rows.map(
        lambda row, i: {"images": _broken(bad[i], row["images"][0]["bytes"]) if i in bad else row["images"]},
        with_indices=True,
    )
    return rows.cast_column("images", List(Image()))  # stored as the schema says: decoding images on access


@pytest.fixture(scope="module")
def datasets_dirs(tmp_path_factory, synthetic_set):
    """(clean folder, folder with bad images, the bad rows' ids): test = 8 rows, validation = 4 rows."""
    root = tmp_path_factory.mktemp("robust_data")
    rows = load_dataset_dir(synthetic_set)["train"]
    clean = {"test": rows.select(range(TEST_ROWS)), "validation": rows.select(range(TEST_ROWS, TEST_ROWS + 4))}
    save_dataset_dict(clean, str(root / "clean"), {"converter": "synthetic"})
    bad = {
        "test": _with_bad_images(clean["test"], BAD_TEST),
        "validation": _with_bad_images(clean["validation"], BAD_VALIDATION),
    }
    save_dataset_dict(bad, str(root / "bad"), {"converter": "synthetic"})
    ids = {
        split: [clean[split]["id"][i] for i in rows]
        for split, rows in (("test", BAD_TEST), ("validation", BAD_VALIDATION))
    }
    return str(root / "clean"), str(root / "bad"), ids


@pytest.fixture(scope="module")
def model_dir(save_quiet_model, tmp_path_factory):
    return save_quiet_model(tmp_path_factory.mktemp("robust_model") / "tiny")


def _args(model_dir, dataset, out, *extra):
    return [
        *("--model", model_dir, "--dataset", dataset, "--output_dir", str(out)),
        *("--max_new_tokens", "3", "--batch_size", "4", "--gallery_size", "3", *extra),
    ]


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_read_images_names_what_cannot_be_decoded(tmp_path):
    png = _png()
    images, error = evaluation.read_images([{"bytes": png, "path": None}])
    assert error is None and images[0].size == (64, 48)
    cases = {
        "UnidentifiedImageError": _broken("random", png),
        "truncated": _broken("truncated", png),
        "no image": [None],
        "ValueError: the row has no image": [],
        "FileNotFoundError": [{"bytes": None, "path": str(tmp_path / "gone.png")}],
        "ValueError: the image holds 0 bytes": [{"bytes": b"", "path": None}],  # a 0-byte file, not "no bytes"
        "ValueError: the image has neither bytes nor a path": [{"bytes": None, "path": None}],
    }
    for expected, values in cases.items():
        images, error = evaluation.read_images(values)
        assert images is None and expected in error, (expected, error)


class _Cases(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.placeholders, self._case = {}, {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "case":
            self._case = attrs["data-id"]
            self.tags[self._case] = attrs["data-tag"]
        elif tag == "div" and attrs.get("class") == "no-image":
            self.placeholders[self._case] = True


@pytest.mark.slow
def test_unreadable_rows_are_scored_as_failures_and_the_rest_as_usual(datasets_dirs, model_dir, tmp_path, capsys):
    clean_dir, bad_dir, bad_ids = datasets_dirs
    extra = ("--threshold_split", "validation")
    results = evaluation.main(_args(model_dir, bad_dir, tmp_path / "bad", *extra))
    log = capsys.readouterr().out
    clean = evaluation.main(_args(model_dir, clean_dir, tmp_path / "clean", *extra))
    records = _jsonl(tmp_path / "bad" / "predictions.jsonl")
    fit_records = _jsonl(tmp_path / "bad" / "threshold_predictions.jsonl")
    assert [r["id"] for r in records] == load_dataset_dir(clean_dir)["test"]["id"]  # every row, in order

    unreadable = {r["id"]: r for r in records + fit_records if r["error_tag"] == "unreadable_image"}
    assert sorted(unreadable) == sorted(bad_ids["test"] + bad_ids["validation"])
    for row_id, r in unreadable.items():
        assert f"row {row_id!r}: unreadable image" in log
        assert (r["answer"], r["confidence"], r["answer_tokens"], r["abstained"]) == ("", 0.0, 0, False)
        assert (r["score"], r["final_score"]) == (0.0, 0.0)
    assert unreadable[bad_ids["test"][1]]["image_error"] == "UnidentifiedImageError: cannot identify image file"
    assert "truncated" in unreadable[bad_ids["test"][0]]["image_error"]
    assert not unreadable[bad_ids["test"][1]]["answerable"]  # no free correct abstention on an unanswerable row

    # The readable rows got the answers a clean run gives them (the bad rows only left their batch).
    by_id = {r["id"]: r for r in _jsonl(tmp_path / "clean" / "threshold_predictions.jsonl")}
    by_id.update({r["id"]: r for r in _jsonl(tmp_path / "clean" / "predictions.jsonl")})
    assert any(r["answer"] for r in records if r["id"] not in unreadable)  # real text to compare
    for r in records + fit_records:
        if r["id"] not in unreadable:
            assert r["image_error"] is None and r["answer"] == by_id[r["id"]]["answer"]
            assert r["confidence"] == pytest.approx(by_id[r["id"]]["confidence"], abs=1e-4)

    # Counted, and in every denominator: the metric is the mean over all answerable rows, unreadable ones at 0.
    counts = results["counts"]
    assert (counts["rows"], counts["unreadable_images"], counts["threshold_unreadable_images"]) == (8, 2, 1)
    assert clean["counts"]["unreadable_images"] == 0
    assert results["failure_tags"]["unreadable_image"] == 2
    answerable = [r["score"] for r in records if r["answerable"]]
    assert results["metrics"]["exact_match"] == pytest.approx(sum(answerable) / len(answerable))
    assert results["per_question_type"]["unanswerable"]["count"] == sum(not r["answerable"] for r in records)

    # The gallery shows them first, with a placeholder instead of the image and the decoder's reason.
    parser = _Cases()
    page = (tmp_path / "bad" / "failures.html").read_text()
    parser.feed(page)
    for row_id in bad_ids["test"]:
        assert parser.tags[row_id] == "unreadable_image" and parser.placeholders.get(row_id)
    assert "UnidentifiedImageError" in page and "truncated" in page
    assert len(parser.tags) == counts["gallery"] == 3


def test_gallery_lists_unreadable_rows_first_with_a_placeholder():
    record = lambda i, tag, confidence, error=None: {
        **{"index": i, "id": f"r{i}", "question_type": "extraction", "answerable": True, "question": "q"},
        **{"golds": ["a"], "answer": "", "answer_tokens": 0, "confidence": confidence, "abstained": False},
        **{"final_answer": "b", "score": 0.0, "final_score": 0.0, "error_tag": tag, "image_error": error},
    }
    records = [
        record(0, "other", 0.9),
        record(1, "unreadable_image", 0.0, "OSError: <broken>"),
        record(2, "other", 0.8),
    ]
    selected = select_failures(records, 2)
    assert [r["id"] for r in selected] == ["r1", "r0"]
    page = render_gallery(selected, {"r0": PILImage.new("RGB", (8, 8))}, {"other": 2, "unreadable_image": 1}, "t")
    assert page.count('class="no-image"') == 1 and "OSError: &lt;broken&gt;" in page


@pytest.mark.slow
def test_a_crash_leaves_the_finished_rows_and_a_rerun_starts_over(datasets_dirs, model_dir, tmp_path, monkeypatch):
    clean_dir = datasets_dirs[0]
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("eval_results.json", "failures.html"):  # an earlier run's results must not sit beside a crash
        (out / stale).write_text("{}")
    load_model = evaluation.load_model

    def load_crashing_model(args):
        model, processor, generation_config = load_model(args)
        generate, calls = model.generate, []

        def crash_on_second_batch(**kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated crash in batch 2")
            return generate(**kwargs)

        model.generate = crash_on_second_batch
        return model, processor, generation_config

    monkeypatch.setattr(evaluation, "load_model", load_crashing_model)
    args = _args(model_dir, clean_dir, out, "--threshold", "0.5")
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluation.main(args)
    left = _jsonl(out / "predictions.jsonl")
    ids = load_dataset_dir(clean_dir)["test"]["id"]
    assert [r["id"] for r in left] == ids[:4]  # the first batch, whole and final
    assert not (out / "eval_results.json").exists() and not (out / "failures.html").exists()

    monkeypatch.setattr(evaluation, "load_model", load_model)
    results = evaluation.main(args)
    records = _jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in records] == ids and results["counts"]["rows"] == TEST_ROWS  # started over: no repeats
    assert records[:4] == left
    assert json.loads((out / "eval_results.json").read_text())["counts"]["rows"] == TEST_ROWS
