"""The synthetic document/UI set (training data of the offline default): rendered with PIL, deterministic given
--seed, every answer derivable from the rendered fields kept in `meta`, ~25% unanswerable questions.

    python -m data_scripts.make_synthetic --out DIR --n 500 --seed 0
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import uuid
from collections import Counter

import datasets
from tqdm.auto import tqdm

from data_scripts.dedup import dedup_splits
from data_scripts.manifest import build_manifest
from data_scripts.schema import ABSTAIN_ANSWER, FEATURES, SPLITS, encode_png, make_row, save_dataset_dict, validate_row
from data_scripts.synth_canvas import finish
from data_scripts.synth_docs import render_form, render_invoice, render_memo, render_receipt, render_table
from data_scripts.synth_ui import render_dialog, render_login, render_menu, render_notification, render_settings

SOURCE = "synthetic"
DOC_KINDS = {
    "invoice": render_invoice,
    "receipt": render_receipt,
    "form": render_form,
    "table": render_table,
    "memo": render_memo,
}
UI_KINDS = {
    "login screen": render_login,
    "settings screen": render_settings,
    "dialog": render_dialog,
    "menu": render_menu,
    "notification": render_notification,
}
KINDS = {**DOC_KINDS, **UI_KINDS}  # key = the doc_type answer
# Answerable types by weight; the small closed-set ones (yes_no, counting, layout, doc_type) are learnable from
# coarse visual cues, which the tiny CPU model of the offline default needs in order to show learning.
ANSWERABLE_WEIGHTS = {
    "extraction": 0.25,
    "key_value": 0.12,
    "yes_no": 0.18,
    "counting": 0.15,
    "layout": 0.15,
    "doc_type": 0.15,
}
UNANSWERABLE_SHARE = 0.25
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
DOC_TYPE_QUESTION = "What kind of document or screen is this?"


def resolve(fields: dict, path: str):
    """fields['a']['0']['b'] for 'a.0.b' (list indices as digits); None when any step is absent."""
    value = fields
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


def derive_answer(fields: dict, question_type: str, evidence: str):
    """The answer the rendered fields imply (ABSTAIN_ANSWER when the asked-for field is absent)."""
    value = resolve(fields, evidence)
    if question_type == "unanswerable":
        return ABSTAIN_ANSWER if value is None else None  # None: the field exists, so it was not unanswerable
    if question_type == "counting":
        return str(len(value)) if value is not None else None
    if question_type == "yes_no":
        return "yes" if value else "no"
    return value if isinstance(value, str) else None


def choose_question(rng: random.Random, candidates, unanswerable_share: float):
    unanswerable = [c for c in candidates if c[0] == "unanswerable"]
    if unanswerable and rng.random() < unanswerable_share:
        return rng.choice(unanswerable)
    types = sorted({c[0] for c in candidates} - {"unanswerable"})
    qtype = rng.choices(types, weights=[ANSWERABLE_WEIGHTS[t] for t in types])[0]
    return rng.choice([c for c in candidates if c[0] == qtype])


def split_of(seed: int, index: int) -> str:
    u = random.Random(f"{seed}:{index}:split").random()  # own stream: split choice never shifts the content
    return "train" if u < SPLIT_FRACTIONS["train"] else "validation" if u < 1 - SPLIT_FRACTIONS["test"] else "test"


def make_sample(seed: int, index: int, unanswerable_share: float = UNANSWERABLE_SHARE) -> dict:
    """One canonical row; everything is drawn from a RNG seeded by (seed, index), so any process order agrees."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choice(sorted(KINDS))
    canvas, fields, candidates = KINDS[kind](rng)
    fields["doc_type"] = kind
    candidates = [*candidates, ("doc_type", DOC_TYPE_QUESTION, kind, "doc_type")]
    qtype, question, answer, evidence = choose_question(rng, candidates, unanswerable_share)
    image = finish(canvas, rng, rotate=kind in DOC_KINDS)
    answerable = qtype != "unanswerable"
    if derive_answer(fields, qtype, evidence) != (answer if answerable else ABSTAIN_ANSWER):
        raise AssertionError(f"sample {index} ({kind}): {question!r} -> {answer!r} not derivable from {evidence!r}")
    meta = {"kind": kind, "fields": fields, "texts": canvas.texts, "evidence": evidence, "seed": seed, "index": index}
    row = make_row(
        id=f"{SOURCE}-{seed}-{index:06d}",
        source=SOURCE,
        split=split_of(seed, index),
        image_bytes=encode_png(image),
        question=question,
        answers=[answer] if answerable else [],
        answerable=answerable,
        question_type=qtype,
        meta=meta,
    )
    problems = validate_row(row)
    if problems:
        raise AssertionError(f"sample {index}: invalid row {problems}")
    return row


