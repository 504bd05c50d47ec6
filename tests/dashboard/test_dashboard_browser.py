"""The page in a real headless Chromium (Debian's, driven by Playwright) against a running server:
it loads without console errors, fetches nothing from the internet, and its charts plot exactly what
the Prometheus registry produced. It also writes the screenshot used in the docs."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium not installed (scripts/ensure-chromium.sh)")
# The docs' picture is refreshed only on request (MLSCALE_UPDATE_SCREENSHOT=1), so a test run leaves the tree clean.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Reference PromQL histogram_quantile over cumulative (bound, count) pairs, written out plainly."""
    total = buckets[-1][1]
    rank = q * total
    below_bound, below_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return below_bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (count - below_count)
        below_bound, below_count = bound, count
    raise AssertionError("unreachable")


def trace(page, chart: str, index: int) -> dict:
    return page.evaluate(
        "([id, i]) => { const t = document.getElementById(id).data[i];"
        " const x = t.x.map((v) => (v instanceof Date ? v.getTime() / 1000 : v));"
        " return {x, y: t.y, name: t.name}; }",
        [chart, index],
    )


def test_page_draws_the_registry_data_without_errors(live_dashboard, tmp_path):
    screenshot = DOCS_SCREENSHOT if os.environ.get("MLSCALE_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    foreign: list[str] = []
    host = urlparse(live_dashboard.url).netloc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith("data:") or urlparse(r.url).netloc == host else foreign.append(r.url)
                ),
            )
            page.goto(live_dashboard.url)  # "/" redirects to /dashboard/
            assert page.url.endswith("/dashboard/")
            # Enough history for the series to show the load's shape.
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-requests').data; return d && d[0].x.length >= 10; }",
                timeout=20_000,
            )
            requests = trace(page, "chart-requests", 0)
            p50 = trace(page, "chart-latency", 0)
            p99 = trace(page, "chart-latency", 2)
            hit = trace(page, "chart-cache", 0)
            with live_dashboard.traffic.lock:
                scrapes = list(live_dashboard.traffic.scrapes)

            # Point i of a series is the step from scrape i to scrape i + 1 (x carries scrape i + 1's time).
            n = len(requests["y"])
            assert len(scrapes) >= n + 1
            times = requests["x"]
            checked = 0
            for i in range(1, n):
                before, after = scrapes[i], scrapes[i + 1]
                dt = times[i] - times[i - 1]
                assert requests["y"][i] == pytest.approx((after.requests - before.requests) / dt, rel=0.02)
                delta = [
                    (b, c - c0) for (b, c), (_, c0) in zip(after.latency_buckets, before.latency_buckets, strict=True)
                ]
                if delta[-1][1] > 0:
                    assert p50["y"][i] == pytest.approx(quantile(0.5, delta) * 1000, rel=1e-6)
                    assert p99["y"][i] == pytest.approx(quantile(0.99, delta) * 1000, rel=1e-6)
                    checked += 1
                hits, misses = after.hits - before.hits, after.misses - before.misses
                assert hit["y"][i] == pytest.approx(100 * hits / (hits + misses), rel=1e-6)
            assert checked >= 5
            assert max(requests["y"]) > 0

            batches = trace(page, "chart-batch", 0)
            assert sum(batches["y"]) > 0 and len(batches["x"]) == 8  # 7 bounds + the overflow bucket
            models = page.inner_text("#table-models tbody")
            assert "iris" in models and "fraud" in models and "prod → v2" in models and "loading" in models
            assert "v2 · 90.0%" in models
            assert page.get_attribute("#table-models .chip.failed", "title") == "model.onnx is missing"
            assert page.locator("#drift-monitors .feature").count() == 5
            assert page.locator("#drift-monitors .feature.drifted").count() == 2
            drift = page.evaluate("() => document.getElementById('drift-chart-0-0').data.map(t => t.y)")
            assert len(drift) == 2 and sum(drift[0]) == pytest.approx(1.0) and sum(drift[1]) == pytest.approx(1.0)
            assert page.inner_text("#table-alerts tbody").splitlines()[0].startswith("firing")
            assert page.locator("#cameras .camera").count() == 3
            assert "offline" in page.inner_text("#cameras .camera >> nth=2")
            assert "connection refused" in page.inner_text("#cameras .camera >> nth=2")
            # Event snapshots come from the events folder through the dashboard and really decode.
            page.wait_for_function(
                "() => [...document.querySelectorAll('#cameras img')].every((i) => i.complete && i.naturalWidth === 96)"
            )
            assert page.locator("#cameras img").count() == 2
            assert page.inner_text("#stat-models .value") == "2 / 3"
            assert page.inner_text("#status-text").startswith("live")

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []
    assert foreign == []


def test_polls_reaching_different_workers_merge_and_missing_sources_say_so(two_worker_dashboard):
    from playwright.sync_api import sync_playwright

    live, dashboards = two_worker_dashboard
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.url + "dashboard/")
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-requests').data; return d && d[0].x.length >= 8; }",
                timeout=20_000,
            )
            x = trace(page, "chart-requests", 0)["x"]
            for panel in ("cameras", "drift"):
                assert "unconfigured" in page.get_attribute(f"#panel-{panel}", "class")
                assert page.inner_text(f"#panel-{panel} .empty") == "not configured"
                assert not page.is_visible(f"#panel-{panel} > :not(h2):not(.empty)")
            assert page.inner_text("#panel-alerts .empty") == (
                "source failed: ConnectionError: alert store unreachable"
            )
            assert page.inner_text("#stat-models .value") == "2 / 3"  # the working panels still draw
        finally:
            browser.close()
    assert errors == []
    assert x == sorted(x) and len(set(x)) == len(x)
    # The chart holds points from both workers' histories, not just whichever answered last.
    for dashboard in dashboards:
        own = dashboard.history.summary(30.0)["series"]["time"]
        assert any(abs(t - shown) < 0.002 for t in own for shown in x)
