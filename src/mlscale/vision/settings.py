"""Settings of the video part, the ``[vision]`` section of mlscale.toml.

Kept free of heavy imports (no OpenCV, no PyAV) because config.py imports it on every command.
Boxes and zones are in normalized coordinates (0..1 of width and height) so one config works at any
detection resolution.
"""

from __future__ import annotations

import msgspec

ZONE_KINDS = ("restricted",)


class ZoneSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A named region of the image; ``restricted`` zones raise an event as soon as anyone is inside."""

    name: str
    # x0, y0, x1, y1 as fractions of the frame.
    box: tuple[float, float, float, float]
    # What the zone means; "restricted" is the only kind so far. Anything else is an error, not a
    # zone silently ignored.
    kind: str = "restricted"

    def __post_init__(self) -> None:
        if self.kind not in ZONE_KINDS:
            raise ValueError(f"zone {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(ZONE_KINDS)})")
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"zone {self.name!r}: box must be x0 < x1 and y0 < y1 within 0..1, got {self.box}")


class RuleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Hand-written rules that complement the model of normal activity learned in the warm-up."""

    # Expected direction of motion (dx, dy); None lets the learned per-zone model judge direction alone.
    flow: tuple[float, float] | None = None
    # Someone staying within a small radius longer than this is loitering.
    loiter_seconds: float = 8.0
    # More moving objects than this at once is a crowd (0 = only the learned model judges).
    max_objects: int = 0
    # Score above which a frame counts as anomalous (scores are scaled so 1.0 is the boundary).
    threshold: float = 1.0


class FeedSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One camera: where its frames come from and how often and how large they are analysed."""

    name: str
    # A video file, an image folder, an rtsp:// or http(s):// URL, or "synthetic".
    source: str = "synthetic"
    # Pace of file and synthetic sources (frames per second); streams run at their own pace.
    fps: float = 15.0
    # How many frames per second the detector looks at; frames in between are skipped on purpose.
    detect_fps: float = 5.0
    # Detection resolution (width, height): frames are downscaled to this before analysis.
    resolution: tuple[int, int] = (160, 120)
    # Restart a file or folder at its end (a demo camera that never stops).
    loop: bool = True
    # Synthetic sources: scenario ("normal", "mixed", or one anomaly kind), seed and frame size.
    scenario: str = "mixed"
    seed: int = 0
    size: tuple[int, int] = (320, 240)
    zones: list[ZoneSettings] = msgspec.field(default_factory=list)
    rules: RuleSettings = msgspec.field(default_factory=RuleSettings)
    # Optional ONNX model scoring batches of frames (N, 1, H, W) float32 in 0..1 -> (N,) scores.
    onnx_model: str | None = None


class VisionSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All cameras plus where events go."""

    feeds: list[FeedSettings] = msgspec.field(default_factory=list)
    # Events log (events.jsonl) and JPEG snapshots are written here.
    events_dir: str = "vision-events"
    # Seconds of each feed used to learn what normal activity looks like before scoring.
    warmup_seconds: float = 10.0
    # A feed that drops is reopened after backoff_initial, doubling up to backoff_max seconds.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Processes to spread the feeds over (1 = threads in this process; see docs/architecture.md).
    workers: int = 1
    # Seconds an event kind stays quiet on a camera after it fired, so one incident is one event.
    cooldown_seconds: float = 10.0
    # Several hosts (vision/hosts.py): every `vision run` with the same membership and group shares
    # the feeds by rendezvous hashing over the live members. "" = this process runs every feed.
    # redis://..., nats://... or embedded:PATH (several processes of one host), as [streams] broker.
    membership: str = ""
    group: str = "mlscale-vision"
    # This member's name (default: host-pid-random); two live members must not share one.
    member: str = ""
    # Seconds without a heartbeat after which a member's feeds move to the others. A member cut
    # off stops its own feeds when this has passed since its last heartbeat went out.
    lease_seconds: float = 3.0
    # Where feed epochs live (fencing a member that lost a feed): redis://... or postgresql://...
    # (any stream checkpoint store). "" = the membership Redis, or an SQLite file beside an
    # embedded membership; NATS membership needs one named here.
    fencing: str = ""
    # Topic on the membership broker that receives every event (with camera, member and epoch),
    # the cluster's shared record; "" = events only in each host's events_dir and sinks.
    events_topic: str = ""

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {self.lease_seconds}")
        if self.membership and self.workers > 1:
            raise ValueError(
                "membership and workers > 1 do not combine: run one `mlscale vision run` per process instead"
            )
        if self.events_topic and not self.membership:
            raise ValueError("events_topic needs a membership (its broker carries the topic)")
