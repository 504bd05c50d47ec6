"""The KServe/Triton ``inference.GRPCInferenceService`` on grpc.aio, in the worker's event loop.

Each worker process runs one gRPC server beside its ASGI app, in the same asyncio loop, so both
transports share the worker's repository, batchers (requests from either join the same batches),
caches, metrics and payload log through ``InferenceCore``. Workers share the port with SO_REUSEPORT
(the kernel spreads connections over them), the way uvicorn's workers share the HTTP socket.

The handlers are registered by hand under Triton's method paths rather than through generated
``*_pb2_grpc`` code: the messages live in their own protobuf package (see the .proto), and a
hand-written table needs no grpcio-tools version check at import.

Auth is checked at this edge as on REST, before the request is looked at: the key or JWT comes in
the call's metadata (``authorization: Bearer <key>``), each method needs the scope of its REST
twin (health open, inference ``infer``, everything else ``read``), and the quota applies to
inference. Refusals are UNAUTHENTICATED, PERMISSION_DENIED and RESOURCE_EXHAUSTED (with
``retry-after`` metadata). With ``[tls]`` on, the port serves TLS with the same certificate.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

import mlscale
from mlscale import tracing
from mlscale.errors import (
    DeadlineExceeded,
    Forbidden,
    MlscaleError,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from mlscale.serving import metrics
from mlscale.serving.grpc_v2 import grpc_predict_v2_pb2 as pb
from mlscale.serving.grpc_v2.codec import GrpcRequest, decode_infer_request, encode_infer_response
from mlscale.serving.triton import model_config, model_statistics

if TYPE_CHECKING:
    from mlscale.serving.app import InferenceApp
    from mlscale.serving.repository import ModelVersion

log = logging.getLogger("mlscale.serving.grpc")

SERVICE = "inference.GRPCInferenceService"
# The scope each method needs, as its REST twin (mlscale.auth.scopes); methods not listed: "read".
SCOPES: dict[str, str | None] = {"ServerLive": None, "ServerReady": None, "ModelInfer": "infer"}
_REFUSALS = {Unauthorized: "unauthorized", Forbidden: "forbidden", RateLimited: "rate_limited"}
# The caller's tenant, set by the edge check for the call's task (None without auth).
_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlscale_grpc_tenant", default=None)
EXTENSIONS = ["model_repository", "parameters", "metrics", "model_configuration", "statistics"]


def status_of(exc: MlscaleError) -> grpc.StatusCode:
    """The gRPC status of a typed error: the same meaning as its HTTP status on REST."""
    if isinstance(exc, Unauthorized):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, Forbidden):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, RateLimited):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
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
        # The edge check (mlscale.auth.Guard), or None when auth and quotas are off.
        self.guard = getattr(app, "guard", None)
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

        call = self.core.infer(
            request.model_name, request.model_version or None, decode, _encode, self.default_timeout, _tenant.get()
        )
        if not tracing.enabled:
            return await call
        from mlscale.tracing import spans

        attributes = {
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": "ModelInfer",
            "mlscale.model": request.model_name,
        }
        return await spans.serve(f"{SERVICE}/ModelInfer", _metadata(context), attributes, call, error_code=_grpc_code)


def _encode(model: ModelVersion, request: GrpcRequest, outputs: dict, parameters: dict | None) -> Any:
    return encode_infer_response(model.model, model.version, request, outputs, parameters)


def _grpc_code(exc: MlscaleError) -> tuple[str, int]:
    """The span attribute of a typed error's gRPC status (tracing)."""
    return "rpc.grpc.status_code", status_of(exc).value[0]


def _metadata(context: Any) -> list[tuple[bytes, bytes]]:
    """The call's metadata as ASGI-style header pairs (what the guard reads)."""
    pairs = []
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):  # "-bin" keys carry bytes, and are never credentials
            pairs.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    return pairs


def _guarded(
    method: Callable[[Any, Any], Awaitable[Any]], guard: Any = None, scope: str | None = "read"
) -> Callable[[Any, Any], Awaitable[Any]]:
    """The edge check first (when ``guard`` is set), then the method; typed errors become their gRPC
    status (with a message); anything else is INTERNAL, logged."""
    name = getattr(method, "__name__", "rpc")

    async def handler(request: Any, context: Any) -> Any:
        try:
            if guard is not None:
                principal = await guard.check_scope(scope, _metadata(context), f"{SERVICE}/{name}")
                if principal is not None and guard.enabled:  # tenants share model queues fairly
                    _tenant.set(principal.tenant)
            return await method(request, context)
        except MlscaleError as exc:
            reason = _REFUSALS.get(type(exc))
            if reason is not None:
                metrics.EDGE_REFUSALS.labels(reason).inc()
            retry = isinstance(exc, Overloaded | RateLimited)
            metadata = (("retry-after", str(exc.retry_after)),) if retry else ()
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
            _guarded(getattr(servicer, name), servicer.guard, SCOPES.get(name, "read")),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }


class GrpcListener:
    """One worker's gRPC server: started after the app's models are loaded, stopped before they are
    released (in-flight calls get ``grace`` seconds)."""

    def __init__(
        self, host: str, port: int, max_message_bytes: int, grace: float = 30.0, tls: tuple[str, str] | None = None
    ) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.grace = grace
        # (certificate chain file, private key file): serve TLS, as the HTTP port does; None: plaintext.
        self.tls = tls
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
            if self.tls is None:
                server.add_insecure_port(self.address)
            else:
                certfile, keyfile = self.tls
                with open(certfile, "rb") as cert, open(keyfile, "rb") as key:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                server.add_secure_port(self.address, credentials)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await server.start()
        self.server = server
        log.info("gRPC listening on %s", self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.grace)
            self.server = None
