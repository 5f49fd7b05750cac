"""Run metadata: the code version (git commit + dirty flag), the machine and the package versions that training
(run_info.json), evaluation (eval_results.json), data manifests, benchmarks and reports record. The one place each is
read; no torch at import (machine_info imports it when called)."""

import os
import subprocess


def git_state(cwd: str, *status_args: str) -> tuple[str | None, bool]:
    """(HEAD commit, whether `git status --porcelain *status_args` lists a change) of the checkout holding `cwd`;
    (None, False) outside git."""
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


def machine_info() -> dict:
    """The machine a run or a benchmark ran on (CPU model from /proc/cpuinfo: platform.processor() is often '' on
    Linux; the GPU when there is one)."""
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
