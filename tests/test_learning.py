"""The ActiveLearning pipeline's parts that need no network: picking, and what it refuses before writing."""

from __future__ import annotations

import sys
import types

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
    ("toy.resonance", {"scoring": "dropout"}, "scoring='dropout' must be one of 'ensemble', 'mc_dropout'"),
    ("toy.resonance", {"scoring": "mc_dropout", "mc_samples": 1}, "mc_samples=1 must be an integer >= 2"),
    ("toy.resonance", {"scoring": "mc_dropout", "ensemble": 3}, "ensemble=3 is for scoring='ensemble'"),
    ("toy.resonance", {"scoring": "mc_dropout"},
     r"scoring='mc_dropout' samples the network's dropout, but its network_kwargs set no dropout: give it some "
     r"\(\[network.network_kwargs\] dropout = 0.1 for fc\), or use scoring='ensemble'"),
    ("toy.resonance", {"scoring": "mc_dropout", "network_config": dpx.NetworkConfig(network_kwargs={"dropout": 0.0})},
     "network_kwargs set dropout=0.0"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, environment, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        learning(tmp_path, environment, **kwargs).prepare()
    assert not any(tmp_path.iterdir())


def never_called(*args, **kwargs):
    raise AssertionError("the pipeline must refuse this backend before using it")


class BackendWithoutDropout:
    """A network backend that trains and predicts but cannot predict with dropout on (written before MC dropout)."""

    __init__ = train_batch = validation_loss = predict = save = load = parameter_histograms = never_called
    read_extra = classmethod(never_called)


def test_mc_dropout_needs_a_backend_that_predicts_with_dropout_on(tmp_path, dpx_plugin, monkeypatch):
    module = types.ModuleType("no_dropout_backend")
    module.BackendWithoutDropout = BackendWithoutDropout
    exec("import dpx\n@dpx.hookimpl\ndef dpx_network_backends():\n"
         "    return {'plain': 'no_dropout_backend:BackendWithoutDropout'}\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    dpx_plugin(module, name="plain-backend")
    network = dpx.NetworkConfig(backend="plain", network_kwargs={"dropout": 0.1})
    with pytest.raises(ConfigError, match="scoring='mc_dropout' needs a network backend that predicts with dropout on; "
                                          "backend 'plain' cannot"):
        learning(tmp_path, scoring="mc_dropout", network_config=network).prepare()
    assert not any(tmp_path.iterdir())
