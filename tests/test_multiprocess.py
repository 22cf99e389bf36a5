"""The multiprocess runner: real worker processes, real sockets, real failures."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError, Client
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.multiprocess import MultiprocessRunner
from dpx.core.producer import resolve_seed
from dpx.core.runners import WorkerError
from dpx.testing import RunnerChecks


@pytest.fixture
def checks(tmp_path) -> RunnerChecks:
    return RunnerChecks("multiprocess", tmp_path)


def generate(tmp_path, name, **kwargs):
    from dpx.testing_envs import Noise

    kwargs.setdefault("environment_class", Noise)
    config = dpx.EnvironmentConfig(runner="multiprocess", workers=2, seed=11, **kwargs)
    return dpx.DataGeneration(config, session_dir=str(tmp_path), session_name=name, batch_nb=4, batch_size=50,
                              progress=False).execute()


def test_same_dataset_for_any_number_of_workers_and_chunks(checks):
    checks.same_dataset({"chunk_size": 7})
    RunnerChecks("multiprocess", checks.directory / "three", workers=3).same_dataset()


def test_env_kwargs_must_travel(checks):
    checks.portable_kwargs()


def test_refused_samples_are_recorded_from_workers_too(checks):
    checks.refused_samples()


def test_a_failing_worker_is_restarted_and_nothing_is_lost(checks):
    reasons = checks.failures()
    assert "died with exit code 1" in reasons["exit"] and "died with exit code -9 (killed by a signal)" in reasons["kill"]


def test_a_worker_failing_every_time_stops_the_run_cleanly(checks):
    checks.gives_up()


def test_a_worker_stuck_building_its_environment_is_reported(checks):
    assert "worker 0 hung: not ready within start_timeout=10s" in checks.stuck_start()


def test_get_prediction_from_workers(checks):
    checks.predictions()


def test_visual_objects_travel_from_workers_to_the_viewer(checks):
    checks.visuals()


def start_waiting_runner(runner_kwargs):
    """A runner waiting for hand-started workers, started in a thread."""
    from dpx.testing_envs import Noise

    config = dpx.EnvironmentConfig(Noise, runner="multiprocess", workers=1, seed=1,
                                   runner_kwargs={"spawn": False, **runner_kwargs})
    runner = MultiprocessRunner(config, resolve_seed(1)[1])
    outcome: dict = {}

    def start():
        try:
            runner.start()
        except Exception as exc:  # reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=start)
    thread.start()
    while not hasattr(runner, "address") and thread.is_alive():
        time.sleep(0.01)
    return runner, thread, outcome


def test_hand_started_worker_joins_and_a_wrong_key_is_refused(tmp_path, caplog):
    key = os.urandom(32).hex()
    with caplog.at_level(logging.WARNING, logger="dpx.multiprocess"):
        runner, thread, outcome = start_waiting_runner({"authkey": key, "timeout": 30})
        with pytest.raises(AuthenticationError):
            Client(tuple(runner.address), authkey=b"not the key")
        env = {**os.environ, "DPX_AUTHKEY": key, "PYTHONPATH": os.pathsep.join(sys.path)}
        worker = subprocess.Popen([sys.executable, "-m", "dpx", "worker", "--connect", "%s:%d" % tuple(runner.address)],
                                  env=env)
        thread.join(30)
    try:
        assert "error" not in outcome, outcome
        batch = runner.produce(np.arange(10))
        assert batch["input"].shape == (10, 3)
        assert "refused a connection" in caplog.text
    finally:
        runner.close()
        assert worker.wait(10) == 0


def test_malformed_message_from_an_authenticated_peer(tmp_path):
    key = os.urandom(32).hex()
    runner, thread, outcome = start_waiting_runner({"authkey": key, "timeout": 10, "max_restarts": 0})
    peer = Client(tuple(runner.address), authkey=bytes.fromhex(key))
    peer.recv_bytes()  # init
    peer.send_bytes(b"\x00 this is not json")
    thread.join(10)
    runner.close()
    assert isinstance(outcome.get("error"), WorkerError)
    assert "sent a malformed message" in str(outcome["error"])


def test_worker_that_never_connects_times_out():
    runner, thread, outcome = start_waiting_runner({"start_timeout": 0.5})
    thread.join(10)
    runner.close()
    assert "worker 0 did not connect within start_timeout=0.5s" in str(outcome.get("error"))


def test_port_already_in_use(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}"):
            generate(tmp_path, "busy", runner_kwargs={"port": port})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['workers'\]"):
        generate(tmp_path, "typo", runner_kwargs={"workers": 2})


def test_ctrl_c_leaves_no_orphan_and_a_resumable_session(tmp_path):
    code = (
        "import dpx\n"
        "from dpx.testing_envs import Slow\n"
        "config = dpx.EnvironmentConfig(Slow, runner='multiprocess', workers=2, seed=0)\n"
        "dpx.DataGeneration(config, session_dir=%r, session_name='s', batch_nb=1000, batch_size=10, progress=False).execute()\n"
    ) % (str(tmp_path),)
    job = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listing = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(job.pid)], capture_output=True, text=True)
        # Only processes that have exec'd into a worker: a child caught between fork and exec
        # (the resource tracker, say) still shows this job's command line.
        children = [line.split()[0] for line in listing.stdout.splitlines() if "spawn_main" in line]
        if len(children) >= 2 and (tmp_path / "s" / "dataset" / "dataset.json").exists():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode != 0 and "KeyboardInterrupt" in stderr
    assert "resume with pipeline.session_name='s' pipeline.new_session=false" in stderr
    time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"orphan worker processes {alive}"
    assert dpx.open_database(tmp_path / "s").count() > 0


def test_oversized_message_from_an_authenticated_peer(tmp_path):
    key = os.urandom(32).hex()
    runner, thread, outcome = start_waiting_runner({"authkey": key, "timeout": 10, "max_restarts": 0})
    peer = Client(tuple(runner.address), authkey=bytes.fromhex(key))
    peer.recv_bytes()  # init
    try:
        peer.send_bytes(b"{" + b" " * (2 << 20) + b"}")  # a 2 MB header: over the 1 MB limit
    except (ConnectionResetError, BrokenPipeError):
        pass  # the runner may hang up before reading it all: the refusal under test
    thread.join(10)
    runner.close()
    assert isinstance(outcome.get("error"), WorkerError), outcome
    assert "worker 0 sent a message over the 1048576-byte header limit" in str(outcome["error"])
