"""Training features on the lifecycle: plugins stopping a run, early stopping and the best network,
the validation split, learning-rate schedules (and their exact resume), gradient clipping."""

from __future__ import annotations

import json

import pytest
import torch

import dpx
from dpx.core.config import ConfigError
from dpx.core.network import find_checkpoint
from dpx.core.stats import read_csv_curves
from dpx_torch.backend import TorchBackend


def generate(folder, batch_nb=4, validation_nb=0, name="data"):
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    dpx.DataGeneration(config, dpx.DatabaseConfig(normalize=True), session_dir=str(folder), session_name=name,
                       batch_nb=batch_nb, batch_size=32, progress=False, new_session=False).execute()
    if validation_nb:
        dpx.DataGeneration(config, dpx.DatabaseConfig(mode="validation"), session_dir=str(folder), session_name=name,
                           batch_nb=validation_nb, batch_size=32, progress=False, new_session=False).execute()
    return folder / name


def training(folder, dataset, network=None, name="net", **options):
    network = network or dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2)
    options = {"epoch_nb": 4, "batch_size": 32, "progress": False, "seed": 0, **options}
    return dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                        session_dir=str(folder), session_name=name, **options)


def last_run(session_path):
    return json.loads((session_path / "session.json").read_text())["runs"][-1]


def saved_epoch(session_path, which):
    return TorchBackend.read_extra(find_checkpoint(session_path, "network", which))["epoch"]


def weights(session_path, which=-1):
    state = TorchBackend.read_checkpoint(find_checkpoint(session_path, "network", which))["state_dict"]
    return torch.cat([tensor.flatten() for tensor in state.values()])


@pytest.fixture
def dataset(tmp_path):
    return generate(tmp_path)


def test_a_ten_line_plugin_stops_training_and_sees_every_step_and_checkpoint(tmp_path, dataset, dpx_plugin):
    seen = {"steps": [], "saved": []}

    class StopAfterTwoEpochs:
        @dpx.hookimpl
        def dpx_training_step_end(self, step, loss, values):
            seen["steps"].append((step, loss == values["loss/batch"]))

        @dpx.hookimpl
        def dpx_checkpoint_saved(self, path, epoch, best):
            seen["saved"].append((path.name, epoch, best))

        @dpx.hookimpl
        def dpx_epoch_end(self, epoch, metrics):
            assert "loss/epoch" in metrics and "learning_rate" in metrics
            return "two epochs are enough" if epoch == 1 else None

    dpx_plugin(StopAfterTwoEpochs(), name="stopper")
    summary = training(tmp_path, dataset, epoch_nb=5).execute()
    assert summary.epochs == 2 and summary.stopped == "two epochs are enough"
    assert seen["steps"] == [(step, True) for step in range(1, 9)]  # 128 samples: 4 steps an epoch
    assert ("network.pt", 1, False) in seen["saved"] and ("network_best.pt", 0, True) in seen["saved"]
    run = last_run(summary.session_path)
    assert run["stopped"] == "two epochs are enough" and run["outcome"] == "completed"
    assert saved_epoch(summary.session_path, -1) == 1


def test_early_stopping_waits_patience_epochs_and_keeps_the_best_network(tmp_path, dataset):
    # min_delta so large that no epoch after the first counts as an improvement
    summary = training(tmp_path, dataset, epoch_nb=10, patience=2, min_delta=1e9).execute()
    assert summary.epochs == 3
    assert "has not improved by more than 1e+09 for 2 epochs" in summary.stopped
    assert saved_epoch(summary.session_path, "best") == 0
    assert saved_epoch(summary.session_path, -1) == 2
    assert not torch.equal(weights(summary.session_path, "best"), weights(summary.session_path))
    config = dpx.NetworkConfig("fc", network_dir=str(summary.session_path), which_network="best")
    predictor = dpx.load_predictor(summary.session_path, config)
    assert predictor.checkpoint.name == "network_best.pt"


def test_without_patience_the_best_network_follows_the_validation_loss(tmp_path):
    dataset = generate(tmp_path, validation_nb=1)
    summary = training(tmp_path, dataset, epoch_nb=4).execute()
    curves = dict(read_csv_curves(summary.session_path / "stats")["loss/validation"])
    best = min(curves, key=curves.get)
    assert saved_epoch(summary.session_path, "best") == best


def test_validation_split_holds_out_seeded_samples_and_records_them(tmp_path, dataset):
    first = training(tmp_path, dataset, epoch_nb=2, validation_split=0.25).execute()
    split = last_run(first.session_path)["validation_split"]
    assert split["validation_samples"] == 32 and split["training_samples"] == 96
    assert first.samples == 2 * 96, "the held-out samples are not trained on"
    assert first.validation_loss is not None
    again = training(tmp_path, dataset, epoch_nb=2, validation_split=0.25, name="again").execute()
    assert again.validation_loss == first.validation_loss, "the same seed holds out the same samples"
    other = training(tmp_path, dataset, epoch_nb=2, validation_split=0.25, seed=1, name="other").execute()
    assert other.validation_loss != first.validation_loss


