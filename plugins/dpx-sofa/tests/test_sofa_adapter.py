"""dpx-sofa's adapter, tested against a stand-in of SofaPython3.

SOFA cannot be installed where these tests run. The ``sofa`` fixture puts
``tests/sofa_standin`` (fake ``Sofa`` and ``SofaRuntime`` modules with a toy
linear mechanics) on ``sys.path`` for one test and removes it, and every
module imported from it, afterwards. Tests without the fixture see no SOFA.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import dpx
import dpx.plugins
import dpx.testing
from dpx.testing import prepare_environment
from dpx_sofa._sofa import MISSING_SOFA, sofa_installed
from dpx_sofa.beam import SofaBeam
from dpx_sofa.environment import SceneError

STANDIN = Path(__file__).resolve().parent / "sofa_standin"
#: A small beam: 4 x 2 x 2 = 16 nodes, 4 of them on the free end.
SMALL = {"grid_resolution": (4, 2, 2), "size": (4.0, 1.0, 1.0), "dt": 0.1, "animate_steps": 3}

real_sofa = pytest.mark.skipif(sofa_installed(), reason="SofaPython3 is installed: the missing-SOFA path cannot be seen")


@pytest.fixture
def sofa(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in ``Sofa`` package, importable for one test."""
    monkeypatch.syspath_prepend(str(STANDIN))
    import Sofa

    assert getattr(Sofa, "STANDIN", False), "a real SOFA shadows the stand-in"
    yield Sofa
    for name in list(sys.modules):
        if name.split(".")[0] in ("Sofa", "SofaRuntime") or name == "dpx_sofa.controller":
            del sys.modules[name]



