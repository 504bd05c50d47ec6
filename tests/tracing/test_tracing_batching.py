"""The batcher's spans on its own: a request without a batch axis, and a batch whose joint run fails
and is retried request by request, keep their spans (and their answers) right."""

from __future__ import annotations

import asyncio

import numpy as np
from tracing_support import by_name, one

from mlscale.serving.batching import AdaptiveBatcher, InferenceFailed
from mlscale.tracing import spans


def picky(inputs, outputs=None):
    x = inputs["x"]
    if (np.asarray(x) < 0).any():
        raise ValueError("negative values are not allowed")
    return {"y": x * 2}


def test_scalar_request_and_a_failing_batch_are_traced(exporter):
    async def scenario():
        batcher = AdaptiveBatcher(picky, max_batch_size=8, max_delay=0.05, trace_attributes={"mlscale.model": "p"})
        scalar = await spans.serve("scalar", [], {}, batcher.submit({"x": np.float64(3.0)}))
        calls = [spans.serve(f"r{v}", [], {}, batcher.submit({"x": np.array([[v]], dtype=float)})) for v in (1, -1)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        return scalar, results

    scalar, (good, bad) = asyncio.run(scenario())
    assert scalar["y"] == 6.0 and good["y"].tolist() == [[2.0]] and isinstance(bad, InferenceFailed)
    finished = exporter.get_finished_spans()
    assert one(finished, "model", one(finished, "scalar").context.trace_id).attributes["mlscale.batch.size"] == 0
    joint = [b for b in by_name(finished, "batch") if b.attributes["mlscale.batch.requests"] == 2]
    assert len(joint) == 1
    models = [m for m in by_name(finished, "model") if m.parent.span_id == joint[0].context.span_id]
    # The joint run failed, then each request ran alone: three model calls under the one batch.
    assert sorted(m.attributes["mlscale.batch.size"] for m in models) == [1, 1, 2]
    assert sum(m.status.status_code.name == "ERROR" for m in models) == 2
