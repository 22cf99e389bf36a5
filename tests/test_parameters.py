"""save_parameters / load_parameters: named constants stored with the dataset, read back as untrusted input."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import dpx
from dpx.cli import main
from dpx.core import transport
from dpx.core.environment import FieldError
from dpx.core.parameters import FOLDER, MANIFEST, read_parameters, write_parameters
from dpx.core.runners import WorkerError
from dpx.core.storage import CorruptDatasetError, StorageError
from dpx.testing import RunnerChecks, prepare_environment, waiting_runner
from dpx.testing_envs import Replaying


def generate(folder, name, runner="inprocess", existing=None, new_session=True, batch_nb=2, **env_kwargs):
    config = dpx.EnvironmentConfig(Replaying, runner=runner, workers=2 if runner == "multiprocess" else 1, seed=0,
                                   env_kwargs=env_kwargs)
    return dpx.DataGeneration(config, dpx.DatabaseConfig(existing_dir=existing), session_dir=str(folder),
                              session_name=name, new_session=new_session, batch_nb=batch_nb, batch_size=4,
                              progress=False, allow_changes=True).execute()


def test_parameters_saved_by_one_run_are_loaded_by_the_next_one_and_its_workers(tmp_path):
    first = generate(tmp_path, "first").session_path
    stored = read_parameters(first / "dataset")
    assert list(stored) == [0] and stored[0]["name"] == "replaying 0"
    np.testing.assert_array_equal(stored[0]["scale"], np.full(3, 2.0, np.float32))
    assert (dpx.open_database(first).read("training", ["loaded"])["loaded"] == -1).all()  # none stored before it ran
    second = generate(tmp_path, "second", runner="multiprocess", existing=str(first), batch_nb=4,
                      save=False).session_path
    loaded = dpx.open_database(second).read("training", ["loaded"])["loaded"]
    assert len(loaded) == 16 and (loaded[8:] == 2.0).all()  # both workers: instance 1 loads instance 0's set
    copied = read_parameters(second / "dataset")  # the new session's copy of the dataset keeps them
    assert copied[0]["name"] == "replaying 0" and np.array_equal(copied[0]["scale"], stored[0]["scale"])


def test_info_shows_the_stored_parameters(tmp_path, capsys):
    session = generate(tmp_path, "info").session_path
    assert main(["info", str(session)]) == 0
    out = capsys.readouterr().out
    assert "parameters of environment 0:" in out
    assert "scale            float32 (3,)" in out and 'name             "replaying 0"' in out


def test_a_resumed_run_keeps_equal_parameters_and_refuses_other_values(tmp_path):
    session = generate(tmp_path, "resume").session_path
    manifest = session / "dataset" / FOLDER / MANIFEST
    before = manifest.read_bytes()
    generate(tmp_path, "resume", new_session=False, batch_nb=3)
    assert manifest.read_bytes() == before
    with pytest.raises(StorageError, match="parameter 'scale' of environment 0 is stored with another value"):
        generate(tmp_path, "resume", new_session=False, batch_nb=3, scale=3.0)
    assert manifest.read_bytes() == before
    np.testing.assert_array_equal(read_parameters(session / "dataset")[0]["scale"], np.full(3, 2.0, np.float32))


def test_save_parameters_validates_names_and_values():
    env = Replaying(save=False)  # as in its create(), init() or init_database()
    with pytest.raises(FieldError, match=r"Replaying.save_parameters\(\): parameter name '2d' must be a Python"):
        env.save_parameters(**{"2d": 1})
    with pytest.raises(FieldError, match="parameter 'mesh': .* is neither a numeric array nor a JSON value"):
        env.save_parameters(mesh=object())
    with pytest.raises(FieldError, match="parameter 'names': object arrays cannot be stored"):
        env.save_parameters(names=np.array(["a", None], dtype=object))
    env.save_parameters(young=1000.0, rest=np.zeros((2, 3)))
    prepare_environment(env)
    with pytest.raises(RuntimeError, match=r"save_parameters\(\) was called after the environment started"):
        env.save_parameters(young=2000.0)


def test_in_process_runner_hands_parameters_by_instance(tmp_path):
    RunnerChecks("inprocess", tmp_path, workers=1).parameters()


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    write_parameters(folder, {0: {"rest": np.arange(6, dtype=np.float32).reshape(2, 3), "young": 1000.0}})
    return folder


def edit_manifest(dataset, change):
    path = dataset / FOLDER / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest["instances"]["0"])
    path.write_text(json.dumps(manifest))


def test_round_trip_keeps_arrays_and_json_values(dataset):
    stored = read_parameters(dataset)
    assert stored[0]["young"] == 1000.0
    np.testing.assert_array_equal(stored[0]["rest"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("tamper, message", [
    (lambda e: e.update({"../../etc": {"value": 1}}), "parameter name '../../etc' must be a Python identifier"),
    (lambda e: e.update(rest={"dtype": "|O", "shape": [2, 3]}), "object arrays cannot be stored"),
    (lambda e: e.update(rest={"dtype": "<f4", "shape": [2, 3], "file": "/etc/passwd"}), "expected"),
    (lambda e: e.update(rest={"dtype": "<f4", "shape": [1 << 40, 1 << 20]}), "are not a storable array"),
    (lambda e: e.update(rest={"dtype": "<f4", "shape": [200, 3]}), r"holds float32 \(2, 3\), where"),
])
def test_a_tampered_manifest_is_refused(dataset, tamper, message):
    edit_manifest(dataset, tamper)
    with pytest.raises(CorruptDatasetError, match=message):
        read_parameters(dataset)


def test_array_files_are_checked_before_their_data_is_read(dataset):
    path = dataset / FOLDER / "0.rest.npy"
    np.save(path, np.array([{"code": "runs"}, None], dtype=object), allow_pickle=True)  # a pickle
    with pytest.raises(CorruptDatasetError, match="0.rest.npy holds object"):
        read_parameters(dataset)
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    path.write_bytes(path.read_bytes()[:-4])  # truncated
    with pytest.raises(CorruptDatasetError, match="holds 20 bytes of data where float32 .* needs 24"):
        read_parameters(dataset)
    path.unlink()
    os.symlink("/etc/passwd", path)
    with pytest.raises(CorruptDatasetError, match="is a symbolic link"):
        read_parameters(dataset)


@pytest.mark.parametrize("sent", [
    {"arrays": {}, "json": '{"../x": 1}'},
    {"arrays": {"rest": [1, 2]}, "json": "{}"},
    {"arrays": {}, "json": "[1, 2"},
    "not parameters",
])
def test_malformed_parameters_from_a_worker_are_its_failure(sent):
    """A worker's ``ready`` is untrusted: parameters that are not what save_parameters() accepts fail that worker."""
    key = bytes(range(32))
    runner, thread, outcome = waiting_runner({"authkey": key.hex(), "max_restarts": 0, "start_timeout": 30})
    channel = transport.connect(*runner.address, key, timeout=10)
    try:
        channel.send({"type": "hello", "token": None, "pid": os.getpid()})
        assert channel.receive(deadline=time.monotonic() + 10)["type"] == "init"
        channel.send({"type": "ready", "fields": {"input": [None, None], "ground_truth": [None, None]}, "scene": None,
                      "pid": os.getpid(), "parameters": sent})
        thread.join(30)
        assert isinstance(outcome.get("error"), WorkerError), outcome
        assert "sent malformed parameters" in str(outcome["error"]), outcome
    finally:
        channel.close()
        runner.close()


def test_a_training_session_keeps_the_parameters_of_the_dataset_it_read(tmp_path, capsys):
    data = generate(tmp_path, "data").session_path
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]})
    trained = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(data)), session_dir=str(tmp_path),
                           session_name="net", epoch_nb=1, batch_size=4, progress=False).execute().session_path
    copied = read_parameters(trained / "dataset")
    assert copied[0]["name"] == "replaying 0" and np.array_equal(copied[0]["scale"], np.full(3, 2.0, np.float32))
    assert main(["info", str(trained)]) == 0
    assert "parameters of environment 0:" in capsys.readouterr().out
