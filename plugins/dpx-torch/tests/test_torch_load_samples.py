"""load_samples / only_first_epoch: environments fed from the dataset in Training and Prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.testing_envs import Replaying

FC = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2)
SAMPLES = 32


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A session of Replaying samples (ground truth 2 * input, fed = 0) and a network trained on them."""
    folder = tmp_path_factory.mktemp("load_samples")
    dpx.DataGeneration(dpx.EnvironmentConfig(Replaying, seed=0), session_dir=str(folder), session_name="data",
                       batch_nb=4, batch_size=SAMPLES // 4, progress=False).execute()
    dpx.Training(FC, dpx.DatabaseConfig(existing_dir=str(folder / "data")), session_dir=str(folder),
                 session_name="net", epoch_nb=2, batch_size=8, progress=False, seed=0).execute()
    return folder


def fed_log(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def stored_inputs(session: Path, mode: str = "training") -> np.ndarray:
    with dpx.open_database(session) as database:
        return database.read(mode, ["input"])["input"]


def environment(log: Path, runner: str = "inprocess", **options) -> dpx.EnvironmentConfig:
    workers = 2 if runner == "multiprocess" else 1
    return dpx.EnvironmentConfig(Replaying, runner=runner, workers=workers, load_samples=True, seed=0,
                                 env_kwargs={"log": str(log), "save": False}, **options)


def train(stored: Path, name: str, env: dpx.EnvironmentConfig | None, epochs: int, network=FC, existing=True):
    database = dpx.DatabaseConfig(existing_dir=str(stored / "data")) if existing else dpx.DatabaseConfig()
    return dpx.Training(network, database, env, session_dir=str(stored), session_name=name, epoch_nb=epochs,
                        batch_nb=None if existing else 4, batch_size=8, progress=False, seed=0).execute()


@pytest.mark.parametrize("runner", ["inprocess", "multiprocess"])
def test_training_feeds_every_stored_sample_once_in_the_first_epoch_only(stored, tmp_path, runner):
    log = tmp_path / "fed.log"
    summary = train(stored, f"first_{runner}", environment(log, runner), epochs=3)
    assert summary.steps == 3 * SAMPLES // 8
    fed = fed_log(log)
    assert sorted(fed) == sorted(stored_inputs(stored / "data")[:, 0].tolist())  # each stored sample, once
    with dpx.open_database(stored / "data") as database:
        assert database.count("training") == SAMPLES  # feeding stores nothing


def test_training_feeds_every_epoch_with_only_first_epoch_false(stored, tmp_path):
    log = tmp_path / "fed.log"
    train(stored, "every", environment(log, only_first_epoch=False), epochs=3)
    assert len(fed_log(log)) == 3 * SAMPLES


def test_the_network_trains_on_what_the_fed_environment_sets(stored, tmp_path):
    """Stored samples have fed = 0; the environment sets fed = 1 on each: a network predicting ``fed`` learns 1."""
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=2e-2, target_fields=["fed"])
    train(stored, "fed_target", environment(tmp_path / "a.log", only_first_epoch=False), epochs=12, network=network)
    train(stored, "stored_target", None, epochs=12, network=network)
    x = stored_inputs(stored / "data")[:8]

    def mean_prediction(session: str) -> float:
        predictor = dpx.load_predictor(stored / session)
        return float(np.mean([predictor({"input": row})["prediction"] for row in x]))

    assert mean_prediction("fed_target") > 0.6 > 0.3 > abs(mean_prediction("stored_target"))


def test_online_training_produces_the_first_epoch_then_feeds_the_stored_samples(stored, tmp_path):
    log = tmp_path / "fed.log"
    summary = train(stored, "online", environment(log, only_first_epoch=False), epochs=3, existing=False)
    with dpx.open_database(summary.session_path) as database:
        produced = database.read("training", ["input", "fed"])
    assert len(produced["input"]) == SAMPLES and not produced["fed"].any()
    fed = fed_log(log)
    assert len(fed) == 2 * SAMPLES and sorted(set(fed)) == sorted(set(produced["input"][:, 0].tolist()))


@pytest.mark.parametrize("runner", ["inprocess", "multiprocess"])
def test_prediction_replays_the_stored_samples_in_order_through_the_simulation(stored, tmp_path, runner):
    log = tmp_path / "fed.log"
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, network_dir=str(stored / "net"))
    summary = dpx.Prediction(network, environment(log, runner), dpx.DatabaseConfig(existing_dir=str(stored / "data")),
                             session_dir=str(tmp_path), session_name="replay", new_session=True, record=True,
                             progress=False).execute()
    inputs = stored_inputs(stored / "data")
    workers = 2 if runner == "multiprocess" else 1
    assert summary.steps == SAMPLES // workers and summary.recorded == SAMPLES and summary.error.count == SAMPLES
    with dpx.open_database(summary.session_path) as database:
        recorded = database.read("prediction")
    np.testing.assert_array_equal(recorded["input"], inputs)  # the stored inputs, in order
    np.testing.assert_array_equal(recorded["ground_truth"], 3 * inputs)  # the simulation's, not the stored one
    assert sorted(fed_log(log)) == sorted(inputs[:, 0].tolist())


