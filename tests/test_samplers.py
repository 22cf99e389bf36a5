"""Samplers (hook dpx_samplers): the first-party designs and the conformance kit every sampler passes."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import dpx
from dpx.core.sampling import GridSampler, PositionalSampler, LatinHypercubeSampler, RandomSampler, SobolSampler
from dpx.core.space import Parameter, ParameterSpace
from dpx.testing import check_environment, check_sampler

UNIT = ParameterSpace([Parameter("a", 0.0, 1.0), Parameter("b", 0.0, 1.0)])


@pytest.mark.parametrize("name", ["random", "sobol", "halton", "lhs"])
def test_first_party_samplers_pass_the_kit(name):
    check_sampler(name)


def test_the_grid_passes_the_kit_and_ignores_its_seed():
    check_sampler("grid", {"levels": 4}, seeded=False)
    check_sampler("grid", seeded=False)  # levels from the run's size


def test_sobol_points_are_balanced_over_powers_of_two():
    points = SobolSampler(UNIT, seed=1).ask(64)
    for column in range(2):  # each of 64 strata of each parameter holds one point
        assert sorted(np.floor(points[:, column] * 64).astype(int).tolist()) == list(range(64))


def test_a_latin_hypercube_fills_every_stratum_then_starts_another_design():
    sampler = LatinHypercubeSampler(UNIT, seed=1, size=20)
    first, second = sampler.ask(20), sampler.ask(20)
    for design in (first, second):
        for column in range(2):
            assert sorted(np.floor(design[:, column] * 20).astype(int).tolist()) == list(range(20))
    assert not np.array_equal(first, second)


def test_a_grid_visits_every_cell_once_then_repeats():
    space = ParameterSpace([Parameter("x", 0.0, 1.0), Parameter("n", 1, 3, integer=True)])
    grid = GridSampler(space, levels=[2, 5])  # an integer parameter gets at most one level per value
    assert grid.levels == [2, 3]
    points = grid.ask(12)
    assert sorted(map(tuple, points[:6].tolist())) == [(0.25, 1), (0.25, 2), (0.25, 3), (0.75, 1), (0.75, 2), (0.75, 3)]
    assert np.array_equal(points[6:], points[:6])


def test_random_draws_are_uniform_and_independent_of_the_order_of_ids():
    sampler = RandomSampler(UNIT, seed=3)
    values = sampler.at(np.arange(20_000))
    assert abs(values.mean() - 0.5) < 0.01 and abs(values.std() - np.sqrt(1 / 12)) < 0.01
    assert abs(np.corrcoef(values.T)[0, 1]) < 0.03
    wide = ParameterSpace([Parameter(f"p{i}", 0.0, 1.0) for i in range(8)])  # several state rows per sample
    columns = RandomSampler(wide, seed=3).at(np.arange(20_000))
    assert np.allclose(columns.mean(axis=0), 0.5, atol=0.01) and np.allclose(columns.std(axis=0), np.sqrt(1 / 12), atol=0.01)
    assert np.abs(np.corrcoef(columns.T) - np.eye(8)).max() < 0.03
    scattered = np.array([19_999, 7, 4_500, 7])
    assert np.array_equal(RandomSampler(UNIT, seed=3).at(scattered), values[scattered])


class Repeating(PositionalSampler):
    """Breaks the kit: the vectors depend on how many are asked at once."""

    def ask(self, n):
        return self.space.from_unit(np.full((n, len(self.space)), 1.0 / (n + 1)))


class Outside:
    """Breaks the kit: proposes a parameter the space does not have."""

    def __init__(self, space, seed=None, size=None):
        self.space = space

    def ask(self, n):
        return {**{name: np.full(n, p.low) for name, p in zip(self.space.names, self.space)}, "stifness": np.ones(n)}

    def tell(self, parameters, scores):
        pass

    def state(self):
        return {}

    def restore(self, state):
        pass


@pytest.mark.parametrize(("sampler", "message"), [
    (Repeating, "depend on its batch size|same vector"),
    (Outside, r"unknown parameter\(s\) \['stifness'\]"),
])
def test_the_kit_catches_a_broken_sampler(dpx_plugin, monkeypatch, sampler, message):
    components = types.ModuleType("dpx_broken_samplers")
    setattr(components, sampler.__name__, sampler)
    monkeypatch.setitem(sys.modules, components.__name__, components)
    plugin = types.ModuleType("broken_sampler_plugin")
    plugin.dpx_samplers = dpx.hookimpl(lambda: {"broken": f"dpx_broken_samplers:{sampler.__name__}"})
    dpx_plugin(plugin, name="broken-sampler")
    with pytest.raises(AssertionError, match=message):
        check_sampler("broken")


class Ignoring(dpx.Environment):
    """Declares parameters but never reads them."""

    def __init__(self):
        self.define_parameters(Parameter("k", 1.0, 2.0))

    def step(self):
        x = self.rng.random(2)
        self.set_training_data(input=x, ground_truth=x[:1])


class Using(Ignoring):
    def step(self):
        x = self.rng.random(2) * self.sample_parameters["k"]
        self.set_training_data(input=x, ground_truth=x[:1])


def test_check_environment_warns_when_parameters_are_ignored(recwarn):
    with pytest.warns(UserWarning, match="bit-identical samples"):
        check_environment(Ignoring)
    check_environment(Using)
    check_environment("toy.spring")
    check_environment("toy.heat", {"grid_size": 8})
    assert not [w for w in recwarn if "bit-identical" in str(w.message)]
