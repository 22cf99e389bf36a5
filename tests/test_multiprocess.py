"""The multiprocess runner: real worker processes, real sockets, real failures."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core import transport
from dpx.core.config import ConfigError
from dpx.core.multiprocess import MultiprocessRunner
from dpx.core.producer import resolve_seed
from dpx.core.runners import WorkerError
from dpx.testing import RunnerChecks, waiting_runner


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
    assert re.search(r"worker 0 \(pid \d+\) hung: not ready within start_timeout=10s", checks.stuck_start())


def test_get_prediction_from_workers(checks):
    checks.predictions()


def test_stored_samples_and_parameters_reach_the_workers_as_in_process(checks):
    checks.feeds()
    checks.parameters()


def test_visual_objects_travel_from_workers_to_the_viewer(checks):
    checks.visuals()


def test_hand_started_worker_joins_and_a_wrong_key_is_refused(tmp_path, caplog):
    key = os.urandom(32).hex()
    with caplog.at_level(logging.WARNING, logger="dpx"):
        runner, thread, outcome = waiting_runner({"authkey": key, "timeout": 30})
        with pytest.raises(transport.AuthenticationError):
            transport.connect(*runner.address, b"not the key, but long enough", timeout=10)
        env = {**os.environ, "DPX_AUTHKEY": key, "PYTHONPATH": os.pathsep.join(sys.path)}
        worker = subprocess.Popen([sys.executable, "-m", "dpx", "worker", "--connect", "%s:%d" % tuple(runner.address)],
                                  env=env)
        thread.join(30)
    try:
        assert "error" not in outcome, outcome
        batch = runner.produce(np.arange(10))
        assert batch["input"].shape == (10, 3)
        assert "refused a connection" in caplog.text and key not in caplog.text
    finally:
        runner.close()
        assert worker.wait(10) == 0


def test_a_hand_started_worker_without_the_key_says_what_to_do():
    runner, thread, outcome = waiting_runner({"start_timeout": 30})
    env = {k: v for k, v in os.environ.items() if k != "DPX_AUTHKEY"}
    try:
        for key in (None, "ab", os.urandom(16).hex()):
            if key is not None:
                env["DPX_AUTHKEY"] = key
            result = subprocess.run([sys.executable, "-m", "dpx", "worker", "--connect", "%s:%d" % tuple(runner.address)],
                                    env=env, capture_output=True, text=True, timeout=60)
            lines = result.stderr.strip().splitlines()
            assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("dpx worker: error:"), result.stderr
            assert "DPX_AUTHKEY" in lines[0], lines
    finally:
        runner.close()
        thread.join(30)


def test_a_hand_started_worker_finding_no_free_slot_says_so(tmp_path):
    key = os.urandom(32).hex()
    runner, thread, outcome = waiting_runner({"authkey": key, "start_timeout": 30})
    env = {**os.environ, "DPX_AUTHKEY": key, "PYTHONPATH": os.pathsep.join(sys.path)}
    address = "%s:%d" % tuple(runner.address)
    first = subprocess.Popen([sys.executable, "-m", "dpx", "worker", "--connect", address], env=env)
    thread.join(30)
    try:
        late = subprocess.run([sys.executable, "-m", "dpx", "worker", "--connect", address], env=env,
                              capture_output=True, text=True, timeout=60)
        assert late.returncode == 2 and "it had no free worker slot" in late.stderr, late.stderr
    finally:
        runner.close()
        assert first.wait(10) == 0


def test_an_impostor_connecting_first_does_not_take_a_workers_slot(caplog):
    """Slots go to the processes started for them: a peer holding the key but not a slot's token is refused."""
    from dpx.testing_envs import Noise

    key = os.urandom(32)
    config = dpx.EnvironmentConfig(Noise, runner="multiprocess", workers=2, seed=1,
                                   runner_kwargs={"authkey": key.hex(), "max_restarts": 0})
    runner = MultiprocessRunner(config, resolve_seed(1)[1])
    impostors = []
    thread = threading.Thread(target=runner.start, daemon=True)
    with caplog.at_level(logging.WARNING, logger="dpx"):
        thread.start()
        while not getattr(runner, "workers", None) or runner.workers[0].process is None:
            time.sleep(0.001)  # admission opens before the first worker is launched
        for token in (None, "0" * 32):
            impostor = transport.connect(*runner.address, key, timeout=10)
            impostor.send({"type": "hello", "token": token, "pid": os.getpid()})
            impostors.append(impostor)
        thread.join(60)
    try:
        assert [w.pid for w in runner.workers] == [w.process.pid for w in runner.workers]
        for impostor in impostors:
            with pytest.raises(EOFError):
                impostor.receive(deadline=time.monotonic() + 10)
        assert "it names no worker being started" in caplog.text
        assert runner.produce(np.arange(8))["input"].shape == (8, 3)
    finally:
        runner.close()


