"""Tests of the dpx-toy environments and of their registration as a plugin."""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dpx
import dpx.plugins
import dpx_toy
from dpx.testing import prepare_environment
from dpx_toy.heat import Heat
from dpx_toy.mean import Mean
from dpx_toy.spring import Spring

ENV_NAMES = {"toy.mean": Mean, "toy.spring": Spring, "toy.heat": Heat}



def stepped(env: dpx.Environment, seed: int = 0) -> dict[str, np.ndarray]:
    prepare_environment(env, seed).step()
    return env.sample


# -- every environment ------------------------------------------------------------


@pytest.mark.parametrize("cls", [Mean, Spring, Heat])
def test_sample_matches_declared_fields(cls: type[dpx.Environment]) -> None:
    env = prepare_environment(cls())
    for _ in range(3):
        env.step()
        assert set(env.sample) == set(env.fields)
        for name, field in env.fields.items():
            value = env.sample[name]
            assert value.dtype == field.dtype, name
            assert value.shape == field.shape, name
            assert np.all(np.isfinite(value)), name


@pytest.mark.parametrize("cls", [Mean, Spring, Heat])
def test_same_seed_same_sample(cls: type[dpx.Environment]) -> None:
    first, again, other = stepped(cls(), 7), stepped(cls(), 7), stepped(cls(), 8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["input"], other["input"])


@pytest.mark.parametrize("cls", [Mean, Spring, Heat])
def test_reseeding_the_rng_reproduces_a_sample(cls: type[dpx.Environment]) -> None:
    """dpx reseeds env.rng before each sample: the sample must depend on nothing else."""
    env = prepare_environment(cls(), 3)
    env.step()
    first = {name: value.copy() for name, value in env.sample.items()}
    env.step()
    env.rng = np.random.default_rng(3)
    env.step()
    for name in first:
        np.testing.assert_array_equal(first[name], env.sample[name])


