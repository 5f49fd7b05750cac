"""The synthetic document/UI set (training data of the offline default): rendered with PIL, deterministic given
--seed, every answer derivable from the rendered fields kept in `meta`, ~25% unanswerable questions.

    python -m data_scripts.make_synthetic --out DIR --n 500 --seed 0
    python -m data_scripts.make_synthetic --out DIR --n 2000 --variant highres --tile_size 384
    python -m data_scripts.make_synthetic --out DIR --n 1000 --variant contrastive
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
from data_scripts.synth_highres import DEFAULT_TILE_SIZE, HIGHRES_KINDS, LAYOUTS, task_of, text_plan
from data_scripts.synth_ui import render_dialog, render_login, render_menu, render_notification, render_settings

SOURCE = "synthetic"
HIGHRES_SOURCE = "synthetic_highres"
CONTRASTIVE_SOURCE = "synthetic_contrastive"
VARIANTS = ("standard", "highres", "contrastive")
TWIN_DRAWS = 60  # renders of one kind searched for a question asked of both twins (found within ~5 in practice)
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
# highres asks only what needs reading small text: field lookups (key_value) and UI labels / totals (extraction).
HIGHRES_WEIGHTS = {"key_value": 0.5, "extraction": 0.5}
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


def choose_question(rng: random.Random, candidates, unanswerable_share: float, weights=ANSWERABLE_WEIGHTS):
    unanswerable = [c for c in candidates if c[0] == "unanswerable"]
    if unanswerable and rng.random() < unanswerable_share:
        return rng.choice(unanswerable)
    types = sorted({c[0] for c in candidates} - {"unanswerable"})
    qtype = rng.choices(types, weights=[weights[t] for t in types])[0]
    return rng.choice([c for c in candidates if c[0] == qtype])


def split_of(seed: int, index: int) -> str:
    u = random.Random(f"{seed}:{index}:split").random()  # own stream: split choice never shifts the content
    return "train" if u < SPLIT_FRACTIONS["train"] else "validation" if u < 1 - SPLIT_FRACTIONS["test"] else "test"


def _checked_row(source, seed, index, kind, fields, candidate, image_bytes, meta) -> dict:
    """One canonical row for a chosen candidate, after checking its answer derives from the rendered fields."""
    qtype, question, answer, evidence = candidate
    answerable = qtype != "unanswerable"
    if derive_answer(fields, qtype, evidence) != (answer if answerable else ABSTAIN_ANSWER):
        raise AssertionError(f"sample {index} ({kind}): {question!r} -> {answer!r} not derivable from {evidence!r}")
    row = make_row(
        id=f"{source}-{seed}-{index:06d}",
        source=source,
        split=split_of(seed, index),
        image_bytes=image_bytes,
        question=question,
        answers=[answer] if answerable else [],
        answerable=answerable,
        question_type=qtype,
        meta={"kind": kind, "fields": fields, "evidence": evidence, "seed": seed, "index": index, **meta},
    )
    problems = validate_row(row)
    if problems:
        raise AssertionError(f"sample {index}: invalid row {problems}")
    return row


def make_sample(seed: int, index: int, unanswerable_share: float = UNANSWERABLE_SHARE) -> dict:
    """One canonical row; everything is drawn from a RNG seeded by (seed, index), so any process order agrees."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choice(sorted(KINDS))
    canvas, fields, candidates = KINDS[kind](rng)
    fields["doc_type"] = kind
    candidates = [*candidates, ("doc_type", DOC_TYPE_QUESTION, kind, "doc_type")]
    candidate = choose_question(rng, candidates, unanswerable_share)
    image = finish(canvas, rng, rotate=kind in DOC_KINDS)
    return _checked_row(SOURCE, seed, index, kind, fields, candidate, encode_png(image), {"texts": canvas.texts})


def make_highres_sample(
    seed: int, index: int, unanswerable_share: float = UNANSWERABLE_SHARE, tile_size: int = DEFAULT_TILE_SIZE
) -> dict:
    """One high-resolution row (synth_highres): no noise or rotation, so the recorded answer box is exact; meta
    keeps the box, font size, AnyRes grid and the answer's cap height squashed vs tiled."""
    rng = random.Random(f"{seed}:{index}:highres")
    kind = rng.choice(sorted(HIGHRES_KINDS))
    plan = text_plan(kind, tile_size)
    sheet, fields, candidates = HIGHRES_KINDS[kind](rng, plan)
    candidate = choose_question(rng, candidates, unanswerable_share, HIGHRES_WEIGHTS)
    qtype, _, _, evidence = candidate
    meta = {
        "variant": "highres",
        "texts": sheet.canvas.texts,
        "task": task_of(qtype, evidence),
        "tile_size": tile_size,
        "grid": list(plan.grid),
        "font_size": plan.font_size,
        "cap_px": plan.cap_px,
        "cap_px_squashed": round(plan.squashed_px, 3),
        "cap_px_tiled": round(plan.tiled_px, 3),
        "answer_drawn": sheet.boxes.get(evidence) if qtype != "unanswerable" else None,
    }
    return _checked_row(HIGHRES_SOURCE, seed, index, kind, fields, candidate, sheet.encode(), meta)


def make_contrastive_pair(seed: int, pair: int) -> list[dict]:
    """Two rows of one kind asking the same question: the asked field is rendered in one image and absent from its
    twin. Over the variant every question text is unanswerable exactly half the time, so the wording alone cannot tell
    whether to abstain; only the image can."""
    rng = random.Random(f"{seed}:{pair}:contrastive")
    kind = rng.choice(sorted(KINDS))
    answerable, unanswerable = {}, {}  # question -> (draw, candidate)
    for draw in range(TWIN_DRAWS):
        draw_rng = random.Random(f"{seed}:{pair}:contrastive:{draw}")
        canvas, fields, candidates = KINDS[kind](draw_rng)
        fields["doc_type"] = kind
        for candidate in candidates:
            side = unanswerable if candidate[0] == "unanswerable" else answerable
            side.setdefault(candidate[1], ((draw_rng, canvas, fields), candidate))
        both = sorted(answerable.keys() & unanswerable.keys())
        if both:
            question = rng.choice(both)
            break
    else:
        raise AssertionError(f"pair {pair} ({kind}): no question asked of both twins in {TWIN_DRAWS} renders")
    rows = []
    for twin, ((draw_rng, canvas, fields), candidate) in enumerate((answerable[question], unanswerable[question])):
        image = finish(canvas, draw_rng, rotate=kind in DOC_KINDS)
        meta = {"texts": canvas.texts, "variant": "contrastive", "pair": pair}
        row = _checked_row(CONTRASTIVE_SOURCE, seed, 2 * pair + twin, kind, fields, candidate, encode_png(image), meta)
        rows.append({**row, "split": split_of(seed, pair)})  # twins share a split
    return rows