def test_validation_split_with_an_environment_is_refused():
    environment = dpx.EnvironmentConfig("toy.mean")
    with pytest.raises(ConfigError, match="validation_split splits a stored dataset"):
        dpx.Training(dpx.NetworkConfig(), environment_config=environment, batch_nb=2, validation_split=0.1)


def test_step_schedule_halves_the_learning_rate_every_epoch(tmp_path, dataset):
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, lr_scheduler="step",
                                lr_scheduler_kwargs={"step_size": 1, "gamma": 0.5})
    summary = training(tmp_path, dataset, network, epoch_nb=3).execute()
    rates = dict(read_csv_curves(summary.session_path / "stats")["learning_rate"])
    assert [rates[step] for step in (1, 4, 5, 8, 9, 12)] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3])


def test_plateau_schedule_watches_the_validation_loss(tmp_path, dataset):
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, lr_scheduler="plateau",
                                lr_scheduler_kwargs={"patience": 0, "factor": 0.1})
    backend = TorchBackend(network, dpx.open_database(dataset).fields("training"), {}, seed=0)
    backend.end_epoch(loss=1.0, validation_loss=5.0)
    backend.end_epoch(loss=0.5, validation_loss=6.0)  # training loss better, validation loss worse
    assert backend.learning_rate == pytest.approx(1e-3)
    backend.end_epoch(loss=0.6, validation_loss=4.0)  # training loss worse, validation loss better
    assert backend.learning_rate == pytest.approx(1e-3)
    backend.end_epoch(loss=0.4, validation_loss=None)  # no validation data: the training loss
    backend.end_epoch(loss=0.45, validation_loss=None)
    assert backend.learning_rate == pytest.approx(1e-4)


def test_one_cycle_schedule_moves_every_step(tmp_path, dataset):
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, lr_scheduler="onecycle",
                                lr_scheduler_kwargs={"max_lr": 0.1, "total_steps": 8})
    summary = training(tmp_path, dataset, network, epoch_nb=2).execute()
    rates = [value for _, value in read_csv_curves(summary.session_path / "stats")["learning_rate"]]
    assert len(set(rates)) == 8 and max(rates) == pytest.approx(0.1, rel=0.05)


def test_a_resumed_scheduled_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, dataset):
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, lr_scheduler="cosine",
                                lr_scheduler_kwargs={"T_max": 4})
    straight = training(tmp_path, dataset, network, epoch_nb=4, name="straight").execute()
    training(tmp_path, dataset, network, epoch_nb=2, name="resumed").execute()
    resumed = training(tmp_path, dataset, network, epoch_nb=4, name="resumed", new_session=False).execute()
    assert torch.equal(weights(resumed.session_path), weights(straight.session_path))
    curves = [read_csv_curves(s.session_path / "stats")["learning_rate"] for s in (straight, resumed)]
    assert curves[0] == curves[1]


def test_an_unknown_schedule_is_a_config_error_naming_it(tmp_path, dataset):
    network = dpx.NetworkConfig("fc", lr_scheduler="cosin")
    with pytest.raises(ConfigError, match=r"unknown lr_scheduler 'cosin' \(did you mean 'cosine'\?\)"):
        training(tmp_path, dataset, network).prepare()


def test_gradient_clipping_bounds_each_step(tmp_path, dataset):
    def moved_in_second_epoch(clipping, name):
        network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=0.1, optimizer="sgd",
                                    gradient_clipping=clipping, save_each_epoch=True)
        summary = training(tmp_path, dataset, network, epoch_nb=2, name=name).execute()
        return float(torch.linalg.vector_norm(weights(summary.session_path, 1) - weights(summary.session_path, 0)))

    # 4 SGD steps of lr 0.1 on gradients of norm <= 1e-3 move the weights by 4e-4 at most
    assert moved_in_second_epoch(1e-3, "clipped") <= 4 * 0.1 * 1e-3 * (1 + 1e-5)
    assert moved_in_second_epoch(None, "free") > 10 * 4 * 0.1 * 1e-3


def test_a_validation_split_leaving_nothing_to_validate_is_refused_before_anything_is_written(tmp_path, dataset):
    with pytest.raises(ConfigError, match=r"validation_split=0.001 of 128 training samples leaves 0 for validation"):
        training(tmp_path, dataset, validation_split=0.001).execute()
    assert not (tmp_path / "net").exists()


def test_a_plugin_sees_every_prediction_step_and_how_the_run_ended(tmp_path, dataset, dpx_plugin):
    trained = training(tmp_path, dataset, epoch_nb=1).execute()
    seen = []

    class Follows:
        @dpx.hookimpl
        def dpx_prediction_step_end(self, step, inputs, prediction):
            seen.append((step, inputs["input"].shape, prediction.shape))

        @dpx.hookimpl
        def dpx_run_end(self, run, outcome, summary):
            seen.append((run.pipeline, outcome, summary.steps))

    dpx_plugin(Follows(), name="follows")
    dpx.Prediction(dpx.NetworkConfig("fc"), dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=1),
                   session_dir=str(tmp_path), session_name=trained.session_path.name, step_nb=3, progress=False).execute()
    assert seen == [(0, (1, 5, 3), (1, 3)), (1, (1, 5, 3), (1, 3)), (2, (1, 5, 3), (1, 3)), ("Prediction", "completed", 3)]
