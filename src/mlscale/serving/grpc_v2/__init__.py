"""The Open Inference Protocol over gRPC (KServe/Triton ``inference.GRPCInferenceService``)."""
