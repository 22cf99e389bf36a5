"""Training and prediction through the torch backend, on the toy simulators."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import dpx
from dpx.core.config import ConfigError
from dpx.core.prediction import replay
from dpx.core.stats import read_csv_curves
from dpx.core.training import TrainingError


def generate(folder, env, batch_nb, validation_nb=0, batch_size=64, name="data", **env_kwargs):
    config = dpx.EnvironmentConfig(env, env_kwargs=env_kwargs, seed=0)
    dpx.DataGeneration(config, dpx.DatabaseConfig(normalize=True), session_dir=str(folder), session_name=name,
                       batch_nb=batch_nb, batch_size=batch_size, progress=False, new_session=False).execute()
    if validation_nb:
        dpx.DataGeneration(config, dpx.DatabaseConfig(mode="validation"), session_dir=str(folder), session_name=name,
                           batch_nb=validation_nb, batch_size=batch_size, progress=False, new_session=False).execute()
    return folder / name


def train(folder, dataset, network, name="net", **kwargs):
    options = {"epoch_nb": 3, "batch_size": 64, "progress": False, "seed": 0, **kwargs}
    return dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                        session_dir=str(folder), session_name=name, **options)


FC = dpx.NetworkConfig("fc", network_kwargs={"hidden": [64, 64]}, lr=3e-3)


def test_fc_learns_the_mean_far_below_the_target_variance(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=40, validation_nb=4, n_points=10)
    summary = train(tmp_path, dataset, FC, epoch_nb=8).execute()
    truth = dpx.open_database(dataset).read("validation", ["ground_truth"])["ground_truth"]
    assert summary.validation_loss is not None
    # the validation loss is in normalised units (unit variance): compare in data units
    std = dpx.open_database(dataset).normalization["ground_truth"].std
    mse = summary.validation_loss * float(np.mean(std**2))
    assert mse < 0.05 * truth.var(axis=0).mean(), (mse, truth.var(axis=0).mean())
    curves = read_csv_curves(summary.session_path / "stats")
    assert len(curves["loss/epoch"]) == 8 and len(curves["loss/validation"]) == 8
    assert len(curves["loss/batch"]) == 8 * 40 and curves["learning_rate"][0][1] == pytest.approx(3e-3)
    assert curves["loss/epoch"][-1][1] < curves["loss/epoch"][0][1] / 5


def test_spring_prediction_has_a_small_error_and_records(tmp_path):
    dataset = generate(tmp_path, "toy.spring", batch_nb=100)
    trained = train(tmp_path, dataset, FC, epoch_nb=6).execute()
    prediction = dpx.Prediction(FC, dpx.EnvironmentConfig("toy.spring", seed=5), session_dir=str(tmp_path),
                                session_name="net", step_nb=50, record=True, progress=False)
    summary = prediction.execute()
    assert summary.steps == 50 and summary.error.count == 50
    assert summary.error.relative_error < 0.1
    spread = dpx.open_database(dataset).normalization["ground_truth"].std[0] ** 2
    assert summary.error.mse < 0.02 * spread
    recorded = dpx.open_database(trained.session_path).read("prediction")
    assert set(recorded) == {"input", "ground_truth", "prediction"} and len(recorded["prediction"]) == 50
    predictions, error = replay(trained.session_path, FC)
    np.testing.assert_allclose(predictions, recorded["prediction"], rtol=1e-5, atol=1e-6)
    assert error.mse == pytest.approx(summary.error.mse, rel=1e-4)


def test_unet_trains_on_the_heat_field(tmp_path):
    dataset = generate(tmp_path, "toy.heat", batch_nb=6, batch_size=16, grid_size=16)
    unet = dpx.NetworkConfig("unet", network_kwargs={"depth": 2, "first_channels": 8}, lr=3e-3)
    summary = train(tmp_path, dataset, unet, epoch_nb=15, batch_size=16).execute()
    curves = read_csv_curves(summary.session_path / "stats")
    assert curves["loss/epoch"][-1][1] < 0.1 * curves["loss/epoch"][0][1]


def test_online_training_produces_then_rereads(tmp_path):
    env = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    summary = dpx.Training(FC, dpx.DatabaseConfig(normalize=True), env, session_dir=str(tmp_path), epoch_nb=3,
                           batch_nb=10, batch_size=32, progress=False, seed=0).execute()
    assert dpx.open_database(summary.session_path).count() == 320, "only the first epoch produces"
    assert summary.steps == 30 + summary.replayed_steps
    always = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0, always_produce=True)
    summary = dpx.Training(FC, dpx.DatabaseConfig(normalize=True), always, session_dir=str(tmp_path),
                           session_name="online", epoch_nb=3, batch_nb=10, batch_size=32, progress=False).execute()
    assert dpx.open_database(summary.session_path).count() == 960


def test_resume_is_exact(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=8, n_points=5)
    straight = train(tmp_path, dataset, FC, name="straight", epoch_nb=4).execute()
    train(tmp_path, dataset, FC, name="resumed", epoch_nb=2).execute()
    resumed = train(tmp_path, dataset, FC, name="resumed", epoch_nb=4, new_session=False).execute()
    assert resumed.epochs == 2
    a = torch.load(straight.session_path / "network" / "network.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed.session_path / "network" / "network.pt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_start_from_a_saved_network_in_a_new_session(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=8, n_points=5)
    first = train(tmp_path, dataset, FC, name="first", epoch_nb=5).execute()
    warm = dpx.NetworkConfig("fc", network_kwargs={"hidden": [64, 64]}, lr=3e-3, network_dir=str(first.session_path))
    second = train(tmp_path, dataset, warm, name="second", epoch_nb=1).execute()
    cold = train(tmp_path, dataset, FC, name="cold", epoch_nb=1).execute()
    assert second.loss < cold.loss / 2


def test_save_each_epoch_and_which_network(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=4, n_points=5)
    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, save_each_epoch=True)
    summary = train(tmp_path, dataset, config, epoch_nb=3).execute()
    saved = sorted(p.name for p in (summary.session_path / "network").glob("*.pt"))
    assert saved == ["network.pt", "network_000.pt", "network_001.pt", "network_002.pt", "network_best.pt"]
    first = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, network_dir=str(summary.session_path), which_network=0)
    predictions, _ = replay(dataset, first, mode="training")
    last, _ = replay(dataset, dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, network_dir=str(summary.session_path)), mode="training")
    assert not np.allclose(predictions, last)


@pytest.mark.parametrize(("runner", "workers"), [("inprocess", 1), ("multiprocess", 2)])
def test_get_prediction_from_inside_step(tmp_path, runner, workers):
    from dpx.testing_envs import Asking

    dataset = generate(tmp_path, "toy.mean", batch_nb=4, n_points=5)
    train(tmp_path, dataset, FC, epoch_nb=1).execute()
    config = dpx.EnvironmentConfig(Asking, seed=0, runner=runner, workers=workers)
    summary = dpx.Prediction(FC, config, session_dir=str(tmp_path), session_name="net", step_nb=5, record=True,
                             progress=False).execute()
    assert summary.steps == 5 and summary.recorded == 5 * workers


def test_online_training_and_prediction_with_worker_processes(tmp_path):
    env = dpx.EnvironmentConfig("toy.spring", seed=0, runner="multiprocess", workers=2)
    summary = dpx.Training(FC, dpx.DatabaseConfig(normalize=True), env, session_dir=str(tmp_path), session_name="net",
                           epoch_nb=4, batch_nb=25, batch_size=64, progress=False, seed=0).execute()
    assert dpx.open_database(summary.session_path).count() == 1600
    predicted = dpx.Prediction(FC, env, session_dir=str(tmp_path), session_name="net", step_nb=20, progress=False).execute()
    assert predicted.error.count == 40 and predicted.error.relative_error < 0.5


# -- bad input ---------------------------------------------------------------------------


def test_network_input_shape_mismatch_names_field_and_shapes(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=1, n_points=5)
    wrong = dpx.NetworkConfig("fc", network_kwargs={"dim_layers": [90, 16, 3]})
    with pytest.raises(ConfigError, match=r"dim_layers starts with 90 inputs but the input field's samples have shape \(5, 3\)"):
        train(tmp_path, dataset, wrong).execute()
    unet = dpx.NetworkConfig("unet")
    with pytest.raises(ConfigError, match=r"unet: samples must be \(channels, height, width\).*shape \(5, 3\)"):
        train(tmp_path, dataset, unet).execute()


class Widen(torch.nn.Module):
    def __init__(self, input_shape, output_shape):
        super().__init__()
        self.linear = torch.nn.Linear(15, 4)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_network_output_shape_mismatch_names_the_target_field(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=1, n_points=5)
    with pytest.raises(ConfigError, match=r"predicts samples of shape \(4,\) but the target field 'ground_truth' has samples of shape \(3,\)"):
        train(tmp_path, dataset, dpx.NetworkConfig(Widen)).execute()


def test_loading_parameters_of_another_architecture(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=1, n_points=5)
    trained = train(tmp_path, dataset, FC, epoch_nb=1).execute()
    other = dpx.NetworkConfig("fc", network_kwargs={"hidden": [32]}, network_dir=str(trained.session_path))
    with pytest.raises(ConfigError, match=r"holds a fc network with network_kwargs=\{'hidden': \[64, 64\]\}"):
        train(tmp_path, dataset, other, name="other").execute()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt is not a readable dpx-torch checkpoint"):
        dpx_torch_backend().read_extra(tmp_path / "garbage.pt")


def dpx_torch_backend():
    return dpx.plugins.load("network_backends", "torch")


def test_training_on_an_empty_dataset(tmp_path):
    with dpx.Database(tmp_path / "empty" / "dataset", dpx.DatabaseConfig()) as db:
        db.prepare("training", {"input": (np.float32, (3,)), "ground_truth": (np.float32, (1,))})
    with pytest.raises(ConfigError, match="holds no training samples; generate data first"):
        train(tmp_path, tmp_path / "empty", FC).execute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "a refused training must not leave a session"


class ExplodingLoss(torch.nn.Module):
    """MSE until the 5th call, then NaN."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, prediction, target):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(prediction, target)
        return loss * float("nan") if self.calls >= 5 else loss


