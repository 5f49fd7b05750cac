"""Each converter on a small local fixture with the real source's column names and types; bad rows are counted."""

import io
import json
import os

import datasets
import numpy as np
import pytest
from datasets import ClassLabel, Features, Image, List, Value
from PIL import Image as PILImage

from data_scripts import convert_captions, convert_chartqa, convert_docvqa, convert_textvqa
from data_scripts.schema import load_dataset_dir, load_manifest, validate_row

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def blocks(seed: int, size=(64, 64)) -> bytes:
    """Random 8x8 grey blocks upscaled: distinct seeds give phashes ~32 bits apart (no accidental near dups)."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    img = PILImage.fromarray(cells, "L").resize(size, PILImage.NEAREST).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


GOOD = [blocks(i) for i in range(4)]
CORRUPT = b"\x89PNG\r\n\x1a\nnot really a png"
TRUNCATED = GOOD[1][: len(GOOD[1]) // 2]


def rows_by_id(out):
    dd = load_dataset_dir(str(out))
    return {r["id"]: r for s in dd for r in dd[s]}, dd


def assert_row(row, *, question, target, answers, qtype, split):
    assert row["messages"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": question}]
    assert row["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": target}]}
    assert row["answers"] == answers and row["question_type"] == qtype and row["split"] == split
    assert row["answerable"] is True and isinstance(row["images"][0], PILImage.Image)
    assert validate_row({**row, "images": row["images"]}) == []


DOCVQA_FEATURES = Features(
    {
        "questionId": Value("string"),
        "question": Value("string"),
        "question_types": List(Value("string")),
        "image": Image(),
        "docId": Value("int64"),
        "ucsf_document_id": Value("string"),
        "ucsf_document_page_no": Value("string"),
        "answers": List(Value("string")),
        "data_split": Value("string"),
    }
)


def docvqa_rows(split, items):
    keys = list(DOCVQA_FEATURES)
    rows = []
    for i, (q, answers, img) in enumerate(items):
        rows.append(
            dict(
                zip(
                    keys,
                    [f"{split}{i}", q, ["form"], {"bytes": img, "path": None}, 100 + i, f"u{i}", "1", answers, split],
                )
            )
        )
    return datasets.Dataset.from_list(rows, features=DOCVQA_FEATURES)


def test_docvqa_hub_layout_with_bad_rows(tmp_path):
    root = tmp_path / "DocVQA_repo" / "DocVQA"  # same layout as lmms-lab/DocVQA: config folder, split-prefixed files
    root.mkdir(parents=True)
    docvqa_rows(
        "train",
        [
            ("What is the date?", ["May 5, 1999", "5 May 1999"], GOOD[0]),
            ("Is it signed?", ["Yes"], GOOD[0]),  # same image, another question: kept
            ("How many pages?", ["3"], GOOD[1]),
            ("What is the title?", ["Report"], CORRUPT),
            ("Who wrote it?", ["Ann"], TRUNCATED),
            (None, ["x"], GOOD[2]),
            ("What is the total?", [], GOOD[2]),
            ("What is the date?", ["May 5, 1999"], GOOD[0]),  # exact duplicate row
            ("Which city?", ["Paris"], GOOD[3]),  # image also in validation: leaks, dropped from train
        ],
    ).to_parquet(str(root / "train-00000-of-00001.parquet"))
    docvqa_rows("val", [("Which city?", ["Paris"], GOOD[3])]).to_parquet(str(root / "validation-00000.parquet"))
    docvqa_rows("test", [("Any?", [], GOOD[2])]).to_parquet(str(root / "test-00000.parquet"))  # no answers in test

    out = tmp_path / "out"
    convert_docvqa.main(["--source", str(tmp_path / "DocVQA_repo"), "--out", str(out)])
    rows, dd = rows_by_id(out)
    assert sorted(rows) == [
        "docvqa-train-train0",
        "docvqa-train-train1",
        "docvqa-train-train2",
        "docvqa-validation-val0",
    ]
    assert_row(
        rows["docvqa-train-train0"],
        question="What is the date?",
        target="May 5, 1999",
        answers=["May 5, 1999", "5 May 1999"],
        qtype="extraction",
        split="train",
    )
    assert_row(
        rows["docvqa-train-train1"],
        question="Is it signed?",
        target="Yes",
        answers=["Yes"],
        qtype="yes_no",
        split="train",
    )
    assert rows["docvqa-train-train2"]["question_type"] == "counting"
    assert json.loads(rows["docvqa-train-train0"]["meta"])["ucsf_document_id"] == "u0"
    assert len(dd["test"]) == 0
    m = load_manifest(str(out))
    assert m["dropped"] == {
        "train": {"corrupt_image": 2, "missing_answer": 1, "missing_question": 1},
        "test": {"missing_answer": 1},
    }
    assert m["deduplicated"] == {"train": {"cross_split_exact_duplicate": 1, "exact_duplicate_row": 1}}
    assert m["splits"]["train"]["question_type"] == {"counting": 1, "extraction": 1, "yes_no": 1}
    # Idempotent: a rerun into the same folder gives the same rows.
    fingerprint = m["fingerprint"]
    convert_docvqa.main(["--source", str(tmp_path / "DocVQA_repo"), "--out", str(out)])
    assert load_manifest(str(out))["fingerprint"] == fingerprint


TEXTVQA_FEATURES = Features(
    {
        "image_id": Value("string"),
        "question_id": Value("int32"),
        "question": Value("string"),
        "question_tokens": List(Value("string")),
        "image": Image(),
        "image_width": Value("int32"),
        "image_height": Value("int32"),
        "flickr_original_url": Value("string"),
        "flickr_300k_url": Value("string"),
        "answers": List(Value("string")),
        "image_classes": List(Value("string")),
        "set_name": Value("string"),
        "ocr_tokens": List(Value("string")),
    }
)


def test_textvqa_streamed_majority_answer_and_all_ten_kept(tmp_path):
    ten = ["coca cola"] * 3 + ["coke"] * 6 + ["cola"]
    rows = []
    for qid, (q, answers, img) in enumerate(
        [
            ("what brand is it?", ten, GOOD[0]),
            ("what number is on the bus?", ["12"] * 10, GOOD[1]),
            ("what is written?", [""] * 10, GOOD[2]),  # test-style: no answers
            ("what time is it?", ["noon"] * 10, CORRUPT),
        ]
    ):
        rows.append(
            {
                "image_id": f"img{qid}",
                "question_id": qid,
                "question": q,
                "question_tokens": q.split(),
                "image": {"bytes": img, "path": None},
                "image_width": 64,
                "image_height": 64,
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "answers": answers,
                "image_classes": ["Vehicle"],
                "set_name": "train",
                "ocr_tokens": ["coke"],
            }
        )
    path = tmp_path / "textvqa.parquet"
    datasets.Dataset.from_list(rows, features=TEXTVQA_FEATURES).to_parquet(str(path))
    out = tmp_path / "out"
    convert_textvqa.main(["--source", str(path), "--out", str(out), "--split", "train", "--streaming", "yes"])
    got, dd = rows_by_id(out)
    assert sorted(got) == ["textvqa-train-0", "textvqa-train-1"]
    assert_row(
        got["textvqa-train-0"],
        question="what brand is it?",
        target="coke",
        answers=ten,
        qtype="extraction",
        split="train",
    )
    assert json.loads(got["textvqa-train-0"]["meta"])["ocr_tokens"] == ["coke"]
    assert len(dd["validation"]) == 0 and len(dd["test"]) == 0
    assert load_manifest(str(out))["dropped"] == {"train": {"corrupt_image": 1, "missing_answer": 1}}


def test_textvqa_majority_tie_goes_to_first_seen():
    assert convert_textvqa.majority_answer(["b", "a", "a", "b", "c"]) == "b"


CHARTQA_FEATURES = Features(
    {
        "image": Image(),
        "query": Value("string"),
        "label": List(Value("string")),
        "human_or_machine": ClassLabel(names=["human", "machine"]),
    }
)


def test_chartqa_val_split_num_proc_and_origin_filter(tmp_path):
    root = tmp_path / "ChartQA" / "data"
    root.mkdir(parents=True)
    datasets.Dataset.from_list(
        [
            {
                "image": {"bytes": GOOD[0], "path": None},
                "query": "What is the highest value?",
                "label": ["45"],
                "human_or_machine": 0,
            },
            {
                "image": {"bytes": GOOD[1], "path": None},
                "query": "Is the red bar taller?",
                "label": ["No"],
                "human_or_machine": 1,
            },
            {"image": {"bytes": GOOD[2], "path": None}, "query": "", "label": ["1"], "human_or_machine": 1},
        ],
        features=CHARTQA_FEATURES,
    ).to_parquet(str(root / "train-00000.parquet"))
    datasets.Dataset.from_list(
        [
            {
                "image": {"bytes": GOOD[3], "path": None},
                "query": "How many bars?",
                "label": ["4"],
                "human_or_machine": 0,
            },
        ],
        features=CHARTQA_FEATURES,
    ).to_parquet(str(root / "val-00000.parquet"))  # ChartQA names it "val"
    out = tmp_path / "out"
    convert_chartqa.main(["--source", str(tmp_path / "ChartQA"), "--out", str(out), "--num_proc", "2"])
    got, dd = rows_by_id(out)
    assert sorted(got) == ["chartqa-train-0", "chartqa-train-1", "chartqa-validation-0"]
    assert_row(
        got["chartqa-train-1"],
        question="Is the red bar taller?",
        target="No",
        answers=["No"],
        qtype="yes_no",
        split="train",
    )
    assert json.loads(got["chartqa-train-1"]["meta"])["human_or_machine"] == "machine"
    assert got["chartqa-validation-0"]["question_type"] == "counting"
    assert load_manifest(str(out))["dropped"] == {"train": {"missing_question": 1}}

    convert_chartqa.main(["--source", str(tmp_path / "ChartQA"), "--out", str(out), "--origin", "human"])
    got, _ = rows_by_id(out)
    assert sorted(got) == ["chartqa-train-0", "chartqa-validation-0"]
    assert load_manifest(str(out))["dropped"]["train"] == {"filtered_origin_machine": 1, "missing_question": 1}


def test_captions_llava_pretrain_json(tmp_path):
    images = tmp_path / "images" / "00453"
    images.mkdir(parents=True)
    for i, data in enumerate([GOOD[0], GOOD[1], TRUNCATED]):
        (images / f"00453{i}.jpg").write_bytes(data)
    entries = [
        {
            "id": "004530",
            "image": "00453/004530.jpg",
            "conversations": [
                {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                {"from": "gpt", "value": "a red block on white"},
            ],
        },
        {
            "id": "004531",
            "image": "00453/004531.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWrite a terse but informative summary of the picture."},
                {"from": "gpt", "value": "two dark stripes"},
            ],
        },
        {
            "id": "004532",
            "image": "00453/004532.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "broken file"}],
        },
        {
            "id": "004533",
            "image": "00453/missing.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "no file"}],
        },
        {
            "id": "004534",
            "image": "00453/004530.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": ""}],
        },
    ]
    path = tmp_path / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "out"
    args = ["--source", str(path), "--out", str(out), "--split", "train", "--image_root", str(tmp_path / "images")]
    convert_captions.main(args)
    got, _ = rows_by_id(out)
    assert sorted(got) == ["captions-train-004530", "captions-train-004531"]
    row = got["captions-train-004531"]
    prompt = row["messages"][0]["content"][1]["text"]
    assert prompt in convert_captions.CAPTION_PROMPTS
    assert_row(
        row, question=prompt, target="two dark stripes", answers=["two dark stripes"], qtype="caption", split="train"
    )
    m = load_manifest(str(out))
    assert m["dropped"] == {"train": {"corrupt_image": 1, "missing_caption": 1, "missing_image_file": 1}}
    # The prompt is seeded per row: the same under another run, and the seed changes the draw across rows.
    convert_captions.main(args)
    assert load_manifest(str(out))["fingerprint"] == m["fingerprint"]
    draws = {
        s: [
            convert_captions.make_caption_converter(s)({"id": str(i), "caption": "c"}, i, "train")["question"]
            for i in range(20)
        ]
        for s in (0, 1)
    }
    assert draws[0] != draws[1] and set(draws[0]) <= set(convert_captions.CAPTION_PROMPTS)


def test_unknown_source_file_type_is_a_clear_error(tmp_path):
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        convert_docvqa.main(["--source", str(bad), "--out", str(tmp_path / "o"), "--split", "train"])
