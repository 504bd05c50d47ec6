"""The server's OpenAPI 3 document, served at ``GET /openapi.json``.

Written by hand rather than derived from code because the app is plain ASGI (no framework to
introspect) and because the document is a contract: clients generate code from it and the test
suite (schemathesis) fuzzes every route it lists, so a route missing here is a route nobody fuzzes.
Schemas describe what the server accepts on the wire (Open Inference Protocol v2, KServe's REST
schema, plus mlscale's own routes); the server still rejects what a schema cannot express (a shape
that does not match its data, a datatype a model does not take) with 400 and a message.
"""

from __future__ import annotations

from typing import Any

import mlscale

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES"]  # fmt: skip

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What is wrong, for a person to read."}},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    texts = {
        400: "Malformed request or input the model does not take",
        404: "No such model, version or route",
        408: "The client sent the body too slowly",
        413: "The body (or its decompressed form) exceeds max_body_bytes",
        503: "Overloaded or not ready; retry after Retry-After seconds",
        504: "The request's deadline passed",
    }
    return {str(s): {**_json(_ref("Error"), texts[s])} for s in statuses}


def _model_params(versioned: bool) -> list[dict]:
    params = [{"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if versioned:
        params.append({"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _schemas() -> dict[str, Any]:
    parameters = {"type": "object", "additionalProperties": True}
    tensor_data = {"description": "Row-major values, flat or nested; strings for BYTES."}
    return {
        "Error": _ERROR,
        "Parameters": parameters,
        "RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": DATATYPES},
                "parameters": parameters,
                "data": tensor_data,
            },
        },
        "RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": parameters},
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": parameters,
                "inputs": {"type": "array", "items": _ref("RequestInput"), "minItems": 1},
                "outputs": {"type": "array", "items": _ref("RequestOutput")},
            },
        },
        "ResponseOutput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": DATATYPES},
                "parameters": parameters,
                "data": {"type": "array"},
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": {"type": "array", "items": _ref("ResponseOutput")},
            },
        },
        "TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
        "FeaturesRequest": {
            "type": "object",
            "required": ["entities"],
            "properties": {
                "features": {"type": "array", "items": {"type": "string"}},
                "feature_service": {"type": "string"},
                "entities": {"type": "object", "additionalProperties": {"type": "array"}},
                "full_feature_names": {"type": "boolean"},
            },
        },
        "FeaturesResponse": {
            "type": "object",
            "required": ["metadata", "results"],
            "properties": {"metadata": {"type": "object"}, "results": {"type": "array"}},
        },
        "Events": {
            "oneOf": [
                {"type": "array", "items": {"type": "object"}, "minItems": 1},
                {
                    "type": "object",
                    "required": ["events"],
                    "properties": {"events": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
                    "additionalProperties": False,
                },
            ]
        },
        "EventsAccepted": {
            "type": "object",
            "required": ["topic", "accepted", "offsets"],
            "properties": {"topic": {"type": "string"}, "accepted": {"type": "integer"}, "offsets": {}},
        },
    }


def _infer_operation(versioned: bool) -> dict:
    headers = [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Binary tensor extension: the length of the JSON part; raw tensors follow it.",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "X-Request-Timeout",
            "in": "header",
            "required": False,
            "description": "Deadline of this request in seconds.",
            "schema": {"type": "number", "minimum": 0},
        },
    ]
    return {
        "post": {
            "operationId": "infer_version" if versioned else "infer",
            "summary": "Run the model on a batch of inputs (Open Inference Protocol v2)",
            "parameters": _model_params(versioned) + headers,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("InferenceRequest")},
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                        "x-description": "JSON header then raw tensors (binary tensor data extension)",
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "The outputs",
                    "content": {
                        "application/json": {"schema": _ref("InferenceResponse")},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_errors(400, 404, 408, 413, 503, 504),
            },
        }
    }


def _get(operation_id: str, summary: str, ok: dict, *errors: int, params: list | None = None) -> dict:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **_errors(*errors)},
    }
    if params:
        operation["parameters"] = params
    return {"get": operation}