def test_every_failure_is_reported_with_its_own_traceback_and_pid(checks, caplog):
    """Four workers failing at once: each failure costs one restart and names the worker, its pid and its traceback."""
    from dpx.testing_envs import Faulty

    with caplog.at_level(logging.WARNING, logger="dpx"), pytest.raises(WorkerError) as failure:
        checks.generate(Faulty, workers=4, env_kwargs={"how": "raise", "always": True}, batch_nb=20,
                        runner_kwargs={"max_restarts": 3})
    reports = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "failed (restart" in r.getMessage()]
    reports.append(str(failure.value))
    assert len(reports) == 4, reports
    for report in reports:
        match = re.match(r"worker (\d) \(pid \d+\)", report)
        assert match and f"raised EnvironmentFailure: <Faulty instance {match.group(1)}/4>" in report, report
        assert "Worker traceback:" in report and "in break_down" in report, report


def test_an_error_too_long_to_travel_whole_is_still_reported(checks):
    from dpx.testing_envs import Verbose

    with pytest.raises(WorkerError, match=r"(?s)worker 0 \(pid \d+\) raised EnvironmentFailure: .*Worker traceback:") as caught:
        checks.generate(Verbose, workers=1, runner_kwargs={"max_restarts": 0})
    assert len(str(caught.value)) < 100_000


def test_contract_errors_stop_the_run_as_in_process(checks):
    assert re.search(r"\(in worker \d \(pid \d+\)\)$", checks.contract_errors())


def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import dpx\n"
        "from dpx.testing_envs import Noise\n"
        "config = dpx.EnvironmentConfig(Noise, runner='multiprocess', workers=2, seed=0,\n"
        "                               runner_kwargs={'start_timeout': 600})\n"
        f"dpx.DataGeneration(config, session_dir={str(tmp_path)!r}, session_name='s', batch_nb=1, batch_size=4,\n"
        "                   progress=False).execute()\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "ConfigError: worker" in result.stderr and 'under `if __name__ == "__main__":`' in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "unguarded.py"], "a worker wrote a session of its own"


def test_keys_are_never_written_and_must_be_long(tmp_path):
    key = os.urandom(16).hex()
    summary = generate(tmp_path, "keyed", runner_kwargs={"authkey": key})
    written = [p for p in summary.session_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not written, written
    with pytest.raises(ConfigError, match=r"authkey is 1 bytes long; a key needs at least 16 random bytes"):
        generate(tmp_path, "short", runner_kwargs={"authkey": "ab"})
    assert not (tmp_path / "short").exists()


@pytest.mark.parametrize("options, message", [
    ({"port": 99999}, r"port=99999 must be an integer from 0 \(any free port\) to 65535"),
    ({"timeout": "10"}, r"timeout='10' must be a number of seconds > 0"),
    ({"max_restarts": 1.5}, r"max_restarts=1.5 must be an integer >= 0"),
])
def test_invalid_options_are_config_errors_that_leave_nothing_behind(tmp_path, options, message):
    with pytest.raises(ConfigError, match=r"runner_kwargs for the multiprocess runner: " + message):
        generate(tmp_path, "bad", runner_kwargs=options)
    assert not (tmp_path / "bad").exists()


def test_worker_that_never_connects_times_out():
    runner, thread, outcome = waiting_runner({"start_timeout": 0.5})
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


def test_small_consecutive_batches_are_read_ahead_and_are_the_in_process_ones():
    from dpx.core.runners import InProcessRunner
    from dpx.testing_envs import Noise

    key = resolve_seed(3)[1]
    remote = MultiprocessRunner(dpx.EnvironmentConfig(Noise, runner="multiprocess", workers=2, seed=3), key)
    remote.read_ahead_seconds = 3600.0  # always read ahead, as far as growth and the byte cap allow
    local = InProcessRunner(dpx.EnvironmentConfig(Noise, seed=3), key)
    requests = [(np.arange(0, 32), 0), (np.arange(32, 64), 0), (np.arange(64, 96), 0), (np.arange(96, 100), 0),
                (np.arange(100, 132), 1), (np.array([5, 9, 2]), 0), (np.arange(132, 164), 0), (np.arange(164, 196), 0)]
    with remote, local:
        previous = None
        for ids, stream in requests:
            batch = remote.produce(ids, stream)
            expected = local.produce(ids, stream)
            assert set(batch) == set(expected)
            for name in expected:
                np.testing.assert_array_equal(batch[name], expected[name], err_msg=f"{name} of {ids}")
            if previous is not None:  # a batch stays valid during the next call
                for name, (array, copy) in previous.items():
                    np.testing.assert_array_equal(array, copy)
            previous = {name: (array, array.copy()) for name, array in batch.items()}
        asked = sum(len(ids) for ids, _ in requests)
        assert remote.stats["produced"] > asked, "consecutive batches were not produced ahead"


@pytest.mark.parametrize(("environment", "read_ahead"), [("Consulting", False), ("Noise", True)])
def test_nothing_is_read_ahead_once_environments_ask_for_predictions(environment, read_ahead):
    """Training connects its network to every runner: environments that never ask lose nothing."""
    from dpx import testing_envs

    remote = MultiprocessRunner(dpx.EnvironmentConfig(getattr(testing_envs, environment), runner="multiprocess",
                                                      workers=2, seed=3), resolve_seed(3)[1])
    remote.read_ahead_seconds = 3600.0
    with remote:
        remote.connect(lambda inputs: {"prediction": inputs["input"][:2]})
        for first in range(0, 128, 32):
            remote.produce(np.arange(first, first + 32))
        assert (remote.stats["produced"] > 128) is read_ahead
