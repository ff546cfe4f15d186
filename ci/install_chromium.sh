#!/usr/bin/env bash
# Install headless Chromium from Debian's packages, for the report test (tests/e2e/test_report_browser.py).
# Usage: bash ci/install_chromium.sh   (root). Idempotent: an installed package is not fetched again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "chromium: already installed ($(chromium --headless --no-sandbox --version 2>/dev/null))"
  exit 0
fi
[[ $EUID -eq 0 ]] || { echo "ci/install_chromium.sh: installing chromium needs root" >&2; exit 1; }
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
echo "chromium: installed ($(chromium --headless --no-sandbox --version 2>/dev/null))"
