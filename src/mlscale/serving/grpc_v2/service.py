"""The KServe/Triton ``inference.GRPCInferenceService`` on grpc.aio, in the worker's event loop.

Each worker process runs one gRPC server beside its ASGI app, in the same asyncio loop, so both
transports share the worker's repository, batchers (requests from either join the same batches),
caches, metrics and payload log through ``InferenceCore``. Workers share the port with SO_REUSEPORT
(the kernel spreads connections over them), the way uvicorn's workers share the HTTP socket.

The handlers are registered by hand under Triton's method paths rather than through generated
``*_pb2_grpc`` code: the messages live in their own protobuf package (see the .proto), and a
hand-written table needs no grpcio-tools version check at import.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

import mlscale
from mlscale.errors import DeadlineExceeded, MlscaleError, ModelNotReady, NotFound, Overloaded, PayloadTooLarge
from mlscale.serving.grpc_v2 import grpc_predict_v2_pb2 as pb
from mlscale.serving.grpc_v2.codec import GrpcRequest, decode_infer_request, encode_infer_response
from mlscale.serving.triton import model_config, model_statistics

if TYPE_CHECKING:
    from mlscale.serving.app import InferenceApp
    from mlscale.serving.repository import ModelVersion

log = logging.getLogger("mlscale.serving.grpc")

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_repository", "parameters", "metrics", "model_configuration", "statistics"]


def status_of(exc: MlscaleError) -> grpc.StatusCode:
    """The gRPC status of a typed error: the same meaning as its HTTP status on REST."""
    if isinstance(exc, Overloaded | ModelNotReady):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, PayloadTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }.get(exc.status, grpc.StatusCode.INTERNAL)


class InferenceServicer:
    """The RPCs, over one worker's InferenceApp (its repository, readiness, settings, core)."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app
        self.repository = app.repository
        self.core = app.core
        self.default_timeout = app.settings.request_timeout

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.app.ready and self.repository.all_ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="mlscale", version=mlscale.__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            self.repository.resolve(request.name, request.version or None)
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self.repository.resolve(request.name, request.version or None)
        return json_format.ParseDict(
            model.metadata(self.repository.versions_of(request.name)), pb.ModelMetadataResponse()
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        model = self.repository.resolve(request.name, request.version or None)
        return json_format.ParseDict({"config": model_config(model)}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        stats = model_statistics(self.repository, request.name, request.version)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # The client's own deadline needs no timer here: grpc.aio cancels this call when it passes,
        # which cancels the request's place in its batcher queue (a cancelled request is skipped, not
        # computed). Only the server's deadlines (request_timeout, the `timeout` parameter) are timed.
        async def decode() -> GrpcRequest:
            return decode_infer_request(request)

        return await self.core.infer(
            request.model_name, request.model_version or None, decode, _encode, self.default_timeout
        )


def _encode(model: ModelVersion, request: GrpcRequest, outputs: dict, parameters: dict | None) -> Any:
    return encode_infer_response(model.model, model.version, request, outputs, parameters)


def _guarded(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """Typed errors become their gRPC status (with a message); anything else is INTERNAL, logged."""

    async def handler(request: Any, context: Any) -> Any:
        try:
            return await method(request, context)
        except MlscaleError as exc:
            metadata = (("retry-after", str(exc.retry_after)),) if isinstance(exc, Overloaded) else ()
            await context.abort(status_of(exc), str(exc), metadata)
        except Exception:
            log.exception("unhandled error in %s", getattr(method, "__name__", "rpc"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return handler


_METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
}


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's method table, for ``grpc.aio.Server``."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, name)),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }


class GrpcListener:
    """One worker's gRPC server: started after the app's models are loaded, stopped before they are
    released (in-flight calls get ``grace`` seconds)."""

    def __init__(self, host: str, port: int, max_message_bytes: int, grace: float = 30.0) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.grace = grace
        self.server: grpc.aio.Server | None = None

    async def start(self, app: InferenceApp) -> None:
        server = grpc.aio.server(
            options=[
                # Every worker binds the same port; the kernel balances connections between them.
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        handlers = method_handlers(InferenceServicer(app))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.62: skips a lookup per call
            server.add_registered_method_handlers(SERVICE, handlers)
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await server.start()
        self.server = server
        log.info("gRPC listening on %s", self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.grace)
            self.server = None
