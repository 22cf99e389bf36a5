"""The ray runner: real Ray actors, real failures, the same dataset as in-process."""

from __future__ import annotations

import json
import os
import re
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
from dpx.testing import RunnerChecks, assert_light_import, saved_answers

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module (its workers import ``dpx.testing_envs`` like any installed module)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    yield
    ray.shutdown()


def test_entry_point_is_light():
    assert_light_import("dpx_ray", heavy=["ray"])


@pytest.fixture
def checks(tmp_path) -> RunnerChecks:
    return RunnerChecks("ray", tmp_path)


def test_same_dataset_as_in_process_for_any_number_of_actors(checks):
    checks.same_dataset({"chunk_size": 7, "num_cpus": 0.5})
    assert ray.is_initialized(), "the runner shut down a Ray it did not start"


def test_refused_samples_are_counted_and_recorded_as_in_process(checks):
    checks.refused_samples()


def test_bad_options_and_env_kwargs_that_cannot_travel(checks):
    checks.portable_kwargs()
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['workers'\] for the ray runner"):
        checks.generate(runner_kwargs={"workers": 2})
    with pytest.raises(ConfigError, match=r"invalid num_cpus='1', timeout=0 for the ray runner"):
        checks.generate(runner_kwargs={"num_cpus": "1", "timeout": 0})


def test_actors_that_do_not_start_stop_the_run_with_the_reason(checks):
    with pytest.raises(WorkerError, match=r"actor 0 did not start within start_timeout=3s: .* lacks 64 free CPU"):
        checks.generate(runner_kwargs={"num_cpus": 64, "start_timeout": 3})
    assert "either its environment is stuck building its simulation" in checks.stuck_start()


def test_a_failing_actor_is_restarted_and_nothing_is_lost(checks):
    reasons = checks.failures()
    for how in ("exit", "kill"):
        assert "died (ActorDiedError: its worker process has died" in reasons[how]


def test_an_actor_failing_every_time_stops_the_run_cleanly(checks):
    checks.gives_up()


def test_get_prediction_travels_to_the_driver_and_back(checks):
    checks.predictions()


def test_environments_ask_the_network_being_trained_from_their_actors(tmp_path):
    from dpx.testing_envs import Consulting

    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2, save_each_epoch=True)
    environment = dpx.EnvironmentConfig(Consulting, seed=0, runner="ray", workers=2, always_produce=True)
    summary = dpx.Training(network, dpx.DatabaseConfig(), environment, session_dir=str(tmp_path), session_name="net",
                           epoch_nb=2, batch_nb=3, batch_size=16, replay_when_starved=False, progress=False,
                           seed=0).execute()
    stored = dpx.open_database(summary.session_path).read("training")
    first = slice(48, 64)  # epoch 1's first batch, made asking the network saved after epoch 0 (see dpx-torch's tests)
    np.testing.assert_allclose(stored["asked"][first], saved_answers(summary.session_path, network, 0, stored["input"][first]),
                               rtol=1e-5, atol=1e-6)


def test_stored_samples_and_parameters_reach_the_actors_as_in_process(checks):
    checks.feeds()
    checks.parameters()


def test_visual_updates_reach_the_viewer(checks):
    checks.visuals()


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
    assert "pipeline.new_session=false" in stderr
    time.sleep(1)
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert len(started) >= 4 and not alive, f"orphan Ray processes {alive} of {sorted(started)}"
    assert dpx.open_database(tmp_path / "s").count() > 0


def test_contract_errors_stop_the_run_as_in_process(checks):
    assert re.search(r"\(in actor \d \(pid \d+ on [\d.]+\)\)$", checks.contract_errors())


LISTENERS = """
import json, os, re, subprocess
import numpy as np, dpx
from dpx.core.producer import resolve_seed
from dpx.testing_envs import Noise
from dpx_ray.runner import RayRunner

def family(root):
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            pass
    found, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for child in [c for c, p in parents.items() if p == parent and c not in found]:
            found.add(child)
            todo.append(child)
    return found

config = dpx.EnvironmentConfig(Noise, runner="ray", workers=1, seed=0, runner_kwargs={
    "init_kwargs": {"num_cpus": 1, "object_store_memory": 100 * 2**20}})
with RayRunner(config, resolve_seed(0)[1]) as runner:
    runner.produce(np.arange(2))
    ours = family(os.getpid())
    lines = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    print(json.dumps([line.split()[3] for line in lines if {int(p) for p in re.findall(r"pid=(\\d+)", line)} & ours]))
"""


def test_a_ray_started_by_the_runner_listens_on_loopback_only(tmp_path):
    """Every server of the local Ray the runner starts itself (GCS, raylet, workers) is bound to loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    addresses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(addresses) >= 3, addresses  # GCS, raylet, the actor's worker at least
    exposed = [a for a in addresses if not re.fullmatch(r"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]|\[::1\]):\d+", a)]
    assert not exposed, f"the runner's own Ray listens on {exposed} (of {addresses})"
