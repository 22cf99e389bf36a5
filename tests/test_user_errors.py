"""A newcomer's mistakes, through the real CLI: one `dpx <command>: error:` line naming the
parameter, exit 2, no traceback, and nothing left under session_dir. `--dry-run` refuses
exactly what the run refuses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.cli import main
from dpx.core.preflight import available_memory

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GENERATE = str(EXAMPLES / "spring_generate.toml")
TRAIN = str(EXAMPLES / "spring_train.toml")
PREDICT = str(EXAMPLES / "spring_predict.toml")


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every path under ``folder`` with its size (0 for folders): what a refused run must leave as it was."""
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else 0) for p in folder.rglob("*"))


def refused(capsys, tmp_path: Path, command: str, *args: str, expected: str) -> str:
    """Run ``python -m dpx command args`` in ``tmp_path``; check it is a user error that wrote nothing."""
    before = listing(tmp_path / "sessions")
    code = main([command, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"dpx {command}: error: ")]
    assert len(errors) == 1 and expected in errors[0], err
    assert listing(tmp_path / "sessions") == before, "a refused run must not write under session_dir"
    return errors[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def generated(capsys, *overrides: str) -> None:
    assert main(["generate", GENERATE, "pipeline.batch_nb=2", "--no-progress", *overrides]) == 0
    capsys.readouterr()


SPRING_SAMPLE_BYTES = 4 * (5 + 1 + 1)  # input, ground_truth, next_velocity: float32


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("environment.env_kwargs.foo=1",), "[environment] env_kwargs.foo=1 rejected by toy.spring: no such parameter"),
        (("environment.env_kwargs.dt=-1",), "[environment] env_kwargs.dt=-1 rejected by toy.spring: dt must be > 0"),
        (("environment.environment_class='toy.mean'", "environment.env_kwargs={n_points=1e11}"),
         "[environment] env_kwargs.n_points=100000000000.0 rejected by toy.mean"),
        (("--workers", "2"), "[environment] workers=2 needs a runner with worker processes: set runner='multiprocess'"),
        (("environment.visualizer='vedoo'",), "[environment] visualizer='vedoo': unknown visualizer 'vedoo'"),
        (("pipeline.session_name='..'",), "[pipeline] session_name='..' must be a plain folder name"),
        (("pipeline.session_name='a/b'",), "[pipeline] session_name='a/b' must be a plain folder name"),
        (("database.max_file_size=1e-12",), "[database]: DatabaseConfig: max_file_size=1e-12: partition files"),
        (("environment.environment_class='toy.heat'", "database.max_file_size=2e-6"),
         "[database] max_file_size=2e-06 (gigabytes) is smaller than one sample of field 'input' (4.1 kB)"),
        (("database.existing_dir='sessions/sprng'",), "[database] existing_dir='sessions/sprng': no such folder"),
        (("database.storage='memap'",), "[database] storage='memap': unknown storage backend 'memap'"),
    ],
)
def test_generation_mistakes(capsys, tmp_path, args, expected, dry_run):
    refused(capsys, tmp_path, "generate", GENERATE, *args, *(["--dry-run"] if dry_run else []), expected=expected)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_batch_larger_than_memory_is_refused_before_allocating(capsys, tmp_path, dry_run):
    batch_size = available_memory() // SPRING_SAMPLE_BYTES + 1
    line = refused(capsys, tmp_path, "generate", GENERATE, f"pipeline.batch_size={batch_size}",
                   *(["--dry-run"] if dry_run else []), expected=f"[pipeline] batch_size={batch_size} needs")
    assert "lower batch_size" in line


