"""Check every row of a split before training: drop what would fail later, count it by reason, name it in a report.

A run then never dies hours in on one corrupt image or malformed row. The rule for a row is the training collator's
own (`check_row`: images decode fully, messages render with the chat template, the answer is labelled, the row fits
`max_length`), handed in as a function so this module stays free of tensors and tokenizers.
"""

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)
REASON, DETAIL = "_check_reason", "_check_detail"


def check_rows(
    ds,
    check_row: Callable[[dict], tuple[str, str] | None],
    *,
    name: str,
    settings: str,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    write_cache: bool = True,
):
    """(rows that pass; report). `settings` names what the verdicts depend on besides the data
    (template, tokens per image, max_length): verdicts are cached in `cache_dir` under the dataset fingerprint + those
    settings, so a resumed run does not check again. Only the process with `write_cache` writes them (ranks share
    `cache_dir`), atomically; an unreadable cache is checked again. The report: {"split", "rows", "kept",
    "dropped": {reason: n}, "rows_dropped": [{"index", "id", "reason", "detail"}]}."""
    key = hashlib.sha256(f"{ds._fingerprint}:{settings}".encode()).hexdigest()[:24]
    cache = os.path.join(cache_dir, f"{name}-{key}.json") if cache_dir else None
    report = read_cached_report(cache, len(ds)) if cache else None
    if report is not None:
        logger.info(f"Data check of {name}: cached verdicts ({cache}).")
    else:
        report = _check(ds, check_row, name, num_proc)
        if cache and write_cache:
            os.makedirs(cache_dir, exist_ok=True)
            write_json_atomically(cache, report)
    bad = {r["index"] for r in report["rows_dropped"]}
    # In memory: an indices file written next to a save_to_disk dataset would later be read as data by load_dataset.
    kept = ds.select([i for i in range(len(ds)) if i not in bad], keep_in_memory=True) if bad else ds
    return kept, report


def write_json_atomically(path: str, obj) -> None:
    """A temporary file of this process's own, fsync, rename: a kill leaves the old file or the whole new one, never
    half of it, and two processes writing at once never mix their bytes."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_cached_report(cache: str, rows: int) -> dict | None:
    """The cached report, or None when there is none or it is unreadable (discarded with a warning: an older
    run_sft's plain write, killed half-way, left an empty or cut file)."""
    if not os.path.exists(cache):
        return None
    try:
        with open(cache) as f:
            report = json.load(f)
        if not isinstance(report, dict) or report.get("rows") != rows or not isinstance(report["rows_dropped"], list):
            raise ValueError(f"not a data-check report of {rows} rows")
        return report
    except (OSError, ValueError, KeyError) as error:
        logger.warning(f"Discarding the data-check cache {cache} ({type(error).__name__}: {error}); checking again.")
        return None


def _check(ds, check_row, name: str, num_proc: int | None) -> dict:
    def verdicts(batch):  # a pyarrow Table: images still encoded, so a corrupt one reaches check_row, not datasets
        rows = batch.to_pylist()
        results = [check_row(row) or ("", "") for row in rows]
        return {
            REASON: [r[0] for r in results],
            DETAIL: [r[1] for r in results],
            "id": [row.get("id") for row in rows],
        }

    # Only the small verdict columns are materialised, in memory: casting the images column to decode=False or
    # keeping a mapped copy would rewrite the whole split (image bytes included) into a cache file next to the data,
    # where load_dataset would later read it as data.
    verdicts = (
        ds.with_format("arrow")
        .map(
            verdicts,
            batched=True,
            batch_size=64,
            remove_columns=ds.column_names,
            num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 2 * num_proc else None,
            keep_in_memory=True,
            load_from_cache_file=False,
            desc=f"Checking {name} rows",
        )
        .with_format(None)
    )
    dropped = [
        {"index": i, "id": v["id"], "reason": v[REASON], "detail": v[DETAIL]}
        for i, v in enumerate(verdicts)
        if v[REASON]
    ]
    return {
        "split": name,
        "rows": len(ds),
        "kept": len(ds) - len(dropped),
        "dropped": dict(Counter(r["reason"] for r in dropped)),
        "rows_dropped": dropped,
    }


def enforce_skip_fraction(reports: list[dict], max_skip_fraction: float, report_path: str) -> None:
    """Refuse to start when more than `max_skip_fraction` of any split's rows are bad (a wrong setting, not a few
    bad rows); otherwise log what was dropped."""
    for report in reports:
        n_dropped = report["rows"] - report["kept"]
        if not n_dropped:
            continue
        share = n_dropped / max(report["rows"], 1)
        ids = [r["id"] for r in report["rows_dropped"][:5]]
        message = (
            f"Data check of {report['split']}: {n_dropped} of {report['rows']} rows dropped ({share:.1%}) by reason "
            f"{report['dropped']}, e.g. ids {ids}; every one is listed in {report_path}."
        )
        if share > max_skip_fraction:
            raise ValueError(
                f"{message} That is more than max_skip_fraction={max_skip_fraction:.1%}: fix the data or the setting "
                "the reasons point at (e.g. raise max_length for too_long) before training."
            )
        logger.warning(message)