def content_key(row) -> str:
    """Identity of what a synthetic image shows (kind + rendered fields), independent of noise and rotation."""
    meta = json.loads(row["meta"])
    payload = json.dumps({"kind": meta["kind"], "fields": meta["fields"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _make_sample_star(job):
    fn, args = job
    return fn(*args)


def generate_rows(n: int, seed: int, num_proc: int, unanswerable_share: float, variant: str, tile_size: int):
    if variant == "highres":
        jobs = [(make_highres_sample, (seed, i, unanswerable_share, tile_size)) for i in range(n)]
    elif variant == "contrastive":
        jobs = [(make_contrastive_pair, (seed, pair)) for pair in range(n // 2)]
    else:
        jobs = [(make_sample, (seed, i, unanswerable_share)) for i in range(n)]

    def rows(results):  # a contrastive job renders a pair of rows
        for result in tqdm(results, total=len(jobs), desc="synthetic", unit="job"):
            yield from result if isinstance(result, list) else [result]

    if num_proc <= 1:
        yield from rows(map(_make_sample_star, jobs))
        return
    with multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(num_proc) as pool:
        yield from rows(pool.imap(_make_sample_star, jobs, chunksize=16))


def whole_pairs(splits: dict) -> dict:
    """Contrastive: drop a twin whose partner was removed (deduplication), so every question stays at 50/50."""
    out = {}
    for name, ds in splits.items():
        pairs = Counter(json.loads(m)["pair"] for m in ds["meta"])
        keep = [i for i, m in enumerate(ds["meta"]) if pairs[json.loads(m)["pair"]] == 2]
        out[name] = ds.select(keep) if len(keep) < len(ds) else ds
    return out


def _variant_extra(variant: str, tile_size: int, splits: dict) -> dict:
    """Manifest keys of the highres variant (image sizes, the text plan per kind, rows per task) and of the
    contrastive one (pairs, and the largest share of unanswerable rows among the rows asking one question)."""
    if variant == "contrastive":
        asked = {}
        for ds in splits.values():
            for row in ds.select_columns(["messages", "answerable"]):
                asked.setdefault(row["messages"][0]["content"][-1]["text"], []).append(not row["answerable"])
        prior = max(sum(flags) / len(flags) for flags in asked.values())
        pairs = sum(len(ds) for ds in splits.values()) // 2
        return {"variant": variant, "pairs": pairs, "questions": len(asked), "max_question_unanswerable_share": prior}
    if variant != "highres":
        return {}
    plans = {kind: text_plan(kind, tile_size) for kind in sorted(HIGHRES_KINDS)}
    tasks = Counter(json.loads(m)["task"] for ds in splits.values() for m in ds["meta"])
    return {
        "variant": variant,
        "tile_size": tile_size,
        "image_sizes": {kind: list(LAYOUTS[kind]) for kind in plans},
        "text_plan": {
            kind: {
                "grid_cols_rows": list(p.grid),
                "font_size": p.font_size,
                "cap_px": p.cap_px,
                "cap_px_squashed": round(p.squashed_px, 3),
                "cap_px_tiled": round(p.tiled_px, 3),
            }
            for kind, p in plans.items()
        },
        "tasks": dict(sorted(tasks.items())),
    }


def _check_settings(n: int, variant: str, tile_size: int) -> None:
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"--n {n}: use 200..100000 rows (tests use fewer)")
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r}: use one of {VARIANTS}")
    if variant == "highres":
        if tile_size < 16:
            raise ValueError(f"--tile_size {tile_size}: use the vision tower's image_size (e.g. 384, or 128)")
        for kind in HIGHRES_KINDS:  # fails before rendering when the grid cannot separate the two views
            text_plan(kind, tile_size)


def build_synthetic(
    out: str,
    n: int = 500,
    seed: int = 0,
    num_proc: int = 1,
    unanswerable_share: float = UNANSWERABLE_SHARE,
    variant: str = "standard",
    tile_size: int = DEFAULT_TILE_SIZE,
) -> dict:
    """Renders n rows, splits them, drops cross-split near duplicates, writes out/ + manifest; returns manifest.
    variant="highres" renders synth_highres' large images with small answers, sized for `tile_size` tiles."""
    _check_settings(n, variant, tile_size)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".synthetic-") as tmp:
        full = datasets.Dataset.from_generator(
            generate_rows,
            gen_kwargs={"n": n, "seed": seed, "num_proc": num_proc, "unanswerable_share": unanswerable_share}
            | {"variant": variant, "tile_size": tile_size},
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
        if variant == "contrastive":
            splits = whole_pairs(splits)
        kinds = Counter(json.loads(m)["kind"] for ds in splits.values() for m in ds["meta"])
        extra = {
            "n_requested": n,
            "kinds": dict(sorted(kinds.items())),
            "unanswerable_share_target": unanswerable_share,
            "near_duplicate_definition": "same kind + rendered fields",
            "phash_near_template_pairs_kept": {f"{s}/{r}": c for (s, r), c in template_near.items()},
            "abstain_answer": ABSTAIN_ANSWER,
            **_variant_extra(variant, tile_size, splits),
        }
        converter = {"highres": HIGHRES_SOURCE, "contrastive": CONTRASTIVE_SOURCE}.get(variant, SOURCE)
        manifest = build_manifest(
            splits=splits,
            source="data_scripts.make_synthetic",
            converter=converter,
            seed=seed,
            deduped=deduped,
            extra=extra,
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
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="standard",
        help="highres: A4 pages, wide dashboards and tall phone screens whose answers are in small text; "
        "contrastive: pairs of one kind and question, the asked field rendered in one image and absent from its twin "
        "(an evaluation set where the wording alone cannot predict abstention)",
    )
    p.add_argument(
        "--tile_size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help="highres only: the vision tower's image_size the small text is sized against (384 SigLIP, 128 tiny)",
    )
    args = p.parse_args(argv)
    manifest = build_synthetic(
        args.out, args.n, args.seed, args.num_proc, args.unanswerable_share, args.variant, args.tile_size
    )
    counts = {s: c["rows"] for s, c in manifest["splits"].items()}
    print(
        f"[synthetic] rows {counts}; deduplicated {manifest['deduplicated']}; "
        f"fingerprint {manifest['fingerprint'][:16]}"
    )
    return manifest


if __name__ == "__main__":
    main()
