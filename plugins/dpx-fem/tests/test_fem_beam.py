"""Tests of the ``fem.beam`` environment: the physics first, then the dpx contract."""

from __future__ import annotations

import numpy as np
import pytest

import dpx
import dpx.testing
from dpx.testing import prepare_environment
from dpx_fem.beam import Beam

SMALL = {"nx": 8, "ny": 2, "nz": 2}



def end_load(env: Beam, force: np.ndarray) -> np.ndarray:
    """Nodal forces of a uniform traction on the end face ``x = length`` totalling ``force``
    (the consistent loads of bilinear faces: weights 1/4, 1/2, 1 at corners, edges, inside)."""
    _, ny, nz = env.cells
    wy, wz = np.ones(ny + 1), np.ones(nz + 1)
    wy[[0, -1]] = wz[[0, -1]] = 0.5
    weights = np.zeros(env.grid_shape)
    weights[-1] = np.outer(wy, wz)
    weights = weights.reshape(-1) / weights.sum()
    return weights[:, None] * np.asarray(force)[None, :]


def tip_deflection(env: Beam, force: float) -> float:
    """Mean vertical displacement of the end face under a vertical end load."""
    u = env.solve(end_load(env, np.array([0.0, 0.0, -force])))
    end = env.nodes[:, 0] == env.size[0]
    return float(-u[end, 2].mean())


# -- physics -------------------------------------------------------------------------


def test_tip_deflection_converges_to_euler_bernoulli() -> None:
    """A slender cantilever (L/h = 10) under an end load deflects by F L^3 / (3 E I).

    Trilinear hexahedra are too stiff in bending (shear locking, and the clamp
    stops the section's Poisson contraction), so a coarse mesh underestimates
    the deflection; refining along x must close the gap monotonically. The 3D
    answer also includes shear deflection (Timoshenko: +0.8 % here), so it is
    compared with a 3 % tolerance on the finest mesh.
    """
    E, F = 2e5, 3.0
    ratios = []
    for nx in (20, 40, 80):
        env = prepare_environment(Beam(nx=nx, ny=4, nz=4, young_modulus=E, poisson_ratio=0.3))
        length, width, height = env.size
        euler_bernoulli = F * length**3 / (3 * E * width * height**3 / 12)
        ratios.append(tip_deflection(env, F) / euler_bernoulli)
    assert ratios[0] < ratios[1] < ratios[2], ratios
    assert ratios[2] == pytest.approx(1.0, abs=0.03), ratios


@pytest.mark.parametrize(
    ("base", "changed", "expected", "tolerance"),
    [
        ({"nx": 80, "ny": 4, "nz": 4}, {"nx": 40, "length": 5.0}, 0.5**3, 0.03),
        ({"nx": 80, "ny": 2, "nz": 4}, {"ny": 4, "width": 2.0}, 0.5, 0.02),
        ({"nx": 80, "ny": 2, "nz": 8}, {"nz": 4, "height": 0.5}, 2.0**3, 0.05),
    ],
    ids=["length", "width", "height"],
)
def test_deflection_scales_like_euler_bernoulli(base: dict, changed: dict, expected: float, tolerance: float) -> None:
    """Tip deflection ~ L^3 / (W H^3), cells of the same shape in both beams. The
    tolerances leave room for shear deflection (larger in short, thick beams)
    and for shear locking (larger in thin ones)."""
    ratio = tip_deflection(prepare_environment(Beam(**{**base, **changed})), 1.0) / tip_deflection(prepare_environment(Beam(**base)), 1.0)
    assert ratio == pytest.approx(expected, rel=tolerance)


