"""Screenshot of a running dashboard for the docs (Debian's chromium via Playwright; no download).

    .venv/bin/python scripts/dashboard_screenshot.py http://127.0.0.1:8000/dashboard/ docs/img/demo-dashboard.png
"""

from __future__ import annotations

import shutil
import sys

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(url: str, output: str, wait_ms: int = 8000) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (bash scripts/ensure-chromium.sh)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.wait_for_timeout(wait_ms)  # a few refreshes, so the time series have points
        page.screenshot(path=output, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
