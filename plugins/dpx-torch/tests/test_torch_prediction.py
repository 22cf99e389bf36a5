"""Prediction: finding the network, checking the environment against it, recording each sample once."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.network import NoNetworkError

FC = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A session holding a spring dataset and a network trained on it."""
    folder = tmp_path_factory.mktemp("prediction")
    config = dpx.EnvironmentConfig("toy.spring", seed=0)
    dpx.DataGeneration(config, dpx.DatabaseConfig(normalize=True), session_dir=str(folder), session_name="net",
                       batch_nb=4, batch_size=64, progress=False).execute()
    dpx.Training(FC, dpx.DatabaseConfig(existing_dir=str(folder / "net"), normalize=True), session_dir=str(folder),
                 session_name="net", new_session=False, epoch_nb=1, batch_size=64, progress=False, seed=0).execute()
    return folder / "net"


def runs(session):
    return json.loads((session / "session.json").read_text())["runs"]


def predict(session, steps, seed=5, network=FC, environment="toy.spring", **kwargs):
    options = {"session_dir": str(session.parent), "session_name": session.name, "step_nb": steps, "progress": False}
    return dpx.Prediction(network, dpx.EnvironmentConfig(environment, seed=seed), **{**options, **kwargs}).execute()


def recorded(session):
    with dpx.open_database(session) as database:
        return database.read("prediction") if "prediction" in database.modes else {}


def test_recording_again_adds_nothing_and_a_longer_run_adds_only_the_later_steps(trained, tmp_path):
    session = tmp_path / "rec"
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]}, network_dir=str(trained))
    assert predict(session, 30, network=network, new_session=True, record=True).recorded == 30
    first = recorded(session)
    assert predict(session, 30, network=network, record=True).recorded == 0
    assert predict(session, 50, network=network, record=True).recorded == 20
    both = recorded(session)
    assert len(both["prediction"]) == 50
    for name, values in first.items():
        np.testing.assert_array_equal(both[name][:30], values)
    once = tmp_path / "once"
    predict(once, 50, network=network, new_session=True, record=True)
    for name, values in recorded(once).items():
        np.testing.assert_array_equal(both[name], values, err_msg=name)


def test_recording_without_a_seed_continues_with_the_recorded_one(trained, tmp_path):
    session = tmp_path / "noseed"
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]}, network_dir=str(trained))
    predict(session, 10, seed=None, network=network, new_session=True, record=True)
    assert predict(session, 10, seed=None, network=network, record=True).recorded == 0
    assert len(recorded(session)["prediction"]) == 10
    assert runs(session)[0]["seed"] == runs(session)[1]["seed"]


def test_recording_other_samples_after_a_recording_is_refused(trained, tmp_path):
    session = tmp_path / "other"
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]}, network_dir=str(trained))
    predict(session, 10, network=network, new_session=True, record=True)
    with pytest.raises(ConfigError, match=r"already records 10 prediction samples and they were made with seed 5 \(now 6\)"):
        predict(session, 10, seed=6, network=network, record=True)
    assert len(recorded(session)["prediction"]) == 10 and len(runs(session)) == 1
    assert predict(session, 10, seed=6, network=network).steps == 10, "without record, any run is fine"


def test_predicting_without_a_trained_network_says_train_first_and_creates_nothing(tmp_path):
    with pytest.raises(NoNetworkError, match=rf"session='{tmp_path / 'empty'}': no such folder.*train first"):
        predict(tmp_path / "empty", 5)
    assert not (tmp_path / "empty").exists()
    (tmp_path / "untrained" / "network").mkdir(parents=True)
    with pytest.raises(NoNetworkError, match=r"the last network named 'network' is not saved there; saved: nothing.*train first"):
        predict(tmp_path / "untrained", 5)


def test_an_environment_of_other_shapes_names_both_before_the_first_step_and_is_not_recorded(trained):
    before = len(runs(trained))
    with pytest.raises(ConfigError, match=r"trained on 'input' samples of shape \(5,\), but environment toy.mean makes them of shape \(30, 3\)"):
        predict(trained, 5, environment="toy.mean", record=True)
    assert len(runs(trained)) == before
    assert "prediction" not in dpx.open_database(trained).modes


