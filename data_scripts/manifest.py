"""manifest.json of a built dataset: provenance, counts, drops by reason and a content fingerprint that training
and evaluation record in their run artefacts."""

import hashlib
import json
import os
import subprocess
from collections import Counter

from data_scripts.dedup import PHASH_NEAR_DISTANCE

_ROW_HASH_COLUMNS = ["id", "split", "image_sha256", "messages", "answers", "answerable", "question_type"]


def row_hash(row: dict) -> str:
    """Hash of everything that defines a training example (image by its sha256, not its pixels)."""
    payload = {k: row[k] for k in _ROW_HASH_COLUMNS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(datasets_by_split: dict) -> str:
    """sha256 of the sorted row hashes of all splits: same rows -> same fingerprint, whatever the order."""
    hashes = sorted(row_hash(r) for ds in datasets_by_split.values() for r in ds.select_columns(_ROW_HASH_COLUMNS))
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def git_state(cwd: str, *status_args: str) -> tuple[str | None, bool]:
    """(HEAD commit, whether `git status --porcelain *status_args` lists a change) of the checkout holding `cwd`;
    (None, False) outside git. The one place training, evaluation, data and reports read their code version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", *status_args], cwd=cwd, capture_output=True, text=True, check=False
        )
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit.stdout.strip(), bool(status.stdout.strip())


def code_version(*pathspec: str) -> str:
    """Git commit of this checkout, with '+dirty' when tracked files under `pathspec` (default: the whole checkout)
    have uncommitted changes; 'unknown' outside git. Data manifests scope it to data_scripts/ (the converters)."""
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)), "--untracked-files=no", "--", *pathspec)
    return "unknown" if commit is None else commit + ("+dirty" if dirty else "")


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


def machine_info() -> dict:
    """The machine a run or a benchmark ran on (CPU model from /proc/cpuinfo: platform.processor() is often '' on
    Linux; the GPU when there is one). The one helper runs, benchmarks and reports record it with."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count(),
    }


PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed"]


def package_versions(packages: list[str] = PACKAGES) -> dict:
    """Installed version of each package (None when absent)."""
    import importlib.metadata as md

    versions = {}
    for name in packages:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions
