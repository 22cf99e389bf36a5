"""Inference-only network backend for dpx: exported ONNX networks run with onnxruntime.

This module is what dpx imports to list plugins: it names the backend by
import path and imports neither onnxruntime nor torch.
"""

import dpx


@dpx.hookimpl
def dpx_network_backends():
    return {"onnx": dpx.Component("dpx_onnx.backend:OnnxBackend", "exported ONNX networks on onnxruntime (inference only)")}