def test_an_environment_of_other_shapes_leaves_no_new_session_behind(trained, tmp_path):
    network = dpx.NetworkConfig("fc", network_dir=str(trained))
    with pytest.raises(ConfigError, match=r"trained on 'input' samples of shape \(5,\), but environment toy.mean"):
        predict(tmp_path / "elsewhere", 5, network=network, environment="toy.mean", new_session=True, record=True)
    assert not tmp_path.joinpath("elsewhere").exists() and list(tmp_path.iterdir()) == []


def test_network_kwargs_default_to_the_saved_ones(trained):
    summary = predict(trained, 5, network=dpx.NetworkConfig("fc"))
    assert summary.steps == 5 and summary.error.count == 5


# -- a network beside an environment, outside a pipeline (dpx.load_predictor, connect_predictor) --------------


def test_load_predictor_takes_the_saved_config_and_answers_as_the_trained_network(trained):
    from dpx.core.network import find_trained_network
    from dpx.core.predictor import load_network

    predictor = dpx.load_predictor(trained)  # no NetworkConfig: architecture, fields, kwargs from the checkpoint
    assert predictor.checkpoint == trained / "network" / "network.pt" and predictor.input_fields == ("input",)
    assert dpx.load_predictor(trained / "network").checkpoint == predictor.checkpoint
    backend, _ = load_network(FC, find_trained_network(FC, trained))
    sample = np.random.default_rng(0).random(5, dtype=np.float32)
    answer = predictor({"input": sample})
    np.testing.assert_array_equal(answer["prediction"], backend.predict({"input": sample[None]})["ground_truth"][0])
    assert answer["prediction"].shape == (1,) and (predictor.calls, predictor.seconds > 0) == (1, True)
    with pytest.raises(ValueError, match=r"trained on 'input' samples of shape \(5,\), but was asked to predict on one "
                                         r"of shape \(4,\)"):
        predictor({"input": sample[:4]})


def test_connect_predictor_checks_the_fields_now_and_when_declared_later(trained):
    from dpx_toy.mean import Mean
    from dpx_toy.spring import Spring

    predictor = dpx.load_predictor(trained)
    spring = Spring()
    spring.init_database()
    spring.connect_predictor(predictor)
    spring.rng = np.random.default_rng(0)
    spring.draw_parameters()  # outside a pipeline, the sample's parameters are drawn by hand
    spring.step()
    assert spring.get_prediction(input=spring.sample["input"])["prediction"].shape == (1,)
    declared = Mean()
    declared.init_database()
    with pytest.raises(ConfigError, match=r"trained on 'input' samples of shape \(5,\), but environment Mean makes "
                                          r"them of shape \(30, 3\)"):
        declared.connect_predictor(predictor)
    later = Mean()  # connected before it declares its fields (an environment whose scene is built afterwards)
    later.connect_predictor(predictor)
    with pytest.raises(ConfigError, match=r"of shape \(5,\), but environment Mean makes them of shape \(30, 3\)"):
        later.init_database()
    later.connect_predictor(None)
    with pytest.raises(RuntimeError, match=r"connect one with connect_predictor\(dpx.load_predictor\(session\)\)"):
        later.get_prediction(input=np.zeros(5, np.float32))


def test_a_network_class_saved_as_an_import_path_is_not_imported_from_the_checkpoint(tmp_path):
    network = dpx.NetworkConfig("dpx_torch.fc:FC", network_kwargs={"hidden": [4]})
    config = dpx.EnvironmentConfig("toy.spring", seed=0)
    dpx.DataGeneration(config, session_dir=str(tmp_path), session_name="net", batch_nb=1, batch_size=16,
                       progress=False).execute()
    dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(tmp_path / "net")), session_dir=str(tmp_path),
                 session_name="net", new_session=False, epoch_nb=1, batch_size=16, progress=False, seed=0).execute()
    with pytest.raises(ConfigError, match=r"trained with network_class='dpx_torch.fc:FC', an import path a checkpoint "
                                          r"cannot name safely; load it with a NetworkConfig\(network_class=...\)"):
        dpx.load_predictor(tmp_path / "net")
    assert dpx.load_predictor(tmp_path / "net", network).checkpoint.exists()