def test_a_failed_run_does_not_bump_the_session_suffix(capsys, tmp_path):
    generated(capsys)
    refused(capsys, tmp_path, "generate", GENERATE, "--workers", "2", expected="workers=2")
    assert main(["generate", GENERATE, "pipeline.batch_nb=1", "pipeline.new_session=true", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("session: sessions/spring_1")


def test_resume_refuses_other_settings_unless_allowed(capsys, tmp_path):
    generated(capsys, "environment.env_kwargs.dt=0.1")
    resume = ("pipeline.new_session=false", "pipeline.batch_nb=3", "--no-progress")
    refused(capsys, tmp_path, "generate", GENERATE, *resume, "environment.env_kwargs.dt=0.5",
            expected="[environment] env_kwargs.dt: 0.1 recorded, 0.5 now")
    refused(capsys, tmp_path, "generate", GENERATE, *resume, "environment.env_kwargs.dt=0.1", "--seed", "7",
            expected="[environment] seed: 0 recorded, 7 now")
    refused(capsys, tmp_path, "generate", GENERATE, *resume, "environment.env_kwargs={}",
            "environment.environment_class='toy.mean'",
            expected="environment_class: 'toy.spring' recorded, 'toy.mean' now")
    # giving a parameter its default value changes nothing
    assert main(["generate", GENERATE, *resume, "environment.env_kwargs={dt=0.1, mass_range=[0.5, 2.0]}"]) == 0
    assert "holds 192" in capsys.readouterr().out
    assert main(["generate", GENERATE, "pipeline.new_session=false", "pipeline.batch_nb=4", "--no-progress",
                 "environment.env_kwargs.dt=0.5", "--allow-changes"]) == 0
    assert "holds 256" in capsys.readouterr().out


def test_overrides_may_follow_options(capsys, tmp_path):
    assert main(["generate", GENERATE, "--workers", "1", "pipeline.batch_nb=1", "--no-progress"]) == 0
    assert "64 training samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", GENERATE, "--workers", "1", "--nope"])


def test_info_on_a_file_says_what_info_is_for(capsys, tmp_path):
    refused(capsys, tmp_path, "info", GENERATE, expected="is a file; `info` describes a session folder")


class InterruptedAt(dpx.Environment):
    """Raises KeyboardInterrupt (as Ctrl-C does) at its sample number ``at``."""

    def __init__(self, at: int = 10):
        self.at, self.count = at, 0

    def init_database(self):
        self.define_training_fields(("input", np.float32, (2,)), ("ground_truth", np.float32, (1,)))

    def step(self):
        self.count += 1
        if self.count > self.at:
            raise KeyboardInterrupt
        self.set_training_data(input=np.ones(2, np.float32), ground_truth=np.ones(1, np.float32))


def test_info_shows_each_run_mode_count_and_outcome(capsys, tmp_path, caplog):
    generated(capsys)
    config = dpx.EnvironmentConfig(InterruptedAt, seed=1)
    pipeline = dpx.DataGeneration(config, session_dir="sessions", session_name="cut", batch_nb=4, batch_size=4,
                                  progress=False)
    with caplog.at_level(logging.WARNING, "dpx"), pytest.raises(KeyboardInterrupt):
        pipeline.execute()
    assert "resume with pipeline.session_name='cut' pipeline.new_session=false" in caplog.text
    assert main(["info", "sessions/spring"]) == 0
    assert "mode=training: +128 samples (128 stored), completed" in capsys.readouterr().out
    assert main(["info", "sessions/cut"]) == 0
    assert "mode=training: +8 samples (8 stored), interrupted" in capsys.readouterr().out


def test_a_rerun_says_it_writes_a_new_session_and_which_session_it_reads(capsys, tmp_path, caplog):
    generated(capsys)
    with caplog.at_level(logging.WARNING, "dpx"):
        generated(capsys, "pipeline.new_session=true")
    assert "sessions/spring exists, so this run writes to the new session sessions/spring_1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "dpx"):
        assert main(["generate", GENERATE, "pipeline.new_session=false", "--dry-run"]) == 0
    assert "newer sessions exist beside sessions/spring: spring_1" in caplog.text
    assert "dataset sessions/spring/dataset (128 training samples, extended)" in capsys.readouterr().out


