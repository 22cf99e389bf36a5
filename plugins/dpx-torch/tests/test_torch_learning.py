"""Active learning end to end with torch ensembles: rounds recorded, resumed, run from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.learning import ActiveLearning
from dpx.core.sampling import ask_checked, build_sampler, sampler_seed
from dpx_torch.backend import TorchBackend

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SMALL = {"network_kwargs": {"hidden": [8]}, "lr": 1e-2}
QUICK = {"initial_samples": 8, "batch_size": 4, "ensemble": 2, "pool_size": 64, "validation_samples": 16,
         "epoch_nb": 1, "train_batch_nb": 5, "train_batch_size": 8, "echo": False}


def learn(tmp_path, max_simulations, new_session=True, network=SMALL, pipeline=QUICK, **kwargs):
    config = dpx.EnvironmentConfig("toy.resonance", seed=0, **kwargs)
    pipeline = ActiveLearning(config, dpx.NetworkConfig(**network), session_dir=str(tmp_path), session_name="al",
                              new_session=new_session, max_simulations=max_simulations, **pipeline)
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


WITH_DROPOUT = {"network_kwargs": {"hidden": [16], "dropout": 0.2}, "lr": 1e-2}


def dropout_backend(dropout: float) -> TorchBackend:
    fields = {"parameters": (np.dtype(np.float32), (2,)), "ground_truth": (np.dtype(np.float32), (3,))}
    config = dpx.NetworkConfig(input_fields=["parameters"], network_kwargs={"hidden": [32, 32], "dropout": dropout},
                               require_training_stuff=False)
    return TorchBackend(config, fields, {}, seed=0)


def test_predicting_with_dropout_spreads_by_input_and_leaves_predict_deterministic():
    backend = dropout_backend(0.3)
    inputs = {"parameters": np.linspace(-3, 3, 100, dtype=np.float32).reshape(50, 2)}
    before = backend.predict(inputs)["ground_truth"]
    passes = backend.predict_with_dropout(inputs, 16, seed=1)["ground_truth"]
    assert passes.shape == (16, 50, 3)
    spread = passes.std(axis=0).mean(axis=1)
    assert (spread > 0).all(), "every input's prediction varies with the dropout masks"
    assert spread.max() > 2 * spread.min(), "the spread depends on the input"
    assert np.array_equal(backend.predict(inputs)["ground_truth"], before), "predict is deterministic again afterwards"
    assert np.array_equal(backend.predict_with_dropout(inputs, 16, seed=1)["ground_truth"], passes), "seeded masks"
    assert not np.array_equal(backend.predict_with_dropout(inputs, 16, seed=2)["ground_truth"], passes)
    with pytest.raises(ConfigError, match=r"no dropout to sample: build it with dropout \(fc: network_kwargs dropout"):
        dropout_backend(0.0).predict_with_dropout(inputs, 4)


def test_mc_dropout_trains_one_network_per_round_and_picks_where_its_passes_disagree(tmp_path):
    pipeline = {**{k: v for k, v in QUICK.items() if k != "ensemble"}, "scoring": "mc_dropout", "mc_samples": 8}
    summary = learn(tmp_path, 16, network=WITH_DROPOUT, pipeline=pipeline)
    assert [r.simulations for r in summary.rounds] == [8, 12, 16]
    record = json.loads((tmp_path / "al" / "session.json").read_text())["runs"][-1]
    assert record["outcome"] == "completed"
    assert record["configs"]["pipeline"]["scoring"] == "mc_dropout" and record["configs"]["pipeline"]["mc_samples"] == 8
    assert record["configs"]["pipeline"]["ensemble"] == 1
    rounds = record["rounds"]
    assert [r["scoring"] for r in rounds] == ["mc_dropout"] * 3
    assert sorted(p.name for p in (tmp_path / "al" / "ensemble").iterdir()) == [f"round00{n}_member0" for n in range(3)]
    scores = np.array([score for r in rounds for score in r["scores"]])
    assert (scores > 0).all() and len(np.unique(scores)) == len(scores)
    # flat scores would pick the pool's first vectors in order: these picks come from the scores
    with dpx.open_database(tmp_path / "al") as database:
        space = database.parameter_space
    for r in rounds[:2]:
        size = QUICK["pool_size"]
        sampler = build_sampler("test", "sobol", space, sampler_seed(record["seed"], 10_000 + r["round"]), size)
        pool = ask_checked(sampler, "sobol", space, size)
        picked = np.array(r["picked"])
        assert all(any(np.array_equal(vector, row) for row in pool) for vector in picked)
        assert not np.array_equal(picked, pool[:len(picked)])
