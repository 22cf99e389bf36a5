"""Resuming an interrupted training: the same samples, weights and curves as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import dpx
from dpx.core.network import CheckpointError
from dpx.core.stats import read_csv_curves

#: One online training in its own process. The environment kills that process
#: with SIGKILL when asked to make sample ``KILL_AT`` (an environment variable,
#: not an env_kwargs: a resume with other env_kwargs is refused); until then each sample
#: takes 70 ms, so each 8-sample batch is committed to the dataset before the
#: next (the storage commits at most every 0.5 s) and the kill finds exactly
#: the batches before it stored.
ONLINE_TRAINING = """
import os, signal, sys, time
import torch
import dpx
from dpx_toy.mean import Mean

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


class KilledAt(Mean):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kill_at, self.made = int(os.environ["KILL_AT"]), 0

    def step(self):
        if self.kill_at >= 0:
            if self.made == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.07)
        self.made += 1
        super().step()


folder, name, seed = sys.argv[1], sys.argv[2], sys.argv[3]
network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=3e-3, device="cpu")
environment = dpx.EnvironmentConfig(KilledAt, env_kwargs={"n_points": 5})
dpx.Training(network, dpx.DatabaseConfig(normalize=True), environment, session_dir=folder, session_name=name,
             new_session=False, epoch_nb=3, batch_nb=6, batch_size=8, replay_when_starved=False, progress=False,
             seed=None if seed == "none" else int(seed)).execute()
