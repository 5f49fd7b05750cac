#!/usr/bin/env bash
# The test suite, from a fresh clone: sets up .venv (idempotent), Chromium for the browser test, then runs pytest with
# the Hub offline (HF_HUB_OFFLINE=1; the `network` tier reaches the package index, nothing else does). Extra args go
# to pytest: with none it runs every tier; `-m "not slow"` is the fast loop (markers in pyproject.toml: slow,
# distributed, browser, network, serving). CI runs it with -m "not serving", then scripts/serve_check.sh.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
# The fast loop runs no browser test, so it installs no browser either.
if [[ "$*" != *"not slow"* ]] && ! bash scripts/install_browser.sh; then
  if [ -n "${CI:-}" ]; then exit 1; fi
  echo "WARNING: no chromium on PATH; the browser test will be skipped (it runs in CI)." >&2
fi
# Browser screenshots of the demo tests land here (outputs/ is not tracked).
export MINILLAVA_TEST_ARTEFACTS="${MINILLAVA_TEST_ARTEFACTS:-$PWD/outputs/test-artefacts}"
# One style, enforced: lint and formatting fail the run before any test does.
ruff check .
ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"  # no path given: pyproject.toml's testpaths (tests/)