def _post_admin(operation_id: str, summary: str, ok: dict, name_param: bool = True) -> dict:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": ok, **_errors(400, 404, 408, 413)},
    }
    if name_param:
        operation["parameters"] = _model_params(False)
    return {"post": operation}


def openapi_document(*, features: bool = True, events: bool = True, dashboard: bool = False) -> dict:
    """The OpenAPI 3.0 document of the routes this server answers (optional parts as configured)."""
    ready = _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}, "Ready")
    paths: dict[str, Any] = {
        "/v2": _get("server_metadata", "Server name, version and extensions", _json(_ref("ServerMetadata"), "OK")),
        "/v2/health/live": _get(
            "health_live", "Liveness", _json({"type": "object", "properties": {"live": {"type": "boolean"}}}, "Live")
        ),
        "/v2/health/ready": _get("health_ready", "Readiness of the server and every model", ready, 503),
        "/v2/models/{model_name}": _get(
            "model_metadata",
            "Model metadata",
            _json(_ref("ModelMetadata"), "OK"),
            400,
            404,
            params=_model_params(False),
        ),
        "/v2/models/{model_name}/versions/{model_version}": _get(
            "model_version_metadata",
            "Metadata of one version",
            _json(_ref("ModelMetadata"), "OK"),
            400,
            404,
            params=_model_params(True),
        ),
        "/v2/models/{model_name}/ready": _get(
            "model_ready", "Model readiness", ready, 400, 404, params=_model_params(False)
        ),
        "/v2/models/{model_name}/versions/{model_version}/ready": _get(
            "model_version_ready", "Readiness of one version", ready, 400, 404, params=_model_params(True)
        ),
        "/v2/models/{model_name}/infer": _infer_operation(False),
        "/v2/models/{model_name}/versions/{model_version}/infer": _infer_operation(True),
        "/v2/repository/index": {
            **_get("repository_index", "Every model on disk and its state", _json(_ref("RepositoryIndex"), "OK")),
            "post": {
                "operationId": "repository_index_post",
                "summary": "Every model on disk and its state (Triton's POST form)",
                "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json(_ref("RepositoryIndex"), "OK"), **_errors(400, 408, 413)},
            },
        },
        "/v2/repository/models/{model_name}/load": _post_admin(
            "model_load", "Load a model (every worker)", _json({"type": "object"}, "Loaded")
        ),
        "/v2/repository/models/{model_name}/unload": _post_admin(
            "model_unload", "Unload a model (every worker)", _json({"type": "object"}, "Unloaded")
        ),
        "/v2/repository/models/{model_name}/cache/purge": _post_admin(
            "cache_purge",
            "Drop every cached answer of a model",
            _json({"type": "object", "properties": {"model": {"type": "string"}, "purged": {"type": "integer"}}}, "OK"),
        ),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, summed over workers",
                "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": _get("openapi", "This document", _json({"type": "object"}, "OpenAPI 3 document")),
    }
    if features:
        paths["/v1/features"] = {
            "post": {
                "operationId": "features",
                "summary": "Online feature values for entity keys",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("FeaturesRequest")}}},
                "responses": {"200": _json(_ref("FeaturesResponse"), "Values"), **_errors(400, 404, 408, 413, 503)},
            }
        }
    if events:
        paths["/v1/events/{topic}"] = {
            "post": {
                "operationId": "events",
                "summary": "Append events to a stream topic, all or nothing",
                "parameters": [{"name": "topic", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Events")}}},
                "responses": {"200": _json(_ref("EventsAccepted"), "Appended"), **_errors(400, 408, 413, 503)},
            }
        }
    if dashboard:
        page = {"description": "The page", "content": {"text/html": {}}}
        paths["/dashboard/"] = {"get": {"operationId": "dashboard", "summary": "Dashboard", "responses": {"200": page}}}
        paths["/dashboard/api/summary"] = _get(
            "dashboard_summary", "Everything the dashboard shows, as JSON", _json({"type": "object"}, "Summary")
        )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mlscale model server",
            "version": mlscale.__version__,
            "description": "Open Inference Protocol (v2) REST API, model repository extension, and mlscale's "
            'feature, event and metrics routes. Errors are {"error": message}.',
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
