"""Settings of the gateway (``[gateway]`` in mlscale.toml); imports nothing heavy."""

from __future__ import annotations

import msgspec


class GatewaySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A load balancer in front of server replicas on one or many hosts."""

    host: str = "127.0.0.1"
    port: int = 9000
    # Base URLs of the replicas, e.g. ["http://10.0.0.5:8000", "http://10.0.0.6:8000"].
    backends: list[str] = msgspec.field(default_factory=list)
    # p2c: power of two choices on in-flight requests (the default; good for mixed latencies);
    # hash: consistent hashing on the model name, so each model's caches stay warm on few replicas.
    strategy: str = "p2c"
    # hash only: a replica holding more than this times the average requests in flight is passed
    # over for the next one on the ring (consistent hashing with bounded loads).
    hash_load_factor: float = 1.25
    # Seconds between two health probes of a replica (GET /v2/health/ready on a new connection).
    health_interval: float = 1.0
    # Longest wait for a probe's answer, connecting included.
    health_timeout: float = 1.0
    # Consecutive failures (probes, and requests that got no answer) before a replica is taken out
    # (outlier ejection); one successful probe brings it back.
    unhealthy_after: int = 2
    # A replica taken out again soon after it came back stays out longer each time: 0, 1, 3, 7 ...
    # health intervals, at most this many seconds (after this long in service it starts again at 0).
    max_ejection_seconds: float = 30.0
    # Other replicas tried when one refuses (connection error or 503) before the client sees an error.
    retries: int = 2
    # Longest wait for a replica's answer to one try (a slow model may need long).
    timeout: float = 30.0
    # Longest wait for a connection to a replica: a replica on the same network accepts in
    # milliseconds, so a host that does not answer is given up on (and the request retried on
    # another) long before ``timeout``.
    connect_timeout: float = 1.0
    # Longest pause (seconds) for a replica that answered 503 for a model: it gets none of that
    # model's requests for its Retry-After, capped here, while another replica can take them.
    shed_pause: float = 0.1
    max_body_bytes: int = 64 * 1024 * 1024
    # forward: pass Authorization through, each replica checks it ([auth] on the replicas);
    # terminate: the gateway checks keys, scopes and quotas ([auth], [quotas] of its project
    # file) and strips the header, for replicas reachable only from the gateway.
    auth: str = "forward"

    def __post_init__(self) -> None:
        if self.strategy not in ("p2c", "hash"):
            raise ValueError("gateway.strategy must be p2c or hash")
        if self.auth not in ("forward", "terminate"):
            raise ValueError("gateway.auth must be forward or terminate")
        if self.hash_load_factor < 1:
            raise ValueError("gateway.hash_load_factor must be at least 1")
        if self.max_ejection_seconds < 0:
            raise ValueError("gateway.max_ejection_seconds must not be negative")
        if self.retries < 0 or self.unhealthy_after < 1:
            raise ValueError("gateway.retries must be >= 0 and unhealthy_after >= 1")
        for name in ("health_interval", "health_timeout", "timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"gateway.{name} must be a positive number of seconds")