def test_session_record_is_json(tmp_path, capsys):
    generated(capsys)
    runs = json.loads((tmp_path / "sessions/spring/session.json").read_text())["runs"]
    assert [(run["outcome"], run["produced"], run["samples"]) for run in runs] == [("completed", 128, 128)]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("network.loss_kwargs.foo=1",), "[network] loss_kwargs has unknown key 'foo' for loss 'mse'"),
        (("network.optimizer_kwargs.bta=0.9",), "[network] optimizer_kwargs has unknown key 'bta' for optimizer 'adam' (did you mean 'betas'?)"),
        (("network.network_kwargs.hiden=[8]",), "[network] network_kwargs has unknown key 'hiden'"),
        (("network.loss='msee'",), "[network] unknown loss 'msee' (did you mean 'mse'?)"),
        (("network.optimizer='adamm'",), "[network] unknown optimizer 'adamm' (did you mean 'adam'?)"),
        (("network.network_class='fcc'",), "[network] unknown network_class 'fcc'"),
        (("network.input_fields=['inputs']",), "[network] input_fields=['inputs']: the dataset sessions/spring/dataset "
                                               "has no field 'inputs'"),
        (("pipeline.stats=['csvv']",), "[pipeline] stats=['csvv']: unknown stats writer 'csvv'"),
        (("database.existing_dir='sessions/sprng'",), "[database] existing_dir='sessions/sprng': no such folder"),
        (("database.existing_dir='sessions/empty'",), "[database] the dataset sessions/empty/dataset holds no training "
                                                      "samples; generate data first"),
        (("network.network_dir='sessions/spring'",), "[network] network_dir='sessions/spring': the last network named "
                                                     "'network' is not saved there"),
        (("environment.environment_class='toy.spring'", "pipeline.batch_nb=2", "--workers", "2"),
         "[environment] workers=2 needs a runner with worker processes"),
        (("pipeline.session_name='.'",), "[pipeline] session_name='.' must be a plain folder name"),
    ],
)
def test_training_mistakes(capsys, tmp_path, args, expected, dry_run):
    generated(capsys)
    generated(capsys, "pipeline.batch_nb=0", "pipeline.session_name='empty'")
    refused(capsys, tmp_path, "train", TRAIN, *args, *(["--dry-run"] if dry_run else []), expected=expected)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_predict_on_a_session_that_does_not_exist(capsys, tmp_path, dry_run):
    refused(capsys, tmp_path, "predict", PREDICT, *(["--dry-run"] if dry_run else []),
            expected="no trained network to load: session='sessions/spring_fc': no such folder; train first")


def test_interrupted_training_says_how_to_resume(capsys, tmp_path, caplog):
    config = dpx.EnvironmentConfig(InterruptedAt, env_kwargs={"at": 20}, seed=1)
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [4]}, target_fields=["ground_truth"])
    pipeline = dpx.Training(network, environment_config=config, session_dir="sessions", session_name="online",
                            epoch_nb=2, batch_nb=8, batch_size=4, progress=False, stats=[])
    with caplog.at_level(logging.WARNING, "dpx"), pytest.raises(KeyboardInterrupt):
        pipeline.execute()
    assert "resume with pipeline.session_name='online' pipeline.new_session=false" in caplog.text
    run = json.loads((tmp_path / "sessions/online/session.json").read_text())["runs"][-1]
    assert run["outcome"] == "interrupted" and run["environment_seed"] == 1


def test_running_the_example_generation_again_completes_the_same_session(capsys, tmp_path):
    generated(capsys)
    assert main(["generate", GENERATE, "pipeline.batch_nb=3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "64 training samples" in out and "holds 192" in out and out.rstrip().endswith("session: sessions/spring")
    assert not (tmp_path / "sessions/spring_1").exists()


def test_progress_counts_batches_as_integers():
    from dpx.core.progress import Progress

    progress = Progress(1000, desc="train", unit="batch", enabled=True)
    progress.update(63)
    shown = str(progress.bar)
    progress.close()
    assert "63/1000" in shown, shown


def test_resuming_a_training_with_another_architecture_is_refused(capsys, tmp_path):
    generated(capsys)
    assert main(["train", TRAIN, "pipeline.epoch_nb=1", "--no-progress"]) == 0
    capsys.readouterr()
    refused(capsys, tmp_path, "train", TRAIN, "pipeline.new_session=false", "pipeline.epoch_nb=2",
            "network.network_kwargs.hidden=[8]",
            expected="[network] sessions/spring_fc/network/network.pt holds a fc network with network_kwargs="
                     "{'hidden': [64, 64]}, but network_class='fc' with network_kwargs={'hidden': [8]} is asked for")
