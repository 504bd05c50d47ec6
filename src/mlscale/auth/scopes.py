"""Which scope each route of the public HTTP API needs; one table for the server and the gateway.

``None`` means open: health probes (load balancers and Kubernetes carry no credentials) and the
dashboard's page shell and scripts, which hold no data (its data API needs ``read``).
"""

from __future__ import annotations


def required_scope(method: str, path: str) -> str | None:
    """``infer``, ``read``, ``admin`` or None (open) for a request line."""
    parts = path.strip("/").split("/")
    head = parts[0]
    if head == "v2":
        rest = parts[1:]
        if rest[:1] == ["health"]:
            return None
        if rest[:1] == ["repository"]:
            if rest[1:] == ["index"]:
                return "read"
            return "admin"  # load, unload, cache purge
        if rest[:1] == ["models"] and method == "POST" and rest[-1:] == ["infer"]:
            return "infer"
        return "read"  # server and model metadata, readiness
    if head == "v1" and parts[1:2] in (["features"], ["events"]):
        return "infer"
    if head == "dashboard":
        sub = parts[1:2]
        if sub in (["api"], ["snapshots"]):
            return "read"
        return None
    if path == "/":
        return None  # a redirect to the dashboard
    return "read"  # /metrics, /gateway/backends, anything unknown (a 404 reveals nothing then)
