#!/usr/bin/env bash
# The serving check: builds vLLM (CPU) and llama.cpp's llama-server into their cache (scripts/install_serving.sh,
# idempotent: minutes the first time, seconds after), then runs tests/test_serving.py, where exported tiny models
# served on 127.0.0.1 must give our model's answers. Extra args go to pytest. Usage: bash scripts/serve_check.sh
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
bash scripts/install_serving.sh all
# Here a missing engine is an error, not a skip.
MINILLAVA_SERVING_REQUIRED=1 python -m pytest -q -s -p no:cacheprovider -m serving tests/test_serving.py "$@"