def test_load_samples_where_it_would_feed_nothing_is_refused(stored, tmp_path):
    log = tmp_path / "fed.log"
    with pytest.raises(ConfigError, match="load_samples=True with only_first_epoch=True feeds the first epoch"):
        train(stored, "never", environment(log), epochs=2, existing=False)
    with pytest.raises(ConfigError, match="load_samples=True with always_produce=True"):
        train(stored, "never", environment(log, always_produce=True), epochs=2)
    with pytest.raises(ConfigError, match="DataGeneration produces new ones: drop load_samples"):
        dpx.DataGeneration(environment(log), session_dir=str(tmp_path), batch_nb=1, batch_size=4).prepare()
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, network_dir=str(stored / "net"))
    with pytest.raises(ConfigError, match=r"^DatabaseConfig: existing_dir is not set, and load_samples=True replays"):
        dpx.Prediction(network, environment(log), session_dir=str(tmp_path), session_name="p",
                       new_session=True).prepare()
    with pytest.raises(ConfigError, match=f"step_nb=99 with load_samples=True replays 99 stored samples, but .* holds "
                                          f"{SAMPLES} 'training' samples"):
        dpx.Prediction(network, environment(log), dpx.DatabaseConfig(existing_dir=str(stored / "data")),
                       session_dir=str(tmp_path), session_name="p", new_session=True, step_nb=99).prepare()
    assert not log.exists() and not (tmp_path / "p").exists()


def test_an_environment_whose_fields_do_not_fit_the_stored_samples_is_refused_before_anything_runs(stored, tmp_path):
    misfit = dpx.EnvironmentConfig("toy.mean", load_samples=True, env_kwargs={"n_points": 4})
    with pytest.raises(ConfigError, match=r"load_samples=True feeds toy.mean the training samples of .*data/dataset, "
                                          r"whose field 'input' is float32 \(3,\), but the environment declares it "
                                          r"float32 \(4, 3\)"):
        dpx.Training(FC, dpx.DatabaseConfig(existing_dir=str(stored / "data")), misfit, session_dir=str(tmp_path),
                     session_name="misfit", batch_size=8).prepare()
    assert not (tmp_path / "misfit").exists()


def test_the_command_line_replays_stored_samples_or_says_what_is_missing(stored, tmp_path, capsys):
    from dpx.cli import main

    job = tmp_path / "replay.toml"
    job.write_text(f"""
[environment]
environment_class = "dpx.testing_envs:Replaying"
load_samples = true
env_kwargs = {{ save = false }}

[network]
network_class = "fc"
network_dir = "{stored / 'net'}"

[pipeline]
session_dir = "{tmp_path}"
session_name = "cli"
new_session = true
record = true
""")
    assert main(["predict", str(job)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"dpx predict: error: {job} [database] existing_dir is not set, "
                                                   "and load_samples=True replays stored samples")
    assert not (tmp_path / "cli").exists()
    assert main(["predict", str(job), f'database.existing_dir="{stored / "data"}"']) == 0
    with dpx.open_database(tmp_path / "cli") as database:
        np.testing.assert_array_equal(database.read("prediction", ["input"])["input"], stored_inputs(stored / "data"))
