"""manifest.json of a built dataset: provenance, counts, drops by reason and a content fingerprint that training
and evaluation record in their run artefacts."""

import hashlib
import json
import os
from collections import Counter

from data_scripts.dedup import PHASH_NEAR_DISTANCE
from data_scripts.run_metadata import code_version

_ROW_HASH_COLUMNS = ["id", "split", "image_sha256", "messages", "answers", "answerable", "question_type"]


def row_hash(row: dict) -> str:
    """Hash of everything that defines a training example (image by its sha256, not its pixels)."""
    payload = {k: row[k] for k in _ROW_HASH_COLUMNS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(datasets_by_split: dict) -> str:
    """sha256 of the sorted row hashes of all splits: same rows -> same fingerprint, whatever the order."""
    hashes = sorted(row_hash(r) for ds in datasets_by_split.values() for r in ds.select_columns(_ROW_HASH_COLUMNS))
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def split_counts(ds) -> dict:
    cols = ds.select_columns(["question_type", "answerable"])
    return {
        "rows": len(ds),
        "question_type": dict(sorted(Counter(cols["question_type"]).items())),
        "answerable": {str(k).lower(): v for k, v in sorted(Counter(cols["answerable"]).items())},
    }


def build_manifest(
    *, splits: dict, source: str, converter: str, revision=None, seed=None, rejected=None, deduped=None, extra=None
) -> dict:
    """rejected: Counter{(split, reason)} from validation/decoding; deduped: Counter{(split, reason)} from dedup."""

    def nest(counter):
        out = {}
        for (split, reason), n in sorted((counter or {}).items()):
            out.setdefault(split, {})[reason] = n
        return out

    return {
        "source": source,
        "revision": revision,
        "converter": converter,
        "converter_version": code_version(os.path.dirname(os.path.abspath(__file__))),
        "seed": seed,
        "splits": {s: split_counts(ds) for s, ds in splits.items()},
        "dropped": nest(rejected),
        "deduplicated": nest(deduped),
        "dedup": {"exact": "image_sha256", "near": "imagehash.phash (64 bit)", "max_hamming": PHASH_NEAR_DISTANCE},
        "fingerprint": fingerprint(splits),
        **(extra or {}),
    }
