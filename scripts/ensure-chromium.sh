#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's browser tests when it is missing.
# The tests drive it with Playwright (never `playwright install`: no browser downloads at run time).
# Without root, or without apt-get, it only reports; the browser test then skips cleanly.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium not found and cannot install it (needs root and apt-get); browser tests will skip" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    echo "ensure-chromium: installing chromium failed; browser tests will skip" >&2
fi
exit 0
