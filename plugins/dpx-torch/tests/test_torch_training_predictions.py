"""get_prediction during Training: the environments ask the network being trained, and store its answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dpx
from dpx.core.config import ConfigError
from dpx.testing import saved_answers
from dpx.testing_envs import Consulting

NETWORK = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, save_each_epoch=True)
BATCH_NB, BATCH_SIZE = 3, 16


def answers(session, inputs, epoch):
    return saved_answers(session, NETWORK, epoch, inputs)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("runner", "workers"), [("inprocess", 1), ("multiprocess", 2)])
def test_environments_store_the_answers_of_the_network_being_trained(tmp_path, runner, workers, normalize):
    stored_before = 0
    database = dpx.DatabaseConfig(normalize=normalize)
    if normalize:  # the normalisation comes from stored samples, which the network is built from before producing
        dpx.DataGeneration(dpx.EnvironmentConfig(Consulting, env_kwargs={"ask": False}, seed=1),
                           dpx.DatabaseConfig(normalize=True), session_dir=str(tmp_path), session_name="data",
                           batch_nb=2, batch_size=32, progress=False).execute()
        stored_before, database = 64, dpx.DatabaseConfig(existing_dir=str(tmp_path / "data"), normalize=True)
    environment = dpx.EnvironmentConfig(Consulting, seed=0, runner=runner, workers=workers, always_produce=True)
    summary = dpx.Training(NETWORK, database, environment, session_dir=str(tmp_path), session_name="net", epoch_nb=2,
                           batch_nb=BATCH_NB, batch_size=BATCH_SIZE, replay_when_starved=False, progress=False,
                           seed=0, allow_changes=True).execute()  # the stored samples were made without asking
    stored = dpx.open_database(summary.session_path).read("training")
    assert len(stored["asked"]) == stored_before + 2 * BATCH_NB * BATCH_SIZE
    # epoch 1 produces once epoch 0's network is saved, and (replay_when_starved=False) trains only when
    # its first batch is there: every sample of that batch was made asking exactly that network
    first = slice(stored_before + BATCH_NB * BATCH_SIZE, stored_before + (BATCH_NB + 1) * BATCH_SIZE)
    inputs, asked = stored["input"][first], stored["asked"][first]
    np.testing.assert_allclose(asked, answers(summary.session_path, inputs, 0), rtol=1e-5, atol=1e-6)
    # the network kept training after that batch, and the first epoch's samples asked an earlier one
    assert np.abs(asked - answers(summary.session_path, inputs, 1)).max() > 1e-3
    epoch_0 = slice(stored_before, stored_before + BATCH_SIZE)
    assert np.abs(stored["asked"][epoch_0] - answers(summary.session_path, stored["input"][epoch_0], 0)).max() > 1e-3


@pytest.mark.parametrize(("env_kwargs", "normalize", "reason"), [
    ({"declare": False}, False, r"declare the dtype and shape of the fields \['input', 'ground_truth'\]"),
    ({}, True, r"with DatabaseConfig\(normalize=True\) and no stored sample"),
])
def test_asking_a_network_built_from_the_first_batch_says_why_and_stores_nothing(tmp_path, env_kwargs, normalize, reason):
    environment = dpx.EnvironmentConfig(Consulting, env_kwargs=env_kwargs, seed=0)
    training = dpx.Training(NETWORK, dpx.DatabaseConfig(normalize=normalize), environment, session_dir=str(tmp_path),
                            session_name="net", batch_nb=2, batch_size=8, progress=False)
    with pytest.raises(ConfigError, match=r"get_prediction\(\) in Training: the network is built from the first "
                                          rf"batch, which this sample is part of: {reason}"):
        training.execute()
    dataset = tmp_path / "net" / "dataset"
    assert not (dataset / "dataset.json").exists() or dpx.open_database(dataset).count("training") == 0


def test_a_prediction_between_training_steps_leaves_the_torch_generator_and_train_mode_to_training():
    from dpx_torch.backend import TorchBackend

    config = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16], "dropout": 0.5})
    backend = TorchBackend(config, {"input": (np.float32, (4,)), "ground_truth": (np.float32, (2,))}, {}, seed=0)
    batch = {"input": np.ones((8, 4), np.float32), "ground_truth": np.zeros((8, 2), np.float32)}
    backend.train_batch(batch)
    state = torch.get_rng_state()
    first = backend.predict({"input": batch["input"]})["ground_truth"]
    assert torch.equal(state, torch.get_rng_state())  # dropout is off: an exact resume still replays the same draws
    np.testing.assert_array_equal(first, backend.predict({"input": batch["input"]})["ground_truth"])
    backend.train_batch(batch)
    assert backend.network.training
