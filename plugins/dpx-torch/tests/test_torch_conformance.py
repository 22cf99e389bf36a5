"""The torch backend, losses and transform pass dpx's conformance kits, as any third-party one must."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import dpx
import dpx.plugins
from dpx.testing import NetworkBackendChecks, check_loss, check_transform


def test_torch_backend_passes_the_network_backend_kit(tmp_path):
    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, device="cpu")
    NetworkBackendChecks("torch", tmp_path, config).all()


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1", "huber", "relative_l2"])
def test_losses_pass_the_loss_kit(loss):
    check_loss(loss, torch.as_tensor)


def test_identity_transform_passes_the_transform_kit():
    check_transform("identity", torch.as_tensor)


def plain_loss(prediction, target):
    return ((prediction - target) ** 2).mean()


def test_a_loss_given_as_a_plain_function_is_one_line_naming_the_plugin(dpx_plugin, monkeypatch):
    module = types.ModuleType("dpx_plain_loss")
    module.plain_loss = plain_loss
    monkeypatch.setitem(sys.modules, module.__name__, module)
    plugin = types.ModuleType("plain_loss_plugin")
    plugin.dpx_losses = dpx.hookimpl(lambda: {"plain": "dpx_plain_loss:plain_loss"})
    dpx_plugin(plugin, name="plain-losses")
    backend = dpx.plugins.load("network_backends", "torch")
    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [4]}, loss="plain", device="cpu")
    fields = {"input": (np.dtype(np.float32), (3,)), "ground_truth": (np.dtype(np.float32), (1,))}
    with pytest.raises(dpx.plugins.PluginError) as raised:
        backend(config, fields, {})
    assert str(raised.value).startswith(
        "loss 'plain' of plugin 'plain-losses' (dpx_plain_loss:plain_loss) is a function, not a class; "
        "a loss must be a class built as cls(**loss_kwargs)"
    )
