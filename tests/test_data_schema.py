"""Row validation (good and bad rows), save/load round trip, near-duplicate index, dedup policy, fingerprint."""

import copy
import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from data_scripts.dedup import NearDupIndex, dedup_splits
from data_scripts.manifest import build_manifest, fingerprint
from data_scripts.schema import (
    ABSTAIN_ANSWER,
    FEATURES,
    load_dataset_dir,
    load_manifest,
    make_row,
    save_dataset_dict,
    validate_row,
)


def image_bytes(seed: int) -> bytes:
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(cells, "L").resize((64, 64), PILImage.NEAREST).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def row(
    i=0,
    split="train",
    question="What is the total?",
    answers=("$5.00",),
    answerable=True,
    qtype="extraction",
    image=None,
):
    return make_row(
        id=f"r{i}-{split}",
        source="unit",
        split=split,
        image_bytes=image or image_bytes(i),
        question=question,
        answers=list(answers),
        answerable=answerable,
        question_type=qtype,
        meta={"i": i},
    )


def test_good_rows_are_valid():
    assert validate_row(row()) == []
    unanswerable = row(answers=(), answerable=False, qtype="unanswerable")
    assert validate_row(unanswerable) == []
    assert unanswerable["answers"] == [ABSTAIN_ANSWER] == ["unanswerable"]
    assert unanswerable["messages"][1]["content"][0]["text"] == ABSTAIN_ANSWER


def mutate(fn):
    r = copy.deepcopy(row())
    fn(r)
    return validate_row(r)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda r: r.pop("phash"), "missing fields: ['phash']"),
        (lambda r: r["messages"].reverse(), "messages[0]: role must be 'user' (roles alternate, user first)"),
        (
            lambda r: r["messages"].append(copy.deepcopy(r["messages"][0])),
            "messages: the last turn must be the assistant's",
        ),
        (lambda r: r["images"].append(r["images"][0]), "images: 2 image(s) but 1 image part(s) in messages"),
        (lambda r: r["messages"][0]["content"].pop(0), "images: 1 image(s) but 0 image part(s) in messages"),
        (
            lambda r: r["messages"][1]["content"][0].update(text=" "),
            "messages[1].content[0]: text part has empty text",
        ),
        (lambda r: r.update(answers=[]), "answers: answerable rows need non-empty gold answers"),
        (lambda r: r.update(answers=["$6.00"]), "messages: assistant answer '$5.00' is not one of the gold answers"),
        (lambda r: r.update(answerable=False), "answers: unanswerable rows answer exactly 'unanswerable'"),
        (lambda r: r.update(question_type="ocr"), "question_type: 'ocr' not in"),
        (lambda r: r.update(split="dev"), "split: 'dev' not in"),
        (lambda r: r.update(image_sha256="0" * 64), "image_sha256: does not match the bytes of images[0]"),
        (lambda r: r.update(phash="xyz"), "phash: must be 16 hex chars"),
        (lambda r: r.update(meta="{not json"), "meta: must be a JSON string"),
        (lambda r: r["messages"][0]["content"][1].update(type="video"), "type must be 'image' or 'text', got 'video'"),
    ],
)
def test_bad_rows_name_their_problem(fn, expected):
    problems = mutate(fn)
    assert any(expected in p for p in problems), problems


def test_unanswerable_needs_matching_type():
    r = row(answers=(), answerable=False, qtype="unanswerable")
    r["question_type"] = "extraction"
    assert validate_row(r) == ["question_type: answerable=False rows must have question_type 'unanswerable'"]


def test_corrupt_bytes_raise_in_make_row():
    with pytest.raises(OSError):
        row(image=image_bytes(1)[:100])


def test_save_load_round_trip(tmp_path):
    train = datasets.Dataset.from_list([row(0), row(1)], features=FEATURES)
    manifest = build_manifest(splits={"train": train}, source="unit", converter="unit")
    save_dataset_dict({"train": train}, str(tmp_path / "ds"), manifest)
    dd = load_dataset_dir(str(tmp_path / "ds"))
    assert sorted(dd) == ["test", "train", "validation"] and len(dd["test"]) == 0
    assert dd["train"].features == FEATURES
    assert isinstance(dd["train"].features["images"], datasets.List)
    assert isinstance(dd["train"][0]["images"][0], PILImage.Image)
    assert validate_row(dd["train"][0]) == []
    assert datasets.load_from_disk(str(tmp_path / "ds"))["train"][1]["id"] == "r1-train"
    m = load_manifest(str(tmp_path / "ds"))
    assert m["splits"]["train"] == {"rows": 2, "question_type": {"extraction": 2}, "answerable": {"true": 2}}
    assert m["fingerprint"] == fingerprint({"train": dd["train"]}) and len(m["fingerprint"]) == 64
    with pytest.raises(ValueError, match="is a file"):
        load_dataset_dir(str(tmp_path / "ds" / "manifest.json"))


def test_fingerprint_ignores_order_but_not_content():
    a = datasets.Dataset.from_list([row(0), row(1)], features=FEATURES)
    b = datasets.Dataset.from_list([row(1), row(0)], features=FEATURES)
    c = datasets.Dataset.from_list([row(0), row(1, answers=("$7.00",))], features=FEATURES)
    assert fingerprint({"train": a}) == fingerprint({"train": b}) != fingerprint({"train": c})


def test_near_dup_index_threshold_is_inclusive_at_four_bits():
    index = NearDupIndex(4)
    index.add("0000000000000000")
    assert index.contains_near("000000000000000f")  # 4 bits
    assert not index.contains_near("000000000000001f")  # 5 bits
    assert index.contains_near("8000000000000007")  # 4 bits in different chunks
    assert not index.contains_near("ffffffffffffffff")


def test_dedup_policy_within_and_across_splits():
    img = image_bytes(7)
    test = datasets.Dataset.from_list([row(7, "test", image=img)], features=FEATURES)
    near = row(8, "train", question="Other question?", image=img)
    near["phash"] = format(int(near["phash"], 16) ^ 0b111, "016x")  # 3 bits away, another sha
    near["image_sha256"] = "a" * 64
    near["images"] = [PILImage.open(io.BytesIO(img))]
    train = datasets.Dataset.from_list(
        [
            row(1, "train"),
            row(1, "train", question="Another question?"),  # one image, two questions: both kept
            row(1, "train"),  # same image + question: dropped
            row(7, "train", image=img),  # the test image: dropped from train
            near,
        ],
        features=FEATURES,
    )
    kept, dropped = dedup_splits({"train": train, "test": test})
    assert len(kept["test"]) == 1 and kept["train"]["id"] == ["r1-train", "r1-train"]
    assert [json.loads(m)["i"] for m in kept["train"]["meta"]] == [1, 1]
    assert dropped == {
        ("train", "exact_duplicate_row"): 1,
        ("train", "cross_split_exact_duplicate"): 1,
        ("train", "cross_split_near_duplicate"): 1,
    }
