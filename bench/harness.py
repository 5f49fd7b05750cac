"""What every benchmark shares: the machine record, interleaved timing (A,B,B,A,... in one process, medians), the
CLI (--quick, --json) and the JSON/table output. Shared cores make absolute times noisy; ratios of interleaved
medians are what we report."""

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from data_scripts.run_metadata import machine_info as run_machine_info

NO_GPU_NOTE = "no GPU figure exists yet: no GPU was lent to the session that produced these results"


def machine_info() -> dict:
    """data_scripts.run_metadata's machine record (the one runs and reports use) + what a benchmark also wants: the
    platform strings, library versions and the load average at the start."""
    info = {
        **run_machine_info(),
        "platform_processor": platform.processor(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if info["gpu"] is None:
        info["gpu_note"] = NO_GPU_NOTE
    return info


def interleave(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call for each candidate, run in turn in the same process: A,B then B,A, ... so that a neighbour's
    job slowing the shared cores hits every candidate alike. Warm-up calls (allocator, kernels, caches) not kept."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def ratios(num: list[float], den: list[float]) -> dict:
    """num/den three ways: of the medians (the headline), of the minima (the least disturbed runs: noise from shared
    cores only ever adds time) and the median of per-repeat ratios (neighbouring runs share the same load)."""
    return {
        "of_medians": ratio(statistics.median(num), statistics.median(den)),
        "of_minima": ratio(min(num), min(den)),
        "paired_median": statistics.median(ratio(a, b) for a, b in zip(num, den)),
    }


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (tests, smoke runs)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default per mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


SIZED_REPEATS = {"tiny": 20, "mid": 4}  # timed repeats per size in normal mode (mid steps are ~50x slower)


def sizes_and_repeats(args, quick_repeats: int) -> list[tuple[str, int]]:
    """[(size, repeats)] for the sized benchmarks: --sizes (default tiny, plus mid unless --quick), --repeats
    overriding the per-size default."""
    sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "mid"])
    return [(size, args.repeats or (quick_repeats if args.quick else SIZED_REPEATS.get(size, 4))) for size in sizes]


def start(args) -> dict:
    """Apply --threads / --seed and return the machine record (taken after the thread setting)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return machine_info()


def finish(name: str, args, machine: dict, results: dict, notes: list[str] | None = None) -> dict:
    """Bundle, print as JSON lines' summary and write --json; returns the bundle (what tests read)."""
    machine = {**machine, "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    out = {"benchmark": name, "quick": bool(args.quick), "machine": machine, "results": results, "notes": notes or []}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return out


def print_machine(machine: dict) -> None:
    m = machine
    print(
        f"machine: {m['cpu_model'] or m['machine']} (platform.processor()={m['platform_processor']!r}), "
        f"{m['cpu_count']} cores, torch threads {m['torch_threads']}, load avg {m['load_average_1min']:.2f}, "
        f"torch {m['torch']}, transformers {m['transformers']}"
    )
    if machine.get("gpu_note"):
        print(f"note: {machine['gpu_note']}")


def print_table(headers: list[str], rows: list[list]) -> None:
    """A plain aligned table (numbers to 4 significant digits)."""
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
