"""Writing frames to a video file with PyAV (synthetic clips for tests, the demo and the benchmark)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np


def write_video(path: str, frames: Iterable[np.ndarray], fps: float = 15.0, codec: str = "h264") -> int:
    """Encode BGR frames to ``path``; returns how many were written.

    Encoded without B-frames and with a short GOP, as IP cameras usually stream.
    """
    import av

    count = 0
    with av.open(path, "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if codec == "h264":
                    stream.options = {"bf": "0", "g": str(max(1, round(fps * 2))), "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
