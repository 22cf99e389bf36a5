"""The ActiveLearning pipeline's parts that need no network: picking, and what it refuses before writing."""

from __future__ import annotations

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.learning import ActiveLearning, pick_diverse


def test_without_diversity_the_top_scores_are_picked():
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.2])
    unit = np.linspace(0, 1, 5)[:, None]
    assert pick_diverse(unit, scores, 3, 0.0).tolist() == [1, 3, 2]


def test_diversity_spreads_a_batch_over_separate_uncertain_regions():
    rng = np.random.default_rng(0)
    # a tall peak of uncertainty near 0.2 and a lower one near 0.8
    unit = rng.random((2000, 2))
    scores = 2.0 * np.exp(-((unit - 0.2) ** 2).sum(axis=1) / 0.01) + np.exp(-((unit - 0.8) ** 2).sum(axis=1) / 0.01)
    greedy = unit[pick_diverse(unit, scores, 8, 0.0)]
    spread = unit[pick_diverse(unit, scores, 8, 1.0)]
    assert (np.linalg.norm(greedy - 0.2, axis=1) < 0.15).all()  # all eight piled on the tallest peak
    assert (np.linalg.norm(spread - 0.8, axis=1) < 0.2).any() and (np.linalg.norm(spread - 0.2, axis=1) < 0.2).any()
    assert len({tuple(p) for p in spread}) == 8


def learning(tmp_path, environment="toy.resonance", **kwargs):
    return ActiveLearning(dpx.EnvironmentConfig(environment, seed=0), session_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize(("environment", "kwargs", "message"), [
    ("toy.mean", {}, "declares no parameters"),
    ("toy.resonance", {"pool_size": 10**13}, r"pool_size=10000000000000 candidates need about .* GiB"),
    ("toy.resonance", {"initial_samples": 64, "max_simulations": 32}, "initial_samples=64 exceeds max_simulations=32"),
    ("toy.resonance", {"ensemble": 1}, "ensemble=1 must be an integer >= 2"),
    ("toy.resonance", {"diversity": -1.0}, "diversity=-1.0"),
    ("toy.resonance", {"pool_sampler": "sobolx"}, "sampler='sobolx'"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, environment, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        learning(tmp_path, environment, **kwargs).prepare()
    assert not any(tmp_path.iterdir())
