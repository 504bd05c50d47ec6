"""The dashboard's HTTP face: panels, errors, static files and mounting, through a real ASGI client."""

from __future__ import annotations

import asyncio
from importlib import resources

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from mlscale.monitoring.dashboard import DashboardSources, create_dashboard_app, mount_dashboard


def run(coro):
    return asyncio.run(coro)


async def fetch(app, *requests):
    """Send requests in order through one ASGI client; returns the responses."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        return [await client.request(method, url, headers=headers or {}) for method, url, headers in requests]


def get(app, url, headers=None):
    return run(fetch(app, ("GET", url, headers)))[0]


def test_panels_without_sources_say_not_configured():
    app = create_dashboard_app(DashboardSources(models=lambda: None))
    body = get(app, "/api/summary").json()
    assert body["metrics"] == {"status": "not configured"}
    for panel in ("models", "drift", "alerts", "cameras"):
        assert body[panel] == {"status": "not configured", "data": None}


def test_a_failing_source_shows_its_error_and_the_others_still_draw():
    def broken():
        raise RuntimeError("drift store unreachable")

    app = create_dashboard_app(
        DashboardSources(
            models=lambda: [{"name": "iris", "versions": ["1", "2"], "aliases": {"prod": "2"}, "ready": True}],
            drift=broken,
            alerts=lambda: [{"rule": "latency", "state": "firing", "since": 10.0, "value": 0.7}],
        )
    )
    response = get(app, "/api/summary")
    assert response.status_code == 200
    body = response.json()
    assert body["drift"]["status"] == "error"
    assert "drift store unreachable" in body["drift"]["error"]
    assert body["models"]["data"][0]["aliases"] == {"prod": "2"}
    assert body["alerts"]["data"][0]["state"] == "firing"


def test_metrics_history_grows_with_each_poll_and_a_broken_scrape_keeps_it():
    registry = CollectorRegistry()
    requests = Counter("mlscale_requests", "r", ["model", "version", "outcome"], registry=registry)
    fail = {"now": False}

    def metrics_text():
        if fail["now"]:
            raise OSError("worker metrics directory vanished")
        return generate_latest(registry).decode()

    app = create_dashboard_app(DashboardSources(metrics_text=metrics_text))
    app.history.min_interval = 0.0
    assert get(app, "/api/summary").json()["metrics"]["window"] is None
    requests.labels("iris", "1", "success").inc(7)
    requests.labels("iris", "1", "error").inc(3)
    metrics = get(app, "/api/summary").json()["metrics"]
    assert metrics["status"] == "ok"
    assert metrics["window"]["requests"] == 10
    assert metrics["window"]["error_ratio"] == pytest.approx(0.3)
    fail["now"] = True
    metrics = get(app, "/api/summary").json()["metrics"]
    assert metrics["status"] == "error" and "vanished" in metrics["error"]
    assert metrics["window"]["requests"] == 10  # what was already scraped is still shown


@pytest.mark.parametrize("window", ["abc", "0", "100000", "nan"])
def test_bad_window_is_a_400_with_a_reason(window):
    response = get(create_dashboard_app(DashboardSources()), f"/api/summary?window={window}")
    assert response.status_code == 400
    assert "window must be" in response.json()["error"]


def test_window_parameter_is_honoured():
    body = get(create_dashboard_app(DashboardSources()), "/api/summary?window=12.5").json()
    assert body["window_seconds"] == 12.5


def test_read_only_and_unknown_paths():
    app = create_dashboard_app(DashboardSources())
    post, missing = run(fetch(app, ("POST", "/api/summary", None), ("GET", "/static/../secret", None)))
    assert post.status_code == 405 and "read-only" in post.json()["error"]
    assert missing.status_code == 404 and "error" in missing.json()


def test_page_loads_its_chart_library_locally_with_long_caching():
    app = create_dashboard_app(DashboardSources())
    page = get(app, "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    src = page.text.split('<script src="')[1].split('"')[0]
    assert src.startswith("static/plotly-")
    bundled = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    plain, zipped = run(fetch(app, ("GET", "/" + src, None), ("GET", "/" + src, {"accept-encoding": "gzip"})))
    assert plain.content == bundled
    assert "immutable" in plain.headers["cache-control"]
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == bundled  # httpx undid the gzip
    assert zipped.num_bytes_downloaded < len(bundled) / 3
    again = get(app, "/" + src, {"if-none-match": plain.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_mounted_under_a_prefix_with_root_redirect():
    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"inference " + scope["path"].encode()})

    app = mount_dashboard(inner, create_dashboard_app(DashboardSources()), "/dashboard")
    root, bare, page, api, other = run(
        fetch(
            app,
            ("GET", "/", None),
            ("GET", "/dashboard", None),
            ("GET", "/dashboard/", None),
            ("GET", "/dashboard/api/summary", None),
            ("GET", "/v2/models/iris", None),
        )
    )
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    # Without the trailing slash the page's relative URLs would miss the prefix: redirect first.
    assert bare.status_code == 307 and bare.headers["location"] == "/dashboard/"
    assert page.status_code == 200 and "<html" in page.text
    assert api.json()["metrics"] == {"status": "not configured"}
    assert other.text == "inference /v2/models/iris"


def test_prefix_dispatch_without_root_path():
    """The server's own router passes the full path and no root_path; ``prefix`` covers that."""
    dashboard = create_dashboard_app(DashboardSources(), prefix="/dashboard")

    async def router(scope, receive, send):
        assert scope["path"].startswith("/dashboard")
        await dashboard(scope, receive, send)

    bare, api, static = run(
        fetch(
            router,
            ("GET", "/dashboard", None),
            ("GET", "/dashboard/api/summary", None),
            ("GET", "/dashboard/static/dashboard.css", None),
        )
    )
    assert bare.status_code == 307 and bare.headers["location"] == "/dashboard/"
    assert api.json()["metrics"] == {"status": "not configured"}
    assert static.status_code == 200 and static.headers["content-type"].startswith("text/css")


