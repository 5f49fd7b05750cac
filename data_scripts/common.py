"""Shared converter machinery: open a Hub id or local file/folder, convert rows with counted rejections,
de-duplicate, write the DatasetDict + manifest. Each convert_*.py only maps one source row to canonical fields."""

import argparse
import os
import shutil
import tempfile
import uuid
from collections import Counter

import datasets
from tqdm.auto import tqdm

from data_scripts.dedup import dedup_splits, index_eval_images
from data_scripts.manifest import build_manifest
from data_scripts.schema import FEATURES, SPLITS, load_dataset_dir, make_row, save_dataset_dict, validate_row

REJECT = "reject_reason"
_WORK_FEATURES = datasets.Features({**FEATURES, REJECT: datasets.Value("string")})
_SPLIT_ALIASES = {"validation": ("validation", "val", "valid", "dev"), "train": ("train",), "test": ("test",)}
_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


class Reject(Exception):
    """Raised by a converter for a source row it must skip; the message is the counted reason."""


def build_arg_parser(description: str, default_source: str, default_config=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--source", default=default_source, help="Hub dataset id, or a local parquet/json file or folder")
    p.add_argument("--config", default=default_config, help="Hub config name (e.g. DocVQA)")
    p.add_argument("--revision", default=None, help="Hub revision (commit/tag) to pin")
    p.add_argument("--out", required=True, help="output folder (DatasetDict + manifest.json); replaced if present")
    p.add_argument("--split", nargs="+", default=list(SPLITS), help="splits to convert (val/dev map to validation)")
    p.add_argument("--num_proc", type=int, default=None, help="processes for non-streamed sources")
    p.add_argument("--max_rows", type=int, default=None, help="convert at most this many source rows per split")
    p.add_argument("--streaming", choices=["auto", "yes", "no"], default="auto", help="auto: stream Hub sources")
    p.add_argument("--dedup_against", nargs="*", default=[], help="built dataset folders whose eval images to drop")
    return p


def normalise_split(name: str) -> str:
    for canonical, aliases in _SPLIT_ALIASES.items():
        if name in aliases:
            return canonical
    raise ValueError(f"split {name!r} is not one of {sorted(a for v in _SPLIT_ALIASES.values() for a in v)}")


def open_split(source, split, config=None, revision=None, streaming="auto"):
    """The source rows of one canonical split, or None when the source has no such split."""
    if os.path.isfile(source):  # a single file is whatever split the caller asked for
        ext = os.path.splitext(source)[1]
        if ext not in _LOCAL_BUILDERS:
            raise ValueError(f"--source {source!r}: unsupported file type {ext!r}; use {sorted(_LOCAL_BUILDERS)}")
        return datasets.load_dataset(
            _LOCAL_BUILDERS[ext], data_files={"train": source}, split="train", streaming=streaming == "yes"
        )
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "dataset_dict.json")):
        dd = datasets.load_from_disk(source)
        return next((dd[a] for a in _SPLIT_ALIASES[split] if a in dd), None)
    stream = streaming == "yes" or (streaming == "auto" and not os.path.isdir(source))
    kwargs = {"revision": revision, "streaming": stream}
    if os.path.isdir(source):  # a local copy of a Hub repo: configs are sub-folders (DocVQA/train-*.parquet)
        kwargs = {
            "streaming": stream,
            "data_dir": config if config and os.path.isdir(os.path.join(source, config)) else None,
        }
        config = None
    for alias in _SPLIT_ALIASES[split]:
        try:
            return datasets.load_dataset(source, config, split=alias, **kwargs)
        except ValueError as e:  # "Unknown split": try the next alias
            if "split" not in str(e).lower():
                raise
    return None