def test_solve_matches_scikit_fem_solve() -> None:
    """The one-off factorisation and our node numbering give scikit-fem's own answer."""
    from skfem import condense, solve

    env = prepare_environment(Beam(**SMALL))
    forces = np.random.default_rng(1).normal(size=(env.n_nodes, 3))
    load = np.zeros(env.stiffness.shape[0])
    load[env.dofs] = forces
    fixed = env.dofs[env.clamped].ravel()
    expected = solve(*condense(env.stiffness, load, D=fixed))[env.dofs]
    np.testing.assert_allclose(env.solve(forces), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


def test_equilibrium_and_clamp() -> None:
    """K u equals the applied forces on free nodes, the clamped face does not move,
    and the support's reactions balance the applied forces."""
    env = prepare_environment(Beam(**SMALL))
    forces = np.random.default_rng(2).normal(size=(env.n_nodes, 3))
    forces[env.clamped] = 0.0
    u = env.solve(forces)
    assert np.all(u[env.clamped] == 0.0)
    global_u = np.zeros(env.stiffness.shape[0])
    global_u[env.dofs] = u
    internal = (env.stiffness @ global_u)[env.dofs]
    scale = np.abs(forces).max()
    np.testing.assert_allclose(internal[~env.clamped], forces[~env.clamped], atol=1e-8 * scale)
    np.testing.assert_allclose(internal[env.clamped].sum(axis=0), -forces.sum(axis=0), atol=1e-8 * scale)


def test_linearity() -> None:
    env = prepare_environment(Beam(**SMALL))
    rng = np.random.default_rng(3)
    f, g = rng.normal(size=(2, env.n_nodes, 3))
    np.testing.assert_allclose(env.solve(2 * f), 2 * env.solve(f), rtol=1e-12)
    np.testing.assert_allclose(env.solve(f + g), env.solve(f) + env.solve(g), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(env.solve(f * (1 - env.clamped[:, None])), env.solve(f))


def test_material_scaling() -> None:
    """Displacements are inversely proportional to Young's modulus."""
    soft, stiff = prepare_environment(Beam(**SMALL, young_modulus=1e3)), prepare_environment(Beam(**SMALL, young_modulus=4e3))
    forces = np.random.default_rng(4).normal(size=(soft.n_nodes, 3))
    np.testing.assert_allclose(soft.solve(forces), 4 * stiff.solve(forces), rtol=1e-9)


# -- samples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "shape"), [("nodes", (9 * 3 * 3, 3)), ("grid", (3, 9, 3, 3))]
)
def test_fields_shapes_and_dtypes(layout: str, shape: tuple[int, ...]) -> None:
    env = prepare_environment(Beam(**SMALL, layout=layout))
    env.step()
    assert {name: (f.dtype, f.shape) for name, f in env.fields.items()} == {
        "input": (np.float32, shape),
        "ground_truth": (np.float32, shape),
        "load": (np.float32, (6,)),
        "parameters": (np.float64, (4,)),  # load_node, force, direction_z, direction_azimuth
    }
    for name, field in env.fields.items():
        assert env.sample[name].dtype == field.dtype and env.sample[name].shape == field.shape


def test_grid_layout_is_the_nodal_layout_reshaped() -> None:
    nodes, grid = prepare_environment(Beam(**SMALL), 5), prepare_environment(Beam(**SMALL, layout="grid"), 5)
    nodes.step()
    grid.step()
    nx, ny, nz = nodes.cells
    for name in ("input", "ground_truth"):
        by_node, by_cell = nodes.sample[name], grid.sample[name]
        for i, j, k in [(0, 0, 0), (nx, ny, nz), (3, 1, 2), (nx, 0, 1)]:
            np.testing.assert_array_equal(by_cell[:, i, j, k], by_node[(i * (ny + 1) + j) * (nz + 1) + k])
        np.testing.assert_array_equal(grid.to_nodes(by_cell), by_node)
    # the node order is x-major: node (i, j, k) sits at (i dx, j dy, k dz)
    np.testing.assert_allclose(nodes.nodes[(3 * (ny + 1) + 1) * (nz + 1) + 2], [3 * 10 / nx, 1 / ny, 2 / nz])


def test_samples_follow_the_load_parameters() -> None:
    env = prepare_environment(Beam(nx=10, ny=2, nz=2, force_range=(2.0, 3.0), load_region=(0.6, 0.9), patch_radius=0.7))
    for _ in range(30):
        env.step()
        forces, load = env.sample["input"].astype(np.float64), env.sample["load"].astype(np.float64)
        centre, total = load[:3], load[3:]
        assert 6.0 - 1e-6 <= centre[0] <= 9.0 + 1e-6
        assert 2.0 - 1e-5 <= np.linalg.norm(total) <= 3.0 + 1e-5
        np.testing.assert_allclose(forces.sum(axis=0), total, rtol=1e-5, atol=1e-6)
        loaded = np.abs(forces).sum(axis=1) > 0
        assert not np.any(loaded & env.clamped)
        assert np.all(np.linalg.norm(env.nodes[loaded] - centre, axis=1) <= 0.7 + 1e-6)
        inside = (env.nodes[loaded, 1:] > 0) & (env.nodes[loaded, 1:] < 1)
        on_end_face = env.nodes[loaded, 0] == 10.0
        assert np.all(~inside.all(axis=1) | on_end_face), "forces are applied on the surface"
        np.testing.assert_allclose(env.sample["ground_truth"], env.solve(forces), rtol=1e-4, atol=1e-7)
        assert np.all(env.sample["ground_truth"][env.clamped] == 0.0)


@pytest.mark.parametrize("layout", ["nodes", "grid"])
def test_conformance_and_reproducibility(layout: str) -> None:
    first = dpx.testing.check_environment("fem.beam", {**SMALL, "layout": layout}, samples=4, seed=3)
    again = dpx.testing.check_environment("fem.beam", {**SMALL, "layout": layout}, samples=4, seed=3)
    other = dpx.testing.check_environment("fem.beam", {**SMALL, "layout": layout}, samples=4, seed=4)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["input"], other["input"])
    assert len({tuple(load) for load in first["load"]}) == 4, "each sample draws a new load"


