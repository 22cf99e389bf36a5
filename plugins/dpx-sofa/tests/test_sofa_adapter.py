"""dpx-sofa's adapter against a real SOFA build (SofaPython3), in this process and in workers.

``scripts/test.sh`` makes the shared build (``../shared/sofa``) importable when
it is there; without a SOFA build every test here is skipped with that reason.
Scenes are small (4 x 2 x 2 nodes, 3 time steps) so the module runs in seconds.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dpx
from dpx.core.runners import WorkerError
from dpx.testing import check_environment, prepare_environment
from dpx_sofa._sofa import sofa_installed
from dpx_sofa.beam import SofaBeam
from dpx_sofa.environment import SceneError

pytestmark = pytest.mark.skipif(
    not sofa_installed(), reason="no SOFA build on PYTHONPATH (scripts/test.sh activates ../shared/sofa)"
)

#: A small beam: 4 x 2 x 2 = 16 nodes, 4 of them on the free end.
SMALL = {"grid_resolution": (4, 2, 2), "size": (4.0, 1.0, 1.0), "dt": 0.1, "animate_steps": 3}
FREE_END = [3, 7, 11, 15]


@pytest.fixture(scope="module")
def sofa() -> Any:
    import Sofa
    import Sofa.Simulation

    return Sofa


def created(env: SofaBeam, seed: int = 0) -> SofaBeam:
    return prepare_environment(env, seed)


# -- building and initialising --------------------------------------------------------------


def test_create_loads_the_modules_builds_the_scene_and_initialises_it(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL))
    root = env.root
    assert root.dt.value == pytest.approx(0.1) and list(root.gravity.value) == [0.0, 0.0, 0.0]
    classes = {o.getName(): o.getClassName() for o in root.beam.objects}  # SOFA adds a MatrixFreeSystem
    assert classes.items() >= {
        "solver": "EulerImplicitSolver", "linear_solver": "CGLinearSolver", "grid": "RegularGridTopology",
        "state": "MechanicalObject", "mass": "UniformMass", "fem": "HexahedronFEMForceField",
        "clamp": "FixedProjectiveConstraint", "load": "ConstantForceField",
    }.items()
    assert root.beam.fem.componentState.value == "Valid"
    assert isinstance(env.controller, sofa.Core.Controller) and root.getObject("dpx") is env.controller
    assert root.getObject("animation_loop").getClassName() == "DefaultAnimationLoop"
    assert env.read_positions(env.state).shape == (16, 3)
    np.testing.assert_array_equal(root.beam.clamp.indices.value, [0, 4, 8, 12])
    np.testing.assert_array_equal(root.beam.load.indices.value, FREE_END)
    env.close()


def test_a_module_sofa_cannot_load_is_named(sofa: Any) -> None:
    """SofaRuntime.importPlugin returns False instead of raising; the umbrella Sofa.Component may be absent."""

    class Umbrella(SofaBeam):
        plugins = (*SofaBeam.plugins, "Sofa.Component.NoSuchModule")

    with pytest.raises(SceneError, match=r"^Umbrella: SOFA could not load the plugin\(s\) Sofa.Component.NoSuchModule "
                                         r"its scene needs \(SOFA_ROOT="):
        created(Umbrella(**SMALL))


def test_a_scene_sofa_fails_to_initialise_raises_sofas_message(sofa: Any) -> None:
    """SOFA only logs an init error (and would simulate nothing): create() raises it."""
    from dpx_sofa.testing_envs import UnmeshedBeam

    env = UnmeshedBeam(**SMALL)
    with pytest.raises(SceneError, match=r"UnmeshedBeam: SOFA could not initialise the scene: \[ERROR\] /beam/fem: "
                                         r"No topology component found"):
        created(env)
    assert env.root is None and env.controller is None, "the failed scene is unloaded"


def test_component_names_follow_the_installed_sofa(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL))
    assert env.component_name("NoSuchSolver", "EulerImplicitSolver") == "EulerImplicitSolver"
    with pytest.raises(SceneError, match="SOFA knows none of the components NoSuchSolver, NoSuchScheme; loaded "
                                         "plugins: Sofa.Component.StateContainer, "):
        env.component_name("NoSuchSolver", "NoSuchScheme")
    env.close()


def test_create_falls_back_to_init_before_sofapython3_v24_12(sofa: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sofa.Simulation, "initRoot")
    env = created(SofaBeam(**SMALL))
    env.step()
    assert env.sample["ground_truth"][FREE_END].any()
    env.close()


# -- samples -------------------------------------------------------------------------------------


def test_a_sample_is_the_force_on_the_free_end_and_sofas_displacement(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL), seed=5)
    env.step()
    forces, displacement = env.sample["input"], env.sample["ground_truth"]
    assert forces.dtype == displacement.dtype == np.float32
    loaded = np.zeros(16, bool)
    loaded[FREE_END] = True
    assert not forces[~loaded].any() and np.all(forces[FREE_END] == forces[FREE_END[0]])
    total = forces.sum(axis=0)
    assert 50.0 <= np.linalg.norm(total) <= 150.0
    assert not displacement[[0, 4, 8, 12]].any(), "the clamped end moved"
    tip = displacement[FREE_END].mean(axis=0)
    assert np.dot(tip, total) > 0 and np.all(np.isfinite(displacement)), "the free end does not follow the force"
    assert env.root.time.value == pytest.approx(0.3)  # reset to 0, then 3 steps of dt
    env.close()


def test_samples_depend_only_on_the_rng(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL), seed=3)
    env.step()
    first = {name: value.copy() for name, value in env.sample.items()}
    env.step()
    assert not np.array_equal(first["input"], env.sample["input"])
    env.rng = np.random.default_rng(3)
    env.step()  # reset to rest first: no memory of the previous sample
    for name in first:
        np.testing.assert_array_equal(first[name], env.sample[name])
    env.close()


def test_apply_prediction_writes_float32_predictions_into_the_prediction_grid(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL))
    env.step()
    truth = env.read_positions(env.state)
    predicted = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    env.apply_prediction({"prediction": predicted})
    rest = env.read_positions(env.shown, "rest_position")
    assert env.root.prediction.state.position.value.dtype == np.float64
    np.testing.assert_allclose(env.read_positions(env.shown), rest + predicted, rtol=1e-6)
    np.testing.assert_array_equal(env.read_positions(env.state), truth)  # the simulated beam is untouched
    env.apply_prediction({"prediction": predicted.ravel()})
    np.testing.assert_allclose(env.read_positions(env.shown), rest + predicted, rtol=1e-6)
    with pytest.raises(ValueError, match="16 x 3 values"):
        env.apply_prediction({"prediction": np.zeros((15, 3))})
    env.close()


def test_the_grid_layout_holds_the_same_sample_channel_first_for_a_unet(sofa: Any) -> None:
    nodes, grid = (created(SofaBeam(**SMALL, layout=layout), seed=2) for layout in ("nodes", "grid"))
    nodes.step()
    grid.step()
    assert grid.fields["input"].shape == grid.sample["ground_truth"].shape == (3, 4, 2, 2)
    for name in ("input", "ground_truth"):
        # node (i, j, k) is number i + nx * (j + ny * k)
        np.testing.assert_array_equal(grid.sample[name][:, 3, 1, 0], nodes.sample[name][3 + 4 * 1])
        np.testing.assert_array_equal(grid.to_nodes(grid.sample[name]), nodes.sample[name])
    grid.apply_prediction({"prediction": grid.sample["ground_truth"]})
    np.testing.assert_allclose(grid.read_positions(grid.shown), grid.read_positions(grid.state), atol=1e-6)
    nodes.close()
    grid.close()
    with pytest.raises(ValueError, match="layout must be one of 'nodes', 'grid'"):
        SofaBeam(layout="cells")


def test_read_positions_copies_sofas_read_only_view_and_write_positions_checks_the_shape(sofa: Any) -> None:
    env = created(SofaBeam(**SMALL))
    env.step()
    assert not env.state.position.value.flags.writeable  # SOFA's own memory, read-only
    before = env.read_positions(env.state)
    before[:] = 0.0  # a copy: the scene is unaffected
    assert env.read_positions(env.state).any()
    with pytest.raises(ValueError, match=r"shape \(3,\) into /beam/state.position, which has shape \(16, 3\)"):
        env.write_positions(env.state, np.zeros(3))
    moved = env.read_positions(env.state, "rest_position") + 1.0
    env.write_positions(env.state, moved)
    np.testing.assert_array_equal(env.root.beam.state.position.value, moved)
    env.close()


def test_a_scene_missing_a_component_names_it_and_lists_the_scene(sofa: Any) -> None:
    class Renamed(SofaBeam):
        def create_scene(self, root: Any) -> None:
            super().create_scene(root)
            root.beam.state.name.value = "dofs"

    with pytest.raises(SceneError) as error:
        created(Renamed(**SMALL))
    message = str(error.value)
    assert message.startswith(
        "scene has no component 'beam/state' (MechanicalObject) needed by SofaBeam.read_sample; the scene has: "
    )
    assert "beam/dofs (MechanicalObject)" in message and "beam/load (ConstantForceField)" in message

    class WrongKind(SofaBeam):
        def create_scene(self, root: Any) -> None:
            super().create_scene(root)
            root.prediction.state.name.value = "moved"
            root.prediction.addObject("UniformMass", name="state", totalMass=1.0)

    with pytest.raises(SceneError, match="'prediction/state' needed by SofaBeam.apply_prediction is a UniformMass, "
                                         "not a MechanicalObject"):
        created(WrongKind(**SMALL))


# -- the controller ---------------------------------------------------------------------------------


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


def test_controller_forwards_every_time_step_and_step_drives_the_sample(sofa: Any) -> None:
    env = created(Recording(**{**SMALL, "animate_steps": 2}))
    env.step()
    assert env.log == ["start_sample", "begin", "end", "begin", "end", "read_sample"]
    env.close()


def test_when_sofa_runs_the_loop_the_controller_makes_samples(sofa: Any) -> None:
    """Animating outside step() (as runSofa does) starts and reads a sample every animate_steps steps."""
    env = created(Recording(**{**SMALL, "animate_steps": 2}))
    for _ in range(4):
        sofa.Simulation.animate(env.root, env.dt)
    sample = ["begin", "start_sample", "end", "begin", "end", "read_sample"]
    assert env.log == sample + sample
    assert env.sample["ground_truth"].any()
    env.close()


def attached(sofa: Any) -> tuple[SofaBeam, Any]:
    """A beam built into a root node made as runSofa makes it (returned too), initialised by SOFA,
    one SOFA step a sample."""
    root = sofa.Core.Node("root")
    env = SofaBeam(**{**SMALL, "animate_steps": 1})
    env.attach(root, seed=0)
    sofa.Simulation.init(root)
    return env, root


def test_attach_builds_into_sofas_root_and_applies_a_connected_network(sofa: Any) -> None:
    """runSofa's createScene(root) -> env.attach(root); SOFA initialises and animates the scene."""
    env, root = attached(sofa)
    requests: list[dict[str, np.ndarray]] = []

    def network(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests.append(inputs)
        return {"prediction": 2 * inputs["input"]}

    env.connect_predictor(network)
    env.animate()
    assert env.root is root and env.fields["input"].shape == (16, 3)  # init and init_database ran
    (request,) = requests
    np.testing.assert_array_equal(request["input"], env.sample["input"])
    shown = env.read_positions(env.shown) - env.read_positions(env.shown, "rest_position")
    np.testing.assert_allclose(shown, 2 * env.sample["input"], rtol=1e-6)
    env.close()


def test_an_exception_in_a_controller_handler_is_raised_not_swallowed(sofa: Any) -> None:
    """SOFA logs and swallows what a handler raises; animate() raises it, once, and the scene stays usable."""
    env, _ = attached(sofa)
    env.connect_predictor(lambda inputs: {"prediction": np.zeros(5)})
    with pytest.raises(ValueError, match="SofaBeam expects a displacement of 16 x 3 values, got shape"):
        env.animate()
    env.connect_predictor(lambda inputs: {"prediction": inputs["input"]})
    env.animate()
    np.testing.assert_allclose(env.read_positions(env.shown) - env.read_positions(env.shown, "rest_position"),
                               env.sample["input"], rtol=1e-6)
    env.close()


def test_close_unloads_drops_the_components_and_a_live_simulation_is_never_pickled(sofa: Any) -> None:
    env = SofaBeam(**SMALL)
    assert isinstance(pickle.loads(pickle.dumps(env)), SofaBeam)  # parameters travel, before create()
    created(env)
    with pytest.raises(TypeError, match="live SOFA simulation"):
        pickle.dumps(env)
    env.close()
    assert env.root is None and env.state is None and env.load is None and env.shown is None
    env.close()  # twice is harmless
    assert isinstance(pickle.loads(pickle.dumps(env)), SofaBeam)
    created(env, seed=1)  # a new scene in the same process
    env.step()
    assert env.sample["ground_truth"][FREE_END].any()
    env.close()


# -- through dpx, in this process and in worker processes ---------------------------------------------------


def test_check_environment_passes_through_dpx() -> None:
    batch = check_environment("sofa.beam", SMALL, samples=3)
    assert (batch["input"].shape, batch["ground_truth"].shape, batch["ground_truth"].dtype) == (
        (3, 16, 3), (3, 16, 3), np.float32)


def generate(tmp_path: Path, name: str, environment: Any = "sofa.beam", env_kwargs: Any = None, **runner: Any) -> Any:
    config = dpx.EnvironmentConfig(environment, env_kwargs=env_kwargs or SMALL, seed=1, **runner)
    return dpx.DataGeneration(config, session_dir=str(tmp_path), session_name=name, batch_nb=2, batch_size=4,
                              progress=False).execute()


def stored(summary: Any) -> dict[str, np.ndarray]:
    return dpx.open_database(summary.session_path).read("training")


def test_two_sofa_workers_generate_the_in_process_dataset_and_a_killed_one_is_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One SOFA simulation per process; a worker SIGKILLed mid-step is replaced and its chunk redone."""
    from dpx_sofa.testing_envs import KilledBeam

    reference = stored(generate(tmp_path, "inprocess"))
    assert reference["ground_truth"].shape == (8, 16, 3) and reference["ground_truth"][:, FREE_END].any()
    workers = stored(generate(tmp_path, "workers", runner="multiprocess", workers=2))
    for name, array in reference.items():
        np.testing.assert_array_equal(workers[name], array, err_msg=name)

    marker = tmp_path / "killed.marker"
    with caplog.at_level(logging.WARNING, logger="dpx"):
        killed = stored(generate(tmp_path, "killed", KilledBeam, {**SMALL, "marker": str(marker)},
                                 runner="multiprocess", workers=2))
    assert marker.exists(), "no worker was killed"
    assert "restart 1 of 3" in caplog.text and "exit code -9 (killed by a signal)" in caplog.text, caplog.text
    for name, array in reference.items():
        np.testing.assert_array_equal(killed[name], array, err_msg=name)


def test_a_scene_failing_to_initialise_in_a_worker_is_reported_with_sofas_message(tmp_path: Path) -> None:
    from dpx_sofa.testing_envs import UnmeshedBeam

    with pytest.raises(WorkerError, match="No topology component found") as error:
        generate(tmp_path, "unmeshed", UnmeshedBeam, runner="multiprocess", workers=2,
                 runner_kwargs={"max_restarts": 0})
    assert "UnmeshedBeam: SOFA could not initialise the scene" in str(error.value)
