#!/usr/bin/env bash
# Installs Debian's `chromium` for the browser tests (tests/test_demo.py drives it with Playwright; no browser
# download). Idempotent: does nothing when `chromium` is already on PATH. Needs root and apt-get.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(command -v chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: apt-get not found; install Chromium by hand so that \`chromium\` is on PATH." >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser.sh: must run as root to apt-get install chromium (try: sudo bash $0)." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "install_browser.sh: chromium still not on PATH after install." >&2; exit 1; }
echo "chromium installed: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
