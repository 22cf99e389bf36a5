"""PyTorch backend for dpx.

This module is what dpx imports to list plugins, so it names components by
import path and never imports torch itself: ``python -m dpx plugins`` stays
fast with this plugin installed.
"""

import dpx


@dpx.hookimpl
def dpx_network_backends():
    return {"torch": dpx.Component("dpx_torch.backend:TorchBackend", "PyTorch networks, losses and optimisers")}


@dpx.hookimpl
def dpx_losses():
    return {
        "mse": dpx.Component("torch.nn:MSELoss", "mean squared error"),
        "l1": dpx.Component("torch.nn:L1Loss", "mean absolute error"),
        "smooth_l1": dpx.Component("torch.nn:SmoothL1Loss", "L1 with a quadratic zone near 0"),
        "huber": dpx.Component("torch.nn:HuberLoss", "Huber loss"),
        "relative_l2": dpx.Component("dpx_torch.losses:RelativeL2Loss", "L2 error relative to the target's norm"),
    }


@dpx.hookimpl
def dpx_transforms():
    return {
        "identity": dpx.Component("dpx_torch.transformation:DataTransformation", "no transformation (the default)"),
    }


@dpx.hookimpl
def dpx_exporters():
    return {
        "onnx": dpx.Component("dpx_torch.export:OnnxExporter", "ONNX (torch.onnx dynamo exporter), for onnxruntime"),
        "pt2": dpx.Component("dpx_torch.export:Pt2Exporter", "torch.export program, and an AOTInductor package"),
    }