def test_nan_loss_stops_with_an_explanation_and_keeps_the_last_good_network(tmp_path):
    dataset = generate(tmp_path, "toy.mean", batch_nb=3, n_points=5)
    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, loss=ExplodingLoss)
    with pytest.raises(TrainingError, match=r"the loss is nan at epoch 1, step 4: training stopped before applying it"):
        train(tmp_path, dataset, config, epoch_nb=3).execute()
    saved = torch.load(tmp_path / "net" / "network" / "network.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert saved["extra"]["last_good"] and saved["extra"]["step"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "mse2"}, r"unknown loss 'mse2' \(did you mean 'mse'\?\); available: .*huber"),
        ({"optimizer": "adamm"}, r"unknown optimizer 'adamm' \(did you mean 'adam'\?\); available: .*sgd"),
        ({"network_class": "resnet"}, r"unknown network_class 'resnet'; architectures are fc, unet"),
    ],
)
def test_unknown_names_are_clear_errors(tmp_path, kwargs, message):
    dataset = generate(tmp_path, "toy.mean", batch_nb=1, n_points=5)
    config = dpx.NetworkConfig(**{"network_class": "fc", **kwargs})
    with pytest.raises(ConfigError, match=message):
        train(tmp_path, dataset, config).execute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_kwargs": {"redution": "sum"}}, r"loss_kwargs has unknown key 'redution'"),
        ({"optimizer_kwargs": {"momentun": 0.9}, "optimizer": "sgd"}, r"optimizer_kwargs has unknown key 'momentun'"),
    ],
)
def test_a_typo_in_loss_or_optimizer_kwargs_is_a_config_error(tmp_path, kwargs, message):
    dataset = generate(tmp_path, "toy.mean", batch_nb=1, n_points=5)
    with pytest.raises(ConfigError, match=message):
        train(tmp_path, dataset, dpx.NetworkConfig("fc", **kwargs)).execute()
