"""With auth on, the page served by a real `mlscale serve` asks for a key in a real Chromium, refuses
a wrong one, draws the server's models with a read key, and keeps the key out of URLs, cookies,
localStorage and the page itself (this tab's sessionStorage only)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_support import RunningServer, build_test_repository

from mlscale.auth.keys import add_key

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium not installed (scripts/ensure-chromium.sh)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard-auth")
    repository = build_test_repository(root / "models")
    keys = {
        "read": add_key(root / "keys.json", "viewer", ["read"]),
        "infer": add_key(root / "keys.json", "app", ["infer"]),
    }
    (root / "mlscale.toml").write_text('[auth]\nenabled = true\nkeys_file = "keys.json"\n')
    server = RunningServer(repository, workers=1, config=root / "mlscale.toml")
    yield server, keys
    server.stop()


def test_the_page_asks_for_a_key_and_shows_data_only_with_a_read_key(secured):
    from playwright.sync_api import sync_playwright

    server, keys = secured
    urls: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: urls.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_selector("#auth-form:not([hidden])", timeout=10_000)
            assert page.locator("#table-models tbody tr").count() == 0

            page.fill("#auth-key", keys["read"][:-2] + "xx")  # wrong
            page.click("#auth-form button")
            page.wait_for_function(
                "() => document.getElementById('auth-error').textContent.includes('not accepted')", timeout=10_000
            )
            page.fill("#auth-key", keys["infer"])  # valid, but no read scope
            page.click("#auth-form button")
            page.wait_for_function(
                "() => document.getElementById('auth-error').textContent.includes('read scope')", timeout=10_000
            )

            page.fill("#auth-key", keys["read"])
            page.click("#auth-form button")
            page.wait_for_selector("#auth-form[hidden]", state="attached", timeout=10_000)
            page.wait_for_function("() => window.__dashboard.updates >= 2", timeout=15_000)
            models = page.locator("#table-models tbody").inner_text()
            assert "iris" in models and "echo" in models

            stored = page.evaluate("() => sessionStorage.getItem('mlscale.dashboard.key')")
            assert stored == keys["read"]
            assert page.evaluate("() => JSON.stringify(localStorage)") == "{}"
            assert page.context.cookies() == []
            assert keys["read"] not in page.content()
            assert page.input_value("#auth-key") == ""
        finally:
            browser.close()
    assert urls and all(keys["read"] not in u and keys["infer"] not in u for u in urls)