@pytest.mark.parametrize(
    ("cls", "kwargs", "named"),
    [
        (Mean, {"n_points": 0}, "n_points"),
        (Mean, {"n_points": 2.5}, "n_points"),
        (Mean, {"dim": -1}, "dim"),
        (Mean, {"dim": True}, "dim"),
        (Spring, {"stiffness_range": (0.0, 1.0)}, "stiffness_range"),
        (Spring, {"mass_range": (2.0, 1.0)}, "mass_range"),
        (Spring, {"damping_range": (-0.1, 1.0)}, "damping_range"),
        (Spring, {"velocity_range": 3.0}, "velocity_range"),
        (Spring, {"displacement_range": (0.0, math.nan)}, "displacement_range"),
        (Spring, {"dt": 0.0}, "dt"),
        (Heat, {"grid_size": 2}, "grid_size"),
        (Heat, {"diffusivity": -1.0}, "diffusivity"),
        (Heat, {"dx": 0.0}, "dx"),
        (Heat, {"steps_per_sample": 0}, "steps_per_sample"),
        (Heat, {"max_warmup_steps": -1}, "max_warmup_steps"),
        (Heat, {"max_blobs": 0}, "max_blobs"),
        (Heat, {"blob_width_range": (0.0, 1.0)}, "blob_width_range"),
        (Heat, {"amplitude_range": (1.0,)}, "amplitude_range"),
    ],
)
def test_bad_parameter_is_named(cls: type[dpx.Environment], kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        cls(**kwargs)


# -- toy.mean -----------------------------------------------------------------------


def test_mean_ground_truth_is_the_mean_of_the_input() -> None:
    env = prepare_environment(Mean(n_points=10, dim=2))
    for _ in range(5):
        env.step()
        assert env.sample["input"].shape == (10, 2)
        np.testing.assert_allclose(env.sample["ground_truth"], env.sample["input"].mean(axis=0), atol=1e-6)


def test_mean_draws_fresh_points_each_step() -> None:
    env = prepare_environment(Mean())
    env.step()
    first = env.sample["input"]
    env.step()
    assert not np.array_equal(first, env.sample["input"])


# -- toy.spring -----------------------------------------------------------------------


def test_spring_undamped_matches_the_analytic_solution() -> None:
    dt = 0.05
    env = prepare_environment(Spring(damping_range=(0.0, 0.0), dt=dt))
    for _ in range(20):
        env.step()
        x0, v0, k, m, c = env.sample["input"].astype(np.float64)
        assert c == 0.0
        w = math.sqrt(k / m)
        expected_x = x0 * math.cos(w * dt) + v0 / w * math.sin(w * dt)
        expected_v = -x0 * w * math.sin(w * dt) + v0 * math.cos(w * dt)
        np.testing.assert_allclose(env.sample["ground_truth"], [expected_x], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(env.sample["next_velocity"], [expected_v], rtol=1e-5, atol=1e-6)


def rk4(x: float, v: float, k: float, m: float, c: float, dt: float, substeps: int = 1000) -> tuple[float, float]:
    def f(state: np.ndarray) -> np.ndarray:
        return np.array([state[1], (-k * state[0] - c * state[1]) / m])

    y, h = np.array([x, v]), dt / substeps
    for _ in range(substeps):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return float(y[0]), float(y[1])


@pytest.mark.parametrize(
    ("k", "m", "c"),
    [(4.0, 1.0, 0.5), (4.0, 1.0, 4.0), (4.0, 1.0, 10.0)],
    ids=["underdamped", "critical", "overdamped"],
)
def test_spring_damped_matches_a_fine_numerical_integration(k: float, m: float, c: float) -> None:
    env = Spring(dt=0.5)
    np.testing.assert_allclose(env.simulate(0.7, -0.3, k, m, c), rk4(0.7, -0.3, k, m, c, 0.5), rtol=1e-9, atol=1e-12)


def test_spring_draws_parameters_in_their_ranges() -> None:
    env = prepare_environment(Spring(stiffness_range=(2.0, 3.0), mass_range=(1.0, 1.5), damping_range=(0.1, 0.2)))
    for _ in range(50):
        env.step()
        _, _, k, m, c = env.sample["input"]
        assert 2.0 <= k <= 3.0 and 1.0 <= m <= 1.5 and 0.1 <= c <= 0.2


def test_spring_rollout_continues_from_the_prediction() -> None:
    env = prepare_environment(Spring())
    env.step()
    x0, v0, k, m, c = env.state
    true_x, true_v = env.simulate(x0, v0, k, m, c)
    predicted = true_x + 0.1
    env.apply_prediction({"prediction": np.array([predicted], dtype=np.float32)})
    env.step()
    np.testing.assert_allclose(env.sample["input"], np.float32([predicted, true_v, k, m, c]))
    expected = env.simulate(np.float32(predicted), true_v, k, m, c)[0]
    np.testing.assert_allclose(env.sample["ground_truth"], [expected], rtol=1e-6)
    # Without a prediction applied, the next sample starts afresh.
    env.step()
    assert env.sample["input"][2] != np.float32(k)


def test_spring_rejects_a_prediction_of_the_wrong_size() -> None:
    env = prepare_environment(Spring())
    with pytest.raises(RuntimeError, match="before any step"):
        env.apply_prediction({"prediction": np.zeros(1)})
    env.step()
    with pytest.raises(ValueError, match="shape"):
        env.apply_prediction({"prediction": np.zeros(2)})


# -- toy.heat ----------------------------------------------------------------------------


def test_heat_loses_energy_and_stays_finite() -> None:
    env = prepare_environment(Heat(grid_size=24))
    for _ in range(5):
        env.step()
        now, later = env.sample["input"][0].astype(np.float64), env.sample["ground_truth"][0].astype(np.float64)
        assert np.all(np.isfinite(later))
        assert now.min() >= 0.0 and now.max() > 0.0
        assert later.sum() < now.sum()  # heat leaves through the cold boundary
        assert (later**2).sum() < (now**2).sum()
        assert later.max() <= now.max()  # maximum principle
        for border in (later[0], later[-1], later[:, 0], later[:, -1]):
            assert np.all(border == 0.0)


def test_heat_at_the_cfl_limit_stays_bounded_over_a_long_run() -> None:
    env = prepare_environment(Heat(grid_size=16, dt=0.25))
    env.step()
    field = env.simulate(env.field, 2000)
    assert np.all(np.isfinite(field)) and np.abs(field).max() <= np.abs(env.field).max()


@pytest.mark.parametrize(("dx", "dt", "diffusivity"), [(1.0, 0.3, 1.0), (0.1, 0.01, 1.0), (1.0, 0.2, 2.0)])
def test_heat_cfl_check(dx: float, dt: float, diffusivity: float) -> None:
    with pytest.raises(ValueError, match="unstable time step"):
        Heat(dx=dx, dt=dt, diffusivity=diffusivity)


def test_heat_steps_per_sample_composes() -> None:
    env = prepare_environment(Heat(grid_size=12, steps_per_sample=4))
    env.step()
    start = env.field
    np.testing.assert_allclose(env.simulate(env.simulate(start, 1), 3), env.simulate(start, 4))
    np.testing.assert_allclose(env.sample["ground_truth"][0], env.simulate(start, 4).astype(np.float32))


def test_heat_rollout_continues_from_the_prediction() -> None:
    env = prepare_environment(Heat(grid_size=10))
    env.step()
    prediction = np.ones((1, 10, 10), dtype=np.float32)
    env.apply_prediction({"prediction": prediction})
    env.step()
    expected_input = np.zeros((10, 10), dtype=np.float32)
    expected_input[1:-1, 1:-1] = 1.0  # the boundary is reset to the Dirichlet value
    np.testing.assert_array_equal(env.sample["input"][0], expected_input)
    np.testing.assert_allclose(env.sample["ground_truth"][0], env.simulate(expected_input, env.steps_per_sample))
    with pytest.raises(ValueError, match="shape"):
        env.apply_prediction({"prediction": np.zeros((1, 9, 9))})


# -- the plugin ------------------------------------------------------------------------------


def test_importing_the_plugin_does_not_import_the_environments() -> None:
    source_dirs = {str(Path(module.__file__).parent.parent) for module in (dpx, dpx_toy)}
    path = os.pathsep.join([*source_dirs, os.environ.get("PYTHONPATH", "")])
    check = (
        "import dpx_toy, sys; "
        "loaded = [m for m in sys.modules if m.startswith('dpx_toy.')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    assert result.returncode == 0, result.stderr


def test_registry_hook_offers_the_three_environments() -> None:
    plugins = dpx.plugins.Plugins(entry_points=False, strict=True, dev_modules=["dpx_toy"])
    offers = plugins.offers("environments")
    for name, cls in ENV_NAMES.items():
        ((info, component),) = offers[name]
        assert info.name == "dpx_toy" and component.summary
        assert plugins.load("environments", name) is cls
        assert issubclass(cls, dpx.Environment)


def test_entry_point_is_registered() -> None:
    assert importlib.metadata.distribution("dpx-toy").version == "0.1.0"
    plugins = dpx.plugins.Plugins()
    assert plugins.plugins["toy"].status == "ok", plugins.plugins["toy"].error
    assert plugins.plugins["toy"].distribution == "dpx-toy"
    offers = plugins.offers("environments")
    for name in ENV_NAMES:
        assert [info.name for info, _ in offers[name]] == ["toy"]
    assert plugins.load("environments", "toy.mean") is Mean
    assert plugins.load("environments", "toy:toy.heat") is Heat


def test_disabled_plugin_is_named_when_its_environment_is_used() -> None:
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "DPX_DISABLE_PLUGINS": "toy"}
    result = subprocess.run(
        [sys.executable, "-m", "dpx", "generate", str(root / "examples" / "spring_generate.toml"), "--dry-run"],
        capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "Environment 'toy.spring' comes with the plugin 'toy', disabled by DPX_DISABLE_PLUGINS."
    ), result.stderr


@pytest.mark.parametrize("name", sorted(ENV_NAMES))
def test_passes_the_environment_kit(name: str) -> None:
    batch = dpx.testing.check_environment(name, samples=3)
    assert set(batch) >= {"input", "ground_truth"}
