"""Shared formatting of REPORT.md's cells and lines (scripts/make_report.py and its report_* section modules): numbers,
mean ± std, markdown tables, optional JSON inputs, the code version and a machine."""

import json
import os

NOT_MEASURED = "not measured"


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return NOT_MEASURED
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e3 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def mean_std(mean, std) -> str:
    return NOT_MEASURED if mean is None else fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_json(path: str | None):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def short_version(version: str) -> str:
    """data_scripts.run_metadata.code_version() shortened: 10 hex digits, '+dirty' kept."""
    commit, _, dirty = str(version).partition("+")
    return commit[:10] + (f"+{dirty}" if dirty else "")


def machine_line(machine: dict | None = None) -> str:
    """One line for a recorded machine (data_scripts.run_metadata.machine_info's fields), or this one when None."""
    if machine is None:
        from data_scripts.run_metadata import machine_info

        machine = machine_info()
    gpu = machine.get("gpu") or "no GPU"
    cpu = machine.get("cpu_model") or machine.get("machine", "unknown CPU")
    return f"{cpu}, {machine.get('cpu_count')} cores, {gpu}"
