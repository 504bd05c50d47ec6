"""Real-time video anomaly detection over many camera feeds.

camera feeds -> latest-frame-wins slots -> batched detector (motion + learned normal activity +
rules, optional ONNX model) -> events (JSONL log + JPEG snapshots) -> sinks (alerts, dashboard).
"""

# Imported lazily (PEP 562): config.py imports mlscale.vision.settings on every command, and that
# must not pull OpenCV and PyAV into ``mlscale --help``.
_EXPORTS = {
    "ANOMALY_KINDS": "mlscale.vision.synthetic",
    "AVSource": "mlscale.vision.sources",
    "ActivityModel": "mlscale.vision.detectors",
    "CameraDetector": "mlscale.vision.camera",
    "Event": "mlscale.vision.events",
    "EventLog": "mlscale.vision.events",
    "FeedSettings": "mlscale.vision.settings",
    "Finding": "mlscale.vision.detectors",
    "ImageFolderSource": "mlscale.vision.sources",
    "FrameQueue": "mlscale.vision.pipeline",
    "OnnxScorer": "mlscale.vision.detectors",
    "RuleDetector": "mlscale.vision.detectors",
    "RuleSettings": "mlscale.vision.settings",
    "Source": "mlscale.vision.sources",
    "SyntheticScene": "mlscale.vision.synthetic",
    "SyntheticSource": "mlscale.vision.sources",
    "Verdict": "mlscale.vision.camera",
    "VisionPipeline": "mlscale.vision.pipeline",
    "ShardedPipeline": "mlscale.vision.workers",
    "MemberPipeline": "mlscale.vision.hosts",
    "make_pipeline": "mlscale.vision.pipeline",
    "alert_sink": "mlscale.vision.events",
    "VisionSettings": "mlscale.vision.settings",
    "ZoneSettings": "mlscale.vision.settings",
    "demo_settings": "mlscale.vision.pipeline",
    "labelled_suite": "mlscale.vision.synthetic",
    "score_clip": "mlscale.vision.evaluate",
    "start_vision": "mlscale.vision.pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlscale.vision' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
