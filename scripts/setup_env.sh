#!/usr/bin/env bash
# Idempotent set-up, sourced by the Quickstart scripts: a .venv with torch 2.13 (CPU build) and this project's
# [dev] extras. Quick when already done (re-installs only when setup.py changed). Usage: source scripts/setup_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
STAMP=.venv/.minillava-installed
WANT="$(sha256sum setup.py | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: a plain `torch` (or a range that admits a newer release) pulls GBs of CUDA wheels.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False
