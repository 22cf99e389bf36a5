"""The Network base class and the architectures, on their own."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dpx_torch.fc import FC
from dpx_torch.network import Network
from dpx_torch.unet import UNet


def test_network_api_round_trips_parameters_safely(tmp_path):
    net = FC(input_shape=(4, 3), output_shape=(3,), hidden=[8])
    assert net.nb_parameters() == 12 * 8 + 8 + 8 * 3 + 3
    assert net.set_device("cpu") == torch.device("cpu")
    x = np.random.default_rng(0).random((5, 4, 3), dtype=np.float32)
    tensor = net.numpy_to_tensor(x)
    assert tensor.data_ptr() == torch.from_numpy(x).data_ptr(), "no copy on CPU"
    before = Network.tensor_to_numpy(net.predict(tensor))
    net.save_parameters(tmp_path / "fc.pt")
    other = FC(input_shape=(4, 3), output_shape=(3,), hidden=[8])
    other.load_parameters(tmp_path / "fc.pt")
    np.testing.assert_array_equal(Network.tensor_to_numpy(other.predict(tensor)), before)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(print, protocol=2))  # a pickle that would run code
    with pytest.raises(pickle.UnpicklingError):
        other.load_parameters(tmp_path / "evil.pt")


def test_prelu_learns_one_slope_per_unit_as_deepphysx_fc_does():
    net = FC(input_shape=(10, 3), output_shape=(3,), dim_layers=[30, 16, 8, 3], activation="prelu")
    assert [type(layer).__name__ for layer in net.layers] == ["Linear", "PReLU", "Linear", "PReLU", "Linear"]
    assert net.layers[1].weight.shape == (16,) and net.layers[3].weight.shape == (8,)
    with torch.no_grad():
        net.layers[1].weight.copy_(torch.linspace(0.0, 1.0, 16))
        hidden = net.layers[0](torch.full((1, 30), -1.0))
        slopes = net.layers[1](hidden) / hidden
    torch.testing.assert_close(slopes[0], torch.linspace(0.0, 1.0, 16).where(hidden[0] < 0, torch.ones(16)))


def test_set_train_and_eval_switch_dropout():
    net = FC(input_shape=(10,), output_shape=(10,), hidden=[256], dropout=0.5)
    x = torch.ones(1, 10)
    net.set_eval()
    assert torch.equal(net(x), net(x))
    net.set_train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize(("shape", "depth"), [((2, 20, 12), 2), ((1, 9, 10, 7), 2), ((3, 16, 16), 3)])
def test_unet_keeps_the_grid_in_2d_and_3d_even_when_not_a_power_of_two(shape, depth):
    net = UNet(input_shape=shape, output_shape=(1, *shape[1:]), depth=depth, first_channels=4)
    out = net(torch.zeros(2, *shape))
    assert out.shape == (2, 1, *shape[1:])
    assert net.dims == len(shape) - 1


def test_architecture_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"dim_layers ends with 4 outputs but the target field's samples have shape \(3,\)"):
        FC(input_shape=(2,), output_shape=(3,), dim_layers=[2, 4])
    with pytest.raises(ValueError, match=r"unknown activation 'swish'"):
        FC(input_shape=(2,), output_shape=(3,), activation="swish")
    with pytest.raises(ValueError, match=r"target field's grid \(8, 8\) must match the input field's grid \(16, 16\)"):
        UNet(input_shape=(1, 16, 16), output_shape=(1, 8, 8))


# -- check_network: every training component built before anything is written -------------


FIELDS = {"input": (np.dtype(np.float32), (5, 3)), "ground_truth": (np.dtype(np.float32), (3,))}


@pytest.mark.parametrize(
    ("kwargs", "fields", "message"),
    [
        ({"loss_kwargs": {"redution": "sum"}}, None,
         r"loss_kwargs has unknown key 'redution' for loss 'mse' \(did you mean 'reduction'\?\)"),
        ({"optimizer_kwargs": {"weight_decai": 0.1}}, None,
         r"optimizer_kwargs has unknown key 'weight_decai' for optimizer 'adam' \(did you mean 'weight_decay'\?\)"),
        ({"optimizer_kwargs": {"betas": (2.0, 0.9)}}, None,
         r"optimizer_kwargs=\{'betas': \(2.0, 0.9\)\} rejected by optimizer 'adam': Invalid beta parameter"),
        ({"network_kwargs": {"hiden": [8]}}, None,
         r"network_kwargs has unknown key 'hiden' for network 'fc' \(did you mean 'hidden'\?\)"),
        ({"network_kwargs": {"hiden": [8]}}, FIELDS,
         r"network_kwargs has unknown key 'hiden' for network fc \(did you mean 'hidden'\?\)"),
        ({"network_kwargs": {"dim_layers": [90, 3]}}, FIELDS,
         r"network_kwargs=.* rejected by network fc: fc: dim_layers starts with 90 inputs"),
        ({"input_fields": ["points"]}, FIELDS, r"field\(s\) \['points'\] that the data does not have"),
        ({"network_class": "mypackage.nets:Net"}, None, r"network_class='mypackage.nets:Net' cannot be imported: No module"),
        ({"optimization": "dpx_torch.optimization:Optimisation"}, None,
         r"optimization='dpx_torch.optimization:Optimisation' cannot be imported: .*has no attribute 'Optimisation'"),
    ],
)
def test_check_network_names_the_parameter_and_key_and_writes_nothing(tmp_path, monkeypatch, kwargs, fields, message):
    from dpx.core.config import ConfigError, NetworkConfig
    from dpx.core.network import check_network

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_network(NetworkConfig(**{"network_class": "fc", **kwargs}), fields)
    assert list(tmp_path.iterdir()) == []


def test_check_network_returns_the_backend_of_a_valid_config():
    from dpx.core.config import NetworkConfig
    from dpx.core.network import check_network
    from dpx_torch.backend import TorchBackend

    config = NetworkConfig("unet", network_kwargs={"depth": 2}, loss="huber", loss_kwargs={"delta": 0.5},
                           optimizer="sgd", optimizer_kwargs={"momentum": 0.9})
    assert check_network(config) is TorchBackend
    assert check_network(config, {"input": (np.dtype(np.float32), (1, 8, 8)),
                                  "ground_truth": (np.dtype(np.float32), (1, 8, 8))}) is TorchBackend