def content_key(row) -> str:
    """Identity of what a synthetic image shows (kind + rendered fields), independent of noise and rotation."""
    meta = json.loads(row["meta"])
    payload = json.dumps({"kind": meta["kind"], "fields": meta["fields"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _make_sample_star(args):
    return make_sample(*args)


def generate_rows(n: int, seed: int, num_proc: int, unanswerable_share: float):
    jobs = [(seed, i, unanswerable_share) for i in range(n)]
    if num_proc <= 1:
        yield from tqdm(map(_make_sample_star, jobs), total=n, desc="synthetic", unit="img")
        return
    with multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(num_proc) as pool:
        yield from tqdm(pool.imap(_make_sample_star, jobs, chunksize=16), total=n, desc="synthetic", unit="img")


def build_synthetic(
    out: str, n: int = 500, seed: int = 0, num_proc: int = 1, unanswerable_share: float = UNANSWERABLE_SHARE
) -> dict:
    """Renders n rows, splits them, drops cross-split near duplicates, writes out/ + manifest; returns manifest."""
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"--n {n}: use 200..100000 rows (tests use fewer)")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".synthetic-") as tmp:
        full = datasets.Dataset.from_generator(
            generate_rows,
            gen_kwargs={"n": n, "seed": seed, "num_proc": num_proc, "unanswerable_share": unanswerable_share},
            features=FEATURES,
            cache_dir=os.path.join(tmp, "cache"),
            fingerprint=uuid.uuid4().hex,
        )
        split_col = full["split"]
        splits = {s: full.select([i for i, v in enumerate(split_col) if v == s]) for s in SPLITS}
        # phash alone would call most renderings of one template duplicates (see dedup.py), so near = same content;
        # the phash-near pairs across splits are still counted, for the record.
        _, template_near = dedup_splits(splits)
        splits, deduped = dedup_splits(splits, near_key=content_key)
        kinds = Counter(json.loads(m)["kind"] for ds in splits.values() for m in ds["meta"])
        manifest = build_manifest(
            splits=splits,
            source="data_scripts.make_synthetic",
            converter=SOURCE,
            seed=seed,
            deduped=deduped,
            extra={
                "n_requested": n,
                "kinds": dict(sorted(kinds.items())),
                "unanswerable_share_target": unanswerable_share,
                "near_duplicate_definition": "same kind + rendered fields",
                "phash_near_template_pairs_kept": {f"{s}/{r}": c for (s, r), c in template_near.items()},
                "abstain_answer": ABSTAIN_ANSWER,
            },
        )
        staged = os.path.join(tmp, "out")
        save_dataset_dict(splits, staged, manifest)
        if os.path.exists(out):
            shutil.rmtree(out)
        shutil.move(staged, out)
    return manifest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (replaced if present)")
    p.add_argument("--n", type=int, default=500, help="rows (one question per rendered image), 200..100000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_proc", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--unanswerable_share", type=float, default=UNANSWERABLE_SHARE)
    args = p.parse_args(argv)
    manifest = build_synthetic(args.out, args.n, args.seed, args.num_proc, args.unanswerable_share)
    counts = {s: c["rows"] for s, c in manifest["splits"].items()}
    print(
        f"[synthetic] rows {counts}; deduplicated {manifest['deduplicated']}; "
        f"fingerprint {manifest['fingerprint'][:16]}"
    )
    return manifest


if __name__ == "__main__":
    main()