def test_event_snapshots_are_served_by_name_only(tmp_path):
    (tmp_path / "dock-1.jpg").write_bytes(b"\xff\xd8fake jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    outside = tmp_path.parent / "secret.jpg"
    outside.write_bytes(b"secret")
    app = create_dashboard_app(DashboardSources(), snapshots_dir=tmp_path)
    ok, other_type, traversal, missing = run(
        fetch(
            app,
            ("GET", "/snapshots/dock-1.jpg", None),
            ("GET", "/snapshots/notes.txt", None),
            ("GET", "/snapshots/..%2Fsecret.jpg", None),
            ("GET", "/snapshots/nope.jpg", None),
        )
    )
    assert ok.status_code == 200 and ok.content == b"\xff\xd8fake jpeg"
    assert ok.headers["content-type"] == "image/jpeg"
    for response in (other_type, traversal, missing):
        assert response.status_code == 404 and "error" in response.json()
    without = get(create_dashboard_app(DashboardSources()), "/snapshots/dock-1.jpg")
    assert without.status_code == 404


def test_numpy_values_and_a_bad_histogram_do_not_break_the_drift_panel():
    import numpy as np

    def drift():
        edges = np.linspace(0.0, 1.0, 3)
        return {
            "monitors": [
                {
                    "name": "m",
                    "features": [
                        {
                            "feature": "ok",
                            "value": np.float32(0.25),
                            "drifted": np.bool_(True),
                            "reference": {"bins": edges, "counts": np.array([3, 1])},
                            "current": {"bins": edges, "counts": np.array([1, 1], dtype=np.int64)},
                            "rows": np.int64(7),
                        },
                        {
                            "feature": "bad",
                            "reference": {"bins": [0, 1, 2], "counts": [1, 1]},
                            "current": {"bins": [0, 5, 9], "counts": [1, 1]},
                        },
                    ],
                }
            ]
        }

    body = get(create_dashboard_app(DashboardSources(drift=drift)), "/api/summary").json()
    assert body["drift"]["status"] == "ok"
    ok, bad = body["drift"]["data"]["monitors"][0]["features"]
    assert ok["value"] == 0.25 and ok["drifted"] is True
    assert ok["histogram"]["reference"] == [0.75, 0.25]
    assert bad["histogram"] is None and "bin edges" in bad["error"]