"""


def online_training(folder, name, kill_at=-1, seed=None):
    return subprocess.run([sys.executable, "-c", ONLINE_TRAINING, str(folder), name, str(seed).lower()],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KILL_AT": str(kill_at)})


def test_online_training_killed_in_epoch_0_resumes_to_the_uninterrupted_samples_weights_and_curves(tmp_path):
    killed = online_training(tmp_path, "resumed", kill_at=36)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stored = dpx.open_database(tmp_path / "resumed").count()
    assert stored == 32, "the 4 batches before the kill are stored"
    resumed = online_training(tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr
    runs = json.loads((tmp_path / "resumed" / "session.json").read_text())["runs"]
    assert runs[0]["seed"] == runs[1]["seed"], "a resume continues the seed of the run it resumes"
    straight = online_training(tmp_path, "straight", seed=runs[0]["seed"])
    assert straight.returncode == 0, straight.stderr

    with dpx.open_database(tmp_path / "straight") as a, dpx.open_database(tmp_path / "resumed") as b:
        assert a.count() == b.count() == 6 * 8
        for name, values in a.read().items():
            np.testing.assert_array_equal(values, b.read()[name], err_msg=name)
        for name, moments in a.normalization.items():
            np.testing.assert_array_equal(moments.mean, b.normalization[name].mean)
            np.testing.assert_array_equal(moments.m2, b.normalization[name].m2)
    weights = [torch.load(tmp_path / s / "network" / "network.pt", weights_only=True)["state_dict"]
               for s in ("straight", "resumed")]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert read_csv_curves(tmp_path / "resumed" / "stats") == read_csv_curves(tmp_path / "straight" / "stats")


FC = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]})


class InterruptedLoss(torch.nn.Module):
    """MSE that raises KeyboardInterrupt (a Ctrl-C) at its ``at``-th call, once per process."""

    at = -1

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, prediction, target):
        self.calls += 1
        if self.calls == InterruptedLoss.at:
            InterruptedLoss.at = -1
            raise KeyboardInterrupt
        return torch.nn.functional.mse_loss(prediction, target)


@pytest.fixture
def dataset(tmp_path):
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    dpx.DataGeneration(config, dpx.DatabaseConfig(normalize=True), session_dir=str(tmp_path), session_name="data",
                       batch_nb=4, batch_size=16, progress=False).execute()
    return tmp_path / "data"


def offline_training(folder, dataset, name, **kwargs):
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, loss=InterruptedLoss)
    options = {"epoch_nb": 3, "batch_size": 16, "progress": False, "seed": 0, **kwargs}
    return dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                        session_dir=str(folder), session_name=name, **options)


def test_resumed_training_writes_each_step_of_the_curves_once(tmp_path, dataset):
    straight = offline_training(tmp_path, dataset, "straight").execute()
    InterruptedLoss.at = 7  # epoch 1, after the checkpoint of epoch 0 (steps 1-4)
    with pytest.raises(KeyboardInterrupt):
        offline_training(tmp_path, dataset, "resumed").execute()
    assert [step for step, _ in read_csv_curves(tmp_path / "resumed" / "stats")["loss/batch"]] == list(range(1, 7))
    offline_training(tmp_path, dataset, "resumed", new_session=False).execute()
    resumed = read_csv_curves(tmp_path / "resumed" / "stats")
    assert [step for step, _ in resumed["loss/batch"]] == list(range(1, 13))
    assert resumed == read_csv_curves(straight.session_path / "stats")


def test_a_killed_run_torn_csv_row_is_dropped_on_resume(tmp_path, dataset):
    offline_training(tmp_path, dataset, "torn", epoch_nb=1).execute()
    curves = tmp_path / "torn" / "stats" / "curves.csv"
    with open(curves, "a") as file:
        file.write("loss/batch,5,0.12")  # a row cut by a kill, no newline
    offline_training(tmp_path, dataset, "torn", epoch_nb=2, new_session=False).execute()
    steps = [step for step, _ in read_csv_curves(tmp_path / "torn" / "stats")["loss/batch"]]
    assert steps == list(range(1, 9))


# -- corrupt checkpoints -----------------------------------------------------------------


def corrupt_checkpoints(folder, good):
    data = good.read_bytes()
    yield "empty", b""
    yield "cut in the middle", data[: len(data) // 2]
    yield "not a zip", b"garbage that is no zip archive" * 10
    import io
    import zipfile

    # a torch zip whose pickle names a global outside the allowed ones (os.system)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                content = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02."
            target.writestr(item, content)
    yield "a forbidden global", buffer.getvalue()
    yield "a plain dict", _torch_bytes({"format": "dpx-torch-checkpoint"})


def _torch_bytes(value):
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_corrupt_checkpoints_are_one_line_errors_naming_the_file(tmp_path, dataset):
    trained = offline_training(tmp_path, dataset, "net", epoch_nb=1).execute()
    good = trained.session_path / "network" / "network.pt"
    backend = dpx.plugins.load("network_backends", "torch")
    for what, content in corrupt_checkpoints(tmp_path, good):
        path = tmp_path / f"{what.replace(' ', '_')}.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as caught:
            backend.read_extra(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, (what, message)
        assert "not a readable dpx-torch checkpoint" in message, (what, message)
    good.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"network\.pt is not a readable dpx-torch checkpoint: the file is empty"):
        offline_training(tmp_path, dataset, "net", new_session=False).execute()


def always_producing_training(folder, name, **kwargs):
    environment = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0, always_produce=True)
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [8]}, loss=InterruptedLoss)
    options = {"epoch_nb": 3, "batch_nb": 4, "batch_size": 16, "progress": False, "seed": 0, "replay_when_starved": False}
    return dpx.Training(network, dpx.DatabaseConfig(normalize=True), environment, session_dir=str(folder),
                        session_name=name, **{**options, **kwargs})


@pytest.mark.parametrize("interrupted_at", [3, 7])  # epoch 0 (before any epoch's checkpoint), epoch 1
def test_always_producing_training_interrupted_by_ctrl_c_resumes_exactly(tmp_path, interrupted_at):
    straight = always_producing_training(tmp_path, "straight").execute()
    InterruptedLoss.at = interrupted_at
    with pytest.raises(KeyboardInterrupt):
        always_producing_training(tmp_path, "resumed").execute()
    resumed = always_producing_training(tmp_path, "resumed", new_session=False).execute()
    with dpx.open_database(straight.session_path) as a, dpx.open_database(resumed.session_path) as b:
        assert a.count() == b.count() == 3 * 4 * 16
        np.testing.assert_array_equal(a.read()["input"], b.read()["input"])
    weights = [torch.load(s.session_path / "network" / "network.pt", weights_only=True)["state_dict"]
               for s in (straight, resumed)]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert read_csv_curves(resumed.session_path / "stats") == read_csv_curves(straight.session_path / "stats")
