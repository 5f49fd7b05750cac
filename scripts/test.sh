#!/usr/bin/env bash
# The test suite, from a fresh clone: sets up .venv (idempotent), then runs pytest offline. Extra args go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
python -m pytest -q -p no:cacheprovider tests "$@"
