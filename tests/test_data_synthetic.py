"""The synthetic document/UI set: determinism, answers traceable to rendered fields, unanswerable share,
no duplicate content across splits, manifest counts."""

import json
import os
import subprocess
import sys

import datasets
import pytest

from data_scripts import make_synthetic
from data_scripts.schema import ABSTAIN_ANSWER, QUESTION_TYPES, load_dataset_dir, load_manifest, validate_row

N = 200


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "seed0"
    manifest = make_synthetic.build_synthetic(str(out), n=N, seed=0, num_proc=2)
    return out, manifest, load_dataset_dir(str(out))


def all_rows(
    dd, columns=("id", "split", "messages", "answers", "answerable", "question_type", "meta", "image_sha256")
):
    return [r for s in dd for r in dd[s].select_columns(list(columns))]


def test_layout_counts_and_manifest(built):
    out, manifest, dd = built
    assert sorted(dd) == ["test", "train", "validation"]
    assert sum(len(dd[s]) for s in dd) == N and manifest["deduplicated"] == {}
    for split in dd:
        assert manifest["splits"][split]["rows"] == len(dd[split])
        assert sum(manifest["splits"][split]["question_type"].values()) == len(dd[split])
    assert 0.7 * N < len(dd["train"]) < 0.9 * N and len(dd["validation"]) > 0 and len(dd["test"]) > 0
    assert manifest["seed"] == 0 and manifest["converter"] == "synthetic"
    assert load_manifest(str(out)) == manifest
    assert set(manifest["kinds"]) == set(make_synthetic.KINDS)


def test_rows_valid_and_images_sized(built):
    _, _, dd = built
    for r in dd["validation"]:
        assert validate_row(r) == []
        assert 384 <= max(r["images"][0].size) <= 512


def test_every_answer_derives_from_rendered_fields(built):
    _, _, dd = built
    seen_types = set()
    for r in all_rows(dd):
        meta, qtype = json.loads(r["meta"]), r["question_type"]
        seen_types.add(qtype)
        answer = r["messages"][1]["content"][0]["text"]
        assert answer == r["answers"][0]
        assert make_synthetic.derive_answer(meta["fields"], qtype, meta["evidence"]) == answer
        if qtype in ("extraction", "key_value"):
            assert any(answer in t for t in meta["texts"]), (answer, meta["texts"])
        if qtype == "unanswerable":
            assert not r["answerable"] and answer == ABSTAIN_ANSWER
            assert make_synthetic.resolve(meta["fields"], meta["evidence"]) is None
    assert seen_types == set(QUESTION_TYPES) - {"caption"}


def test_unanswerable_share_and_closed_set_answers(built):
    _, manifest, dd = built
    rows = all_rows(dd)
    share = sum(not r["answerable"] for r in rows) / len(rows)
    assert 0.17 <= share <= 0.33, share
    closed = {
        "yes",
        "no",
        *map(str, range(7)),
        *make_synthetic.KINDS,
        "red",
        "green",
        "blue",
        "orange",
        "purple",
        "gray",
    }
    for r in rows:
        if r["question_type"] in ("yes_no", "counting", "doc_type"):
            assert r["answers"][0] in closed, r
    # Unanswerable questions are phrased like answerable ones: most also occur as answerable questions.
    questions = {}
    for r in rows:
        questions.setdefault(r["messages"][0]["content"][1]["text"], set()).add(r["answerable"])
    unans = [q for q, a in questions.items() if False in a]
    assert sum(True in questions[q] for q in unans) >= len(unans) // 3


def test_no_shared_content_across_splits(built):
    _, _, dd = built
    owners = {}
    for r in all_rows(dd):
        for key in (r["image_sha256"], make_synthetic.content_key(r)):
            assert owners.setdefault(key, r["split"]) == r["split"]


def test_dedup_drops_injected_cross_split_copy(built):
    _, _, dd = built
    leaked = datasets.concatenate_datasets([dd["train"], dd["test"].select([0])])
    kept, dropped = make_synthetic.dedup_splits(
        {"train": leaked, "test": dd["test"]}, near_key=make_synthetic.content_key
    )
    assert len(kept["train"]) == len(dd["train"])
    assert dropped == {("train", "cross_split_exact_duplicate"): 1}


@pytest.mark.slow
def test_same_seed_same_fingerprint_other_seed_differs(built, tmp_path):
    _, manifest, _ = built
    again = make_synthetic.build_synthetic(str(tmp_path / "a"), n=N, seed=0, num_proc=1)  # other process count
    assert again["fingerprint"] == manifest["fingerprint"]
    other = make_synthetic.build_synthetic(str(tmp_path / "b"), n=40, seed=1, num_proc=1)
    small = make_synthetic.build_synthetic(str(tmp_path / "c"), n=40, seed=0, num_proc=1)
    assert other["fingerprint"] != small["fingerprint"]
    assert make_synthetic.make_sample(0, 3)["image_sha256"] == make_synthetic.make_sample(0, 3)["image_sha256"]


@pytest.mark.slow
def test_cli_entry_point(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_scripts.make_synthetic",
            "--out",
            str(out),
            "--n",
            "30",
            "--seed",
            "3",
            "--num_proc",
            "1",
        ],
        check=True,
        env=env,
        capture_output=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    m = load_manifest(str(out))
    assert m["seed"] == 3 and sum(c["rows"] for c in m["splits"].values()) == 30


@pytest.fixture(scope="module")
def contrastive(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("contrastive") / "set")
    manifest = make_synthetic.build_synthetic(out, n=80, seed=3, variant="contrastive")
    return manifest, load_dataset_dir(out)


def test_contrastive_twins_ask_one_question_of_two_images_one_without_the_field(contrastive):
    """The wording alone cannot predict abstention: each question is unanswerable for exactly half its rows."""
    manifest, dd = contrastive
    rows = [row for split in dd.values() for row in split]
    assert len(rows) == 80 and manifest["pairs"] == 40 and manifest["max_question_unanswerable_share"] == 0.5
    pairs, asked = {}, {}
    for row in rows:
        assert not validate_row(row)
        pairs.setdefault(json.loads(row["meta"])["pair"], []).append(row)
        asked.setdefault(row["messages"][0]["content"][-1]["text"], []).append(not row["answerable"])
    assert {q: sum(f) / len(f) for q, f in asked.items()} == dict.fromkeys(asked, 0.5)
    assert len(asked) >= 10  # many templates' questions, not one
    for twins in pairs.values():
        assert len(twins) == 2
        a, u = sorted(twins, key=lambda r: not r["answerable"])
        a_meta, u_meta = (json.loads(r["meta"]) for r in (a, u))
        assert a["messages"][0]["content"] == u["messages"][0]["content"] and a["split"] == u["split"]
        assert a_meta["kind"] == u_meta["kind"] and a["images"][0] != u["images"][0]
        assert a["answerable"] and not u["answerable"] and u["question_type"] == "unanswerable"
        derive = make_synthetic.derive_answer
        assert derive(u_meta["fields"], "unanswerable", u_meta["evidence"]) == ABSTAIN_ANSWER  # absent in the twin
        assert derive(a_meta["fields"], a["question_type"], a_meta["evidence"]) == a["answers"][0]


def test_run_eval_knows_the_contrastive_set(contrastive, tmp_path):
    from metrics import evaluation

    manifest, dd = contrastive
    folder = tmp_path / "set"
    dd.save_to_disk(str(folder))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert evaluation.resolve_dataset_name(None, str(folder), dd) == "synthetic_contrastive"
    assert evaluation.EVAL_DATASETS["synthetic_contrastive"]["metric"] == "exact_match"
