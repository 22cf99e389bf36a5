"""The torch backend, losses and transform pass dpx's conformance kits, as any third-party one must."""

from __future__ import annotations

import pytest
import torch

import dpx
from dpx.testing import NetworkBackendChecks, check_loss, check_transform


def test_torch_backend_passes_the_network_backend_kit(tmp_path):
    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, device="cpu")
    NetworkBackendChecks("torch", tmp_path, config).all()


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1", "huber", "relative_l2"])
def test_losses_pass_the_loss_kit(loss):
    check_loss(loss, torch.as_tensor)


def test_identity_transform_passes_the_transform_kit():
    check_transform("identity", torch.as_tensor)