def read_image_bytes(value, image_root=None) -> bytes:
    """Encoded bytes of an undecoded `Image` value ({'bytes', 'path'}) or of a path string."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        raise Reject("missing_image")
    path = os.path.join(image_root, path) if image_root and not os.path.isabs(path) else path
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise Reject("missing_image_file") from None


def infer_question_type(question: str, answers) -> str:
    """Our question_type for real VQA sources (their own labels are kept in meta)."""
    if answers and answers[0].strip().lower() in ("yes", "no"):
        return "yes_no"
    if question.strip().lower().startswith("how many"):
        return "counting"
    return "extraction"


def _reject_row(reason: str) -> dict:
    row = {k: None for k in FEATURES}
    row.update(images=[], messages=[], answers=[], answerable=False, **{REJECT: reason})
    return row


def _convert_one(example, idx, convert_fn, split, source, image_column, image_root):
    """convert_fn(example, idx, split) -> kwargs of make_row (no image/split/source); never raises."""
    try:
        fields = convert_fn(example, idx, split)
        image_bytes = read_image_bytes(example.get(image_column), image_root)
        try:
            row = make_row(source=source, split=split, image_bytes=image_bytes, **fields)
        except (OSError, ValueError, SyntaxError):  # PIL: truncated/corrupt/unknown format
            raise Reject("corrupt_image") from None
    except Reject as e:
        return _reject_row(str(e))
    problems = validate_row(row)
    if problems:
        return _reject_row("invalid_row:" + problems[0].split(":")[0])
    return {**row, REJECT: ""}


def convert_split(
    src,
    convert_fn,
    *,
    split,
    source,
    image_column="image",
    image_root=None,
    num_proc=None,
    max_rows=None,
    cache_dir=None,
):
    """Returns (canonical Dataset, Counter{(split, reason)}) for one source split."""
    if image_column in (src.features or {}) and isinstance(src.features[image_column], datasets.Image):
        src = src.cast_column(image_column, datasets.Image(decode=False))  # we decode ourselves, to count bad ones
    kwargs = {
        "convert_fn": convert_fn,
        "split": split,
        "source": source,
        "image_column": image_column,
        "image_root": image_root,
    }
    if isinstance(src, datasets.IterableDataset):
        if max_rows is not None:
            src = src.take(max_rows)
        mapped = src.map(
            _convert_one,
            with_indices=True,
            fn_kwargs=kwargs,
            remove_columns=list(src.column_names or []),
            features=_WORK_FEATURES,
        )

        def generate():
            yield from tqdm(mapped, desc=f"{source}/{split}", unit="row", total=max_rows)

        out = datasets.Dataset.from_generator(
            generate, features=_WORK_FEATURES, cache_dir=cache_dir, fingerprint=uuid.uuid4().hex
        )
    else:
        if max_rows is not None:
            src = src.select(range(min(max_rows, len(src))))
        out = src.map(
            _convert_one,
            with_indices=True,
            fn_kwargs=kwargs,
            remove_columns=src.column_names,
            features=_WORK_FEATURES,
            num_proc=num_proc,
            desc=f"{source}/{split}",
            load_from_cache_file=False,
        )
    reasons = Counter(r for r in out[REJECT] if r)
    if reasons:
        out = out.filter(lambda r: not r, input_columns=REJECT)
    out = out.remove_columns(REJECT).cast(FEATURES)
    return out, Counter({(split, r): n for r, n in reasons.items()})


def run_converter(args, convert_fn, *, source_name: str, image_column="image", image_root=None, extra=None):
    """Converts every requested split, de-duplicates, writes args.out atomically and returns the manifest."""
    rejected, splits = Counter(), {}
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".convert-") as tmp:
        for name in args.split:
            split = normalise_split(name)
            src = open_split(args.source, split, args.config, args.revision, args.streaming)
            if src is None:
                print(f"[{source_name}] source has no {split!r} split; it stays empty")
                continue
            splits[split], rej = convert_split(
                src,
                convert_fn,
                split=split,
                source=source_name,
                image_column=image_column,
                image_root=image_root,
                num_proc=args.num_proc,
                max_rows=args.max_rows,
                cache_dir=os.path.join(tmp, "cache"),
            )
            rejected += rej
        against = index_eval_images([load_dataset_dir(p) for p in args.dedup_against]) if args.dedup_against else None
        splits, deduped = dedup_splits(splits, against=against)
        manifest = build_manifest(
            splits=splits,
            source=args.source,
            revision=args.revision,
            converter=source_name,
            rejected=rejected,
            deduped=deduped,
            extra={"config": args.config, "max_rows": args.max_rows, **(extra or {})},
        )
        staged = os.path.join(tmp, "out")
        save_dataset_dict(splits, staged, manifest)
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        shutil.move(staged, args.out)
    print_summary(source_name, manifest)
    return manifest


def print_summary(name: str, manifest: dict) -> None:
    rows = {s: c["rows"] for s, c in manifest["splits"].items()}
    print(
        f"[{name}] rows {rows}; dropped {manifest['dropped']}; deduplicated {manifest['deduplicated']}; "
        f"fingerprint {manifest['fingerprint'][:16]}"
    )