def subprocess_env(standin: bool) -> dict[str, str]:
    """This interpreter's environment without DPX_ variables, with or without the stand-in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPX_")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != STANDIN]
    env["PYTHONPATH"] = os.pathsep.join(([str(STANDIN)] if standin else []) + paths)
    return env


def dpx_plugins_rows(standin: bool) -> dict[str, dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "dpx", "plugins", "--json"], env=subprocess_env(standin),
                            capture_output=True, text=True, check=True)
    return {row["name"]: row for row in json.loads(result.stdout)}


# -- the plugin, with and without SOFA ------------------------------------------------------


def test_plugin_module_imports_nothing_heavy() -> None:
    dpx.testing.assert_light_import("dpx_sofa")


def test_entry_point_is_installed() -> None:
    distribution = importlib.metadata.distribution("dpx-sofa")
    assert distribution.version == "0.1.0"
    assert [(ep.name, ep.value) for ep in distribution.entry_points if ep.group == "dpx"] == [("sofa", "dpx_sofa")]


@real_sofa
def test_listed_as_unavailable_with_the_reason_when_sofa_is_missing() -> None:
    rows = dpx_plugins_rows(standin=False)
    sofa = rows["sofa"]
    assert (sofa["status"], sofa["distribution"]) == ("unavailable", "dpx-sofa")
    assert "SofaPython3 is not installed (import Sofa failed)" in sofa["error"]
    assert "dpx-sofa README" in sofa["error"]
    assert rows["dpx"]["status"] == "ok", "a missing SOFA must not break the other plugins"
    listing = subprocess.run([sys.executable, "-m", "dpx", "plugins"], env=subprocess_env(standin=False),
                             capture_output=True, text=True, check=True)
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith("sofa ")]
    assert "unavailable: " + MISSING_SOFA in line
    assert "sofa" not in listing.stderr, "a missing optional simulator is not worth a warning"


def test_listed_ok_with_its_environments_when_sofa_is_importable() -> None:
    sofa = dpx_plugins_rows(standin=True)["sofa"]
    assert sofa["status"] == "ok", sofa["error"]
    assert sofa["provides"]["environments"]["sofa.beam"]["path"] == "dpx_sofa.beam:SofaBeam"


@real_sofa
def test_unavailable_without_sofa_even_in_strict_mode() -> None:
    for strict in (False, True):
        info = dpx.plugins.Plugins(entry_points=False, strict=strict, dev_modules=["dpx_sofa"]).plugins["dpx_sofa"]
        assert (info.status, info.error) == ("unavailable", MISSING_SOFA)


def test_registry_hook_offers_the_beam_when_sofa_is_importable(sofa: ModuleType) -> None:
    plugins = dpx.plugins.Plugins(entry_points=False, strict=True, dev_modules=["dpx_sofa"])
    assert plugins.plugins["dpx_sofa"].status == "ok"
    assert plugins.load("environments", "sofa.beam") is SofaBeam


@real_sofa
def test_creating_without_sofa_raises_the_install_hint() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"SofaPython3 is not installed \(import Sofa failed\)"):
        prepare_environment(SofaBeam(**SMALL))


# -- the adapter, against the stand-in --------------------------------------------------------


def test_create_loads_plugins_builds_the_scene_and_initialises_it(sofa: ModuleType) -> None:
    import SofaRuntime

    env = prepare_environment(SofaBeam(**SMALL))
    root = env.root
    assert root.isInitialized()
    assert SofaRuntime.imported == ["Sofa.Component"]
    assert root.dt.value == pytest.approx(0.1) and list(root.gravity.value) == [0.0, 0.0, 0.0]
    classes = {o.getName(): o.getClassName() for o in root.beam.objects}
    assert classes == {
        "solver": "EulerImplicitSolver", "linear_solver": "CGLinearSolver", "grid": "RegularGridTopology",
        "state": "MechanicalObject", "mass": "UniformMass", "fem": "HexahedronFEMForceField",
        "clamp": "FixedProjectiveConstraint", "load": "ConstantForceField",
    }
    assert isinstance(env.controller, sofa.Core.Controller) and root.getObject("dpx") is env.controller
    assert root.getObject("animation_loop").getClassName() == "DefaultAnimationLoop"
    assert env.read_positions(env.state).shape == (16, 3)
    np.testing.assert_array_equal(root.beam.clamp.indices.value, [0, 4, 8, 12])
    np.testing.assert_array_equal(root.beam.load.indices.value, [3, 7, 11, 15])


def test_create_falls_back_to_init_before_sofapython3_v24_12(sofa: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sofa.Simulation, "initRoot")
    assert prepare_environment(SofaBeam(**SMALL)).root.isInitialized()


def test_step_animates_and_reads_fields_with_declared_shapes(sofa: ModuleType) -> None:
    env = prepare_environment(SofaBeam(**SMALL))
    env.step()
    assert set(env.sample) == {"input", "ground_truth"}
    for name, field in env.fields.items():
        assert (env.sample[name].dtype, env.sample[name].shape) == (np.float32, (16, 3)) == (field.dtype, field.shape)
    forces, displacement = env.sample["input"], env.sample["ground_truth"]
    free_end = [3, 7, 11, 15]
    loaded = np.zeros(16, bool)
    loaded[free_end] = True
    assert not forces[~loaded].any() and np.all(forces[free_end] == forces[free_end[0]])
    assert 50.0 <= np.linalg.norm(forces.sum(axis=0)) <= 150.0
    # the stand-in relaxes u toward f / E by a factor 1 - (1 - dt)^steps
    expected = (1 - 0.9**3) * forces / env.young_modulus
    np.testing.assert_allclose(displacement, expected, rtol=1e-5, atol=1e-9)
    assert env.root.time.value == pytest.approx(0.3)


def test_samples_depend_only_on_the_rng(sofa: ModuleType) -> None:
    env = prepare_environment(SofaBeam(**SMALL), seed=3)
    env.step()
    first = {name: value.copy() for name, value in env.sample.items()}
    env.step()
    assert not np.array_equal(first["input"], env.sample["input"])
    env.rng = np.random.default_rng(3)
    env.step()  # reset to rest first: no memory of the previous sample
    for name in first:
        np.testing.assert_array_equal(first[name], env.sample[name])


def test_apply_prediction_writes_into_the_prediction_mechanical_object(sofa: ModuleType) -> None:
    env = prepare_environment(SofaBeam(**SMALL))
    env.step()
    truth = env.read_positions(env.state)
    predicted = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    env.apply_prediction({"prediction": predicted})
    rest = env.read_positions(env.shown, "rest_position")
    np.testing.assert_allclose(env.read_positions(env.shown), rest + predicted, rtol=1e-6)
    np.testing.assert_array_equal(env.read_positions(env.state), truth)  # the simulated beam is untouched
    env.apply_prediction({"prediction": predicted.ravel()})
    np.testing.assert_allclose(env.read_positions(env.shown), rest + predicted, rtol=1e-6)
    with pytest.raises(ValueError, match="16 x 3 values"):
        env.apply_prediction({"prediction": np.zeros((15, 3))})


def test_read_positions_copies_and_write_positions_checks_the_shape(sofa: ModuleType) -> None:
    env = prepare_environment(SofaBeam(**SMALL))
    env.step()
    before = env.read_positions(env.state)
    before[:] = 0.0  # a copy: the scene is unaffected
    assert env.read_positions(env.state).any()
    with pytest.raises(ValueError, match=r"shape \(3,\) into /beam/state.position, which has shape \(16, 3\)"):
        env.write_positions(env.state, np.zeros(3))
    moved = env.read_positions(env.state, "rest_position") + 1.0
    env.write_positions(env.state, moved)
    np.testing.assert_array_equal(env.root.beam.state.position.value, moved)


def test_a_scene_missing_a_component_names_it_and_lists_the_scene(sofa: ModuleType) -> None:
    class Renamed(SofaBeam):
        def create_scene(self, root: Any) -> None:
            super().create_scene(root)
            root.beam.state.name.value = "dofs"

    with pytest.raises(SceneError) as error:
        prepare_environment(Renamed(**SMALL))
    message = str(error.value)
    assert message.startswith(
        "scene has no component 'beam/state' (MechanicalObject) needed by SofaBeam.read_sample; the scene has: "
    )
    assert "beam/dofs (MechanicalObject)" in message and "beam/load (ConstantForceField)" in message

    class WrongKind(SofaBeam):
        def create_scene(self, root: Any) -> None:
            super().create_scene(root)
            root.prediction.state.name.value = "moved"
            root.prediction.addObject("UniformMass", name="state")

    with pytest.raises(SceneError, match="'prediction/state' needed by SofaBeam.apply_prediction is a UniformMass, not a MechanicalObject"):
        prepare_environment(WrongKind(**SMALL))


def test_component_names_follow_the_installed_sofa(sofa: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before v24.06 the clamp is a FixedConstraint; SOFA knowing neither name is an error."""
    components = dict(sofa.Core.COMPONENTS)
    components["FixedConstraint"] = components.pop("FixedProjectiveConstraint")
    monkeypatch.setattr(sofa.Core, "COMPONENTS", components)
    env = prepare_environment(SofaBeam(**SMALL))
    assert env.root.beam.clamp.getClassName() == "FixedConstraint"
    del components["FixedConstraint"]
    with pytest.raises(SceneError, match="SOFA knows none of the components FixedProjectiveConstraint, FixedConstraint"):
        prepare_environment(SofaBeam(**SMALL))


