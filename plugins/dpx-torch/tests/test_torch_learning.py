"""Active learning end to end with torch ensembles: rounds recorded, resumed, run from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import dpx
from dpx.core.learning import ActiveLearning

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SMALL = {"network_kwargs": {"hidden": [8]}, "lr": 1e-2}
QUICK = {"initial_samples": 8, "batch_size": 4, "ensemble": 2, "pool_size": 64, "validation_samples": 16,
         "epoch_nb": 1, "train_batch_nb": 5, "train_batch_size": 8, "echo": False}


def learn(tmp_path, max_simulations, new_session=True, **kwargs):
    config = dpx.EnvironmentConfig("toy.resonance", seed=0, **kwargs)
    pipeline = ActiveLearning(config, dpx.NetworkConfig(**SMALL), session_dir=str(tmp_path), session_name="al",
                              new_session=new_session, max_simulations=max_simulations, **QUICK)
    return pipeline.execute()


def test_rounds_spend_the_budget_on_the_most_disputed_candidates_and_are_recorded(tmp_path):
    summary = learn(tmp_path, 16)
    assert [r.simulations for r in summary.rounds] == [8, 12, 16]
    record = json.loads((tmp_path / "al" / "session.json").read_text())["runs"][-1]
    assert record["pipeline"] == "ActiveLearning" and record["outcome"] == "completed"
    rounds = record["rounds"]
    assert [len(r["picked"]) for r in rounds] == [4, 4, 0]
    assert all(r["validation_error"] > 0 for r in rounds)
    with dpx.open_database(tmp_path / "al") as database:
        assert database.count("training") == 16 and database.count("validation") == 16
        stored = database.read("training", ["parameters"])["parameters"]
    picked = np.array([vector for r in rounds for vector in r["picked"]])
    assert np.array_equal(stored[8:], picked), "the picked vectors are the ones simulated, in order"
    # each round's picks were the pool's most disputed, in decreasing order of score before damping
    assert all(r["scores"][0] >= max(r["scores"][1:]) for r in rounds if r["picked"])


def test_a_resumed_run_continues_after_the_last_round(tmp_path):
    learn(tmp_path, 12)
    summary = learn(tmp_path, 20, new_session=False)
    assert [r.round for r in summary.rounds] == [0, 1, 2, 3, 4]
    with dpx.open_database(tmp_path / "al") as database:
        parameters = database.read("training", ["parameters"])["parameters"]
        assert database.count("validation") == 16  # the held-out set is kept, not drawn again
    assert len(parameters) == 20 and len(np.unique(parameters, axis=0)) == 20


def test_any_runner_simulates_the_picks(tmp_path):
    summary = learn(tmp_path, 12, runner="multiprocess", workers=2)
    assert summary.simulations == 12


def test_learn_from_the_example_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dpx", "learn", str(EXAMPLES / "resonance_learn.toml"), "pipeline.max_simulations=40",
         "pipeline.ensemble=2", "pipeline.train_batch_nb=10", "pipeline.validation_samples=32", "pipeline.pool_size=128"],
        capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("round ")]
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == ["32 simulations", "40 simulations"]
    assert all("validation error" in line for line in lines)
    refused = subprocess.run([sys.executable, "-m", "dpx", "learn", str(EXAMPLES / "resonance_learn.toml"),
                              "environment.environment_class='toy.mean'"], capture_output=True, text=True, cwd=tmp_path,
                             check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("dpx learn: error:") and "declares no parameters" in refused.stderr
