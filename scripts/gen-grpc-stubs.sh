#!/usr/bin/env bash
# Regenerate the committed Python messages of the v2 gRPC protocol from its .proto. Needs grpcio-tools,
# a dev-time tool only: the generated module is committed, so installing mlscale needs no protoc.
# The service is registered by hand in service.py (under Triton's method paths), so no *_pb2_grpc.py.
# Run from src/ so the descriptor's file name is the unique mlscale/serving/grpc_v2/grpc_predict_v2.proto.
set -euo pipefail
cd "$(dirname "$0")/../src"
PYTHON="${PYTHON:-python}"
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. mlscale/serving/grpc_v2/grpc_predict_v2.proto