class Recording(SofaBeam):
    """A beam that records the events its controller forwards and the samples it starts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[str] = []

    def on_animate_begin(self, event: Any) -> None:
        self.log.append("begin")
        super().on_animate_begin(event)

    def on_animate_end(self, event: Any) -> None:
        self.log.append("end")
        super().on_animate_end(event)

    def start_sample(self) -> None:
        self.log.append("start_sample")
        super().start_sample()

    def read_sample(self) -> None:
        self.log.append("read_sample")
        super().read_sample()


def test_controller_forwards_every_time_step_and_step_drives_the_sample(sofa: ModuleType) -> None:
    env = prepare_environment(Recording(**{**SMALL, "animate_steps": 2}))
    env.step()
    assert env.log == ["start_sample", "begin", "end", "begin", "end", "read_sample"]


def test_when_sofa_runs_the_loop_the_controller_makes_samples(sofa: ModuleType) -> None:
    """Animating outside step() (as runSofa does) starts and reads a sample every animate_steps steps."""
    env = prepare_environment(Recording(**{**SMALL, "animate_steps": 2}))
    for _ in range(4):
        sofa.Simulation.animate(env.root, env.dt)
    sample = ["begin", "start_sample", "end", "begin", "end", "read_sample"]
    assert env.log == sample + sample
    assert env.sample["ground_truth"].any()


def test_attach_builds_into_sofas_root_and_applies_a_connected_network(sofa: ModuleType) -> None:
    """runSofa's createScene(root) -> env.attach(root); SOFA initialises and animates the scene."""
    root = sofa.Core.Node("root")
    env = SofaBeam(**{**SMALL, "animate_steps": 1})
    env.attach(root, seed=0)
    sofa.Simulation.init(root)
    requests: list[dict[str, np.ndarray]] = []

    def network(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests.append(inputs)
        return {"prediction": 2 * inputs["input"]}

    env._connect(predictor=network)
    sofa.Simulation.animate(root, env.dt)
    assert env.root is root and env.fields["input"].shape == (16, 3)  # init and init_database ran
    (request,) = requests
    np.testing.assert_array_equal(request["input"], env.sample["input"])
    shown = env.read_positions(env.shown) - env.read_positions(env.shown, "rest_position")
    np.testing.assert_allclose(shown, 2 * env.sample["input"], rtol=1e-6)


def test_close_unloads_and_a_live_simulation_is_never_pickled(sofa: ModuleType) -> None:
    env = SofaBeam(**SMALL)
    assert isinstance(pickle.loads(pickle.dumps(env)), SofaBeam)  # parameters travel, before create()
    prepare_environment(env)
    root = env.root
    with pytest.raises(TypeError, match="live SOFA simulation"):
        pickle.dumps(env)
    env.close()
    assert env.root is None and not root.objects and not root.isInitialized()
    env.close()  # twice is harmless


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"grid_resolution": (1, 2, 2)}, "grid_resolution"),
        ({"grid_resolution": (4, 2)}, "grid_resolution"),
        ({"grid_resolution": (4.0, 2, 2)}, "grid_resolution"),
        ({"size": (4.0, 0.0, 1.0)}, "size"),
        ({"young_modulus": -1.0}, "young_modulus"),
        ({"poisson_ratio": 0.5}, "poisson_ratio"),
        ({"total_mass": 0}, "total_mass"),
        ({"force_range": (2.0, 1.0)}, "force_range"),
        ({"force_range": (-1.0, 1.0)}, "force_range"),
        ({"rayleigh_mass": -0.1}, "rayleigh_mass"),
        ({"cg_iterations": 0}, "cg_iterations"),
        ({"cg_tolerance": 0.0}, "cg_tolerance"),
        ({"dt": float("nan")}, "dt"),
        ({"animate_steps": 0}, "animate_steps"),
    ],
)
def test_parameters_are_validated(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SofaBeam(**kwargs)


# -- through dpx, in a fresh interpreter that sees the stand-in ------------------------------------


def run_with_standin(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(standin=True),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_check_environment_passes_through_dpx() -> None:
    code = (
        "from dpx.testing import check_environment\n"
        f"batch = check_environment('sofa.beam', {SMALL!r}, samples=3)\n"
        "print(batch['input'].shape, batch['ground_truth'].shape, batch['ground_truth'].dtype)\n"
    )
    assert run_with_standin(code) == "(3, 16, 3) (3, 16, 3) float32"


def test_generation_with_worker_processes_matches_in_process(tmp_path: Path) -> None:
    """Each worker builds its own scene; the dataset does not depend on where samples were made."""
    code = (
        "import dpx, numpy as np\n"
        "def generate(name, **runner):\n"
        f"    config = dpx.EnvironmentConfig('sofa.beam', env_kwargs={SMALL!r}, seed=1, **runner)\n"
        f"    summary = dpx.DataGeneration(config, session_dir={str(tmp_path)!r}, session_name=name,\n"
        "                                 batch_nb=2, batch_size=4, progress=False).execute()\n"
        "    return dpx.open_database(summary.session_path).read('training')\n"
        "one = generate('inprocess')\n"
        "two = generate('workers', runner='multiprocess', workers=2)\n"
        "print(all(np.array_equal(one[k], two[k]) for k in one), one['ground_truth'].shape)\n"
    )
    assert run_with_standin(code) == "True (8, 16, 3)"
