"""Model serving: the Open Inference Protocol (v2) over HTTP, a model repository, adaptive batching.

The public face: ``build_app`` for embedding the ASGI app, ``run_server`` for the process model,
``ModelRepository`` and ``AdaptiveBatcher`` for their own sake.
"""

from mlscale.serving.server import build_app, run_server

__all__ = ["build_app", "run_server"]
