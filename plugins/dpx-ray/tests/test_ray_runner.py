"""The ray runner: real Ray actors, real failures, the same dataset as in-process."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.runners import WorkerError
from dpx.core.producer import resolve_seed
from dpx.testing import assert_light_import

ray = pytest.importorskip("ray")

from dpx_ray.runner import RayRunner  # noqa: E402  (needs ray)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module (its workers import ``dpx.testing_envs`` like any installed module)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    yield
    ray.shutdown()


def generate(tmp_path, name, runner="ray", workers=2, batch_nb=4, batch_size=50, **kwargs):
    from dpx.testing_envs import Noise

    kwargs.setdefault("environment_class", Noise)
    config = dpx.EnvironmentConfig(runner=runner, workers=workers, seed=11, **kwargs)
    return dpx.DataGeneration(config, session_dir=str(tmp_path), session_name=name, batch_nb=batch_nb,
                              batch_size=batch_size, progress=False).execute()


def dataset(summary) -> np.ndarray:
    return dpx.open_database(summary.session_path).read()["input"]


def test_entry_point_is_light():
    assert_light_import("dpx_ray", heavy=["ray"])


def test_same_dataset_as_in_process_for_any_number_of_actors(tmp_path):
    reference = dataset(generate(tmp_path, "inprocess", runner="inprocess", workers=1))
    for workers in (1, 2):
        assert np.array_equal(dataset(generate(tmp_path, f"a{workers}", workers=workers)), reference)
    chunked = generate(tmp_path, "chunks", runner_kwargs={"chunk_size": 7, "num_cpus": 0.5})
    assert np.array_equal(dataset(chunked), reference)
    assert ray.is_initialized(), "the runner shut down a Ray it did not start"


def test_refused_samples_are_counted_and_recorded_as_in_process(tmp_path):
    from dpx.testing_envs import Picky

    runs = {runner: generate(tmp_path, runner, runner=runner, workers=workers, environment_class=Picky,
                             record_wrong_samples=True)
            for runner, workers in (("inprocess", 1), ("ray", 2))}
    assert np.array_equal(dataset(runs["ray"]), dataset(runs["inprocess"]))
    assert runs["ray"].refused == runs["inprocess"].refused > 100

    def recorded(summary):
        files = sorted((summary.session_path / "dataset" / "wrong_samples").glob("*.npz"))
        return sorted((f.name.split("_")[0], np.load(f)["input"].tobytes()) for f in files)

    assert recorded(runs["ray"]) == recorded(runs["inprocess"])
    assert len(recorded(runs["ray"])) == runs["ray"].refused


def test_bad_options_and_env_kwargs_that_cannot_travel(tmp_path):
    with pytest.raises(ConfigError, match=r"env_kwargs\['shape'\]=<object object .*> cannot be sent to worker processes"):
        generate(tmp_path, "bad", env_kwargs={"shape": object()})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['workers'\] for the ray runner"):
        generate(tmp_path, "typo", runner_kwargs={"workers": 2})
    with pytest.raises(ConfigError, match=r"invalid num_cpus='1', timeout=0 for the ray runner"):
        generate(tmp_path, "invalid", runner_kwargs={"num_cpus": "1", "timeout": 0})


def test_actors_that_do_not_start_stop_the_run_with_the_reason(tmp_path):
    from dpx.testing_envs import Stuck

    not_started = r"actor 0 did not start within start_timeout=3s: either its environment is stuck .* lacks 64 free CPU"
    with pytest.raises(WorkerError, match=not_started):
        generate(tmp_path, "too big", runner_kwargs={"num_cpus": 64, "start_timeout": 3})
    with pytest.raises(WorkerError, match=not_started.replace("64", "1")):
        generate(tmp_path, "stuck", environment_class=Stuck, runner_kwargs={"start_timeout": 3})
    assert generate(tmp_path, "after", batch_nb=1).total == 50, "the stuck actors were not released"


@pytest.mark.parametrize("how", ["raise", "exit", "kill", "hang"])
def test_a_failing_actor_is_restarted_and_nothing_is_lost(tmp_path, how, caplog):
    from dpx.testing_envs import Faulty

    reference = dataset(generate(tmp_path, "reference", runner="inprocess", workers=1,
                                 environment_class=Faulty, env_kwargs={"how": how, "threshold": 99.0}))
    marker = tmp_path / f"{how}.marker"
    with caplog.at_level(logging.WARNING, logger="dpx.ray"):
        summary = generate(tmp_path, how, environment_class=Faulty, env_kwargs={"how": how, "marker": str(marker)},
                           runner_kwargs={"timeout": 3.0})
    assert marker.exists(), "the failure was not injected"
    assert np.array_equal(dataset(summary), reference), "samples lost, duplicated or half-written"
    died = "died (ActorDiedError: its worker process has died"
    expected = {"raise": "FloatingPointError('the solver diverged')", "exit": died, "kill": died,
                "hang": "hung: no answer within timeout=3s"}[how]
    assert expected in caplog.text and "restart 1 of 3" in caplog.text


def test_an_actor_failing_every_time_stops_the_run_cleanly(tmp_path):
    from dpx.testing_envs import Faulty

    with pytest.raises(WorkerError) as raised:
        generate(tmp_path, "doomed", environment_class=Faulty, env_kwargs={"how": "raise", "always": True},
                 batch_nb=20, runner_kwargs={"max_restarts": 2})
    message = str(raised.value)
    assert "FloatingPointError('the solver diverged')" in message and "in break_down" in message
    assert "max_restarts=2 reached" in message
    stored = dpx.open_database(tmp_path / "doomed")
    assert stored.count() % 50 == 0 and np.isfinite(stored.read()["input"]).all()


def test_get_prediction_travels_to_the_driver_and_back():
    from dpx.testing_envs import Asking

    config = dpx.EnvironmentConfig(Asking, runner="ray", workers=2, seed=0, runner_kwargs={"max_restarts": 0})
    asked = []

    def predictor(inputs):
        asked.append(inputs["input"].shape)
        return {"prediction": inputs["input"].mean(axis=0) * 2}

    with RayRunner(config, resolve_seed(0)[1]) as runner:
        runner.connect(predictor)
        for step in range(3):
            batch = runner.produce(np.arange(2 * step, 2 * step + 2), pinned=True)
            runner.apply(batch["ground_truth"] * 2)  # Asking checks it gets back what it was told
    assert asked == [(5, 3)] * 6

    with RayRunner(config, resolve_seed(0)[1]) as runner, pytest.raises(WorkerError, match="needs a network"):
        runner.produce(np.arange(2))


def test_visual_updates_reach_the_viewer(tmp_path, dpx_plugin):
    from dpx import testing_envs

    module = type(sys)("recorder_plugin")
    module.dpx_visualizers = dpx.hookimpl(lambda: {"recorder": "dpx.testing_envs:Recorder"})
    dpx_plugin(module, name="recorder")
    config = dpx.EnvironmentConfig(testing_envs.Moving, runner="ray", workers=2, seed=0, visualizer="recorder")
    summary = dpx.DataGeneration(config, session_dir=str(tmp_path), batch_nb=2, batch_size=3, progress=False).execute()
    viewer = testing_envs.Recorder.instances[-1]
    assert viewer.closed and set(viewer.scenes) == {0, 1} and viewer.scenes[0][0]["kind"] == "points"
    assert len(viewer.updates) == 6
    stored = dpx.open_database(summary.session_path).read()["input"]
    shown = {tuple(np.ravel(updates[0]["positions"])) for _, updates in viewer.updates}
    assert shown == {tuple(np.ravel(sample)) for sample in stored}


def descendants(pid: int) -> set[int]:
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(table[::2], table[1::2]):
        children.setdefault(int(parent), []).append(int(child))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_ctrl_c_stops_its_own_ray_and_leaves_a_resumable_session(tmp_path):
    """The job starts its own local Ray (the runner's default): Ctrl-C must leave no Ray process behind."""
    code = (
        "import dpx\n"
        "from dpx.testing_envs import Noise\n"
        "config = dpx.EnvironmentConfig(Noise, runner='ray', workers=2, seed=0, runner_kwargs={'chunk_size': 1})\n"
        "dpx.DataGeneration(config, session_dir=%r, session_name='s', batch_nb=10**6, batch_size=10, progress=False).execute()\n"
    ) % (str(tmp_path),)
    job = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "s" / "dataset" / "dataset.json").exists():
        time.sleep(0.2)
    time.sleep(1)
    started = descendants(job.pid)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode != 0 and "KeyboardInterrupt" in stderr
    assert "Run again with new_session=False to resume" in stderr
    time.sleep(1)
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert len(started) >= 4 and not alive, f"orphan Ray processes {alive} of {sorted(started)}"
    assert dpx.open_database(tmp_path / "s").count() > 0