def test_apply_prediction_keeps_the_displacement_as_nodes() -> None:
    env = prepare_environment(Beam(**SMALL, layout="grid"))
    env.step()
    env.apply_prediction({"prediction": 2 * env.sample["ground_truth"]})
    np.testing.assert_allclose(env.predicted_displacement, 2 * env.displacement, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=r"shape \(3, 9, 3, 3\)"):
        env.apply_prediction({"prediction": np.zeros((env.n_nodes, 3), np.float32)})


def test_visual_objects_follow_the_simulation() -> None:
    env = prepare_environment(Beam(**SMALL))
    env.init_visualization()
    fem, predicted, arrows = sorted(env.factory.scene())
    env.step()
    env.apply_prediction({"prediction": env.sample["ground_truth"]})
    np.testing.assert_allclose(env.factory.objects[fem]["positions"], env.nodes + env.displacement)
    np.testing.assert_allclose(env.factory.objects[predicted]["positions"], env.nodes + env.displacement, atol=1e-6)
    np.testing.assert_allclose(env.factory.objects[arrows]["vectors"], env.forces)


def test_solve_before_create_and_wrong_forces() -> None:
    env = Beam(**SMALL)
    with pytest.raises(RuntimeError, match="create"):
        env.solve(np.zeros((env.n_nodes, 3)))
    prepare_environment(env)
    with pytest.raises(ValueError, match="forces must have shape"):
        env.solve(np.zeros((3, env.n_nodes)))


# -- parameters and plugin -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"young_modulus": 0.0}, "young_modulus"),
        ({"young_modulus": -1e3}, "young_modulus"),
        ({"young_modulus": float("nan")}, "young_modulus"),
        ({"poisson_ratio": 0.5}, "poisson_ratio"),
        ({"poisson_ratio": 0.0}, "poisson_ratio"),
        ({"poisson_ratio": "0.3"}, "poisson_ratio"),
        ({"nx": 0}, "nx"),
        ({"ny": 2.0}, "ny"),
        ({"nz": True}, "nz"),
        ({"length": 0.0}, "length"),
        ({"width": -1.0}, "width"),
        ({"height": float("inf")}, "height"),
        ({"force_range": (-1.0, 1.0)}, "force_range"),
        ({"force_range": (2.0, 1.0)}, "force_range"),
        ({"force_range": (0.0, 0.0)}, "force_range"),
        ({"force_range": 5.0}, "force_range"),
        ({"load_region": (0.5, 1.5)}, "load_region"),
        ({"load_region": (0.51, 0.52)}, "load_region"),
        ({"patch_radius": 0.0}, "patch_radius"),
        ({"layout": "voxels"}, "layout"),
    ],
)
def test_bad_parameter_is_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named) as caught:
        Beam(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(caught.value)


def test_plugin_module_is_light() -> None:
    dpx.testing.assert_light_import("dpx_fem", heavy=["skfem", "scipy", "torch"])
