"""A trained network run inside SOFA's own loop: attach(root), connect_predictor, Sofa.Simulation.animate.

No dpx pipeline steps the scene here, as in a runSofa scene script: SOFA
animates, the controller forwards its time steps to the environment, and the
environment applies the network's displacement to the scene every sample.
The network is a tiny FC trained on a few samples of the tests' small beam.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx_sofa._sofa import sofa_installed
from dpx_sofa.beam import SofaBeam

pytestmark = pytest.mark.skipif(
    not sofa_installed(), reason="no SOFA build on PYTHONPATH (scripts/test.sh activates ../shared/sofa)"
)

#: The adapter tests' beam (16 nodes), two SOFA time steps per sample.
SMALL = {"grid_resolution": (4, 2, 2), "size": (4.0, 1.0, 1.0), "dt": 0.1, "animate_steps": 2}
FC = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]})


@pytest.fixture(scope="module")
def sofa() -> Any:
    import Sofa
    import Sofa.Simulation

    return Sofa


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session with 16 samples of the small beam and an FC network trained on them for one epoch."""
    folder = tmp_path_factory.mktemp("sofa_network")
    environment = dpx.EnvironmentConfig("sofa.beam", env_kwargs=SMALL, seed=0)
    dpx.DataGeneration(environment, dpx.DatabaseConfig(normalize=True), session_dir=str(folder), session_name="beam",
                       batch_nb=2, batch_size=8, progress=False).execute()
    dpx.Training(FC, dpx.DatabaseConfig(existing_dir=str(folder / "beam"), normalize=True), session_dir=str(folder),
                 session_name="beam", new_session=False, epoch_nb=1, batch_size=8, progress=False, seed=0).execute()
    return folder / "beam"


def attached(sofa: Any, env: SofaBeam, seed: int = 0) -> SofaBeam:
    """``env`` built into a root node as runSofa's createScene does, and initialised by SOFA."""
    root = sofa.Core.Node("root")
    env.attach(root, seed=seed)
    sofa.Simulation.init(root)
    return env


def test_sofas_animate_loop_runs_the_network_and_applies_its_displacement_each_sample(sofa: Any, trained: Path) -> None:
    from dpx.core.network import find_trained_network
    from dpx.core.predictor import load_network

    reference, _ = load_network(FC, find_trained_network(FC, trained))  # the same network, loaded apart
    env = attached(sofa, SofaBeam(**SMALL), seed=7)
    predictor = dpx.load_predictor(trained)
    env.connect_predictor(predictor)
    rest = env.read_positions(env.shown, "rest_position")
    shown = []
    for sample in range(3):
        for _ in range(SMALL["animate_steps"]):
            sofa.Simulation.animate(env.root, env.dt)
            env.controller.raise_failure()
        forces = env.sample["input"]  # this sample's load, read from the scene
        expected = reference.predict({"input": forces[None]})["ground_truth"][0]
        np.testing.assert_allclose(env.read_positions(env.shown), rest + expected, rtol=1e-6, atol=1e-9)
        assert predictor.calls == sample + 1
        shown.append(env.read_positions(env.shown))
    assert not np.allclose(shown[0], shown[1]), "each sample's new load gets its own prediction"
    assert not np.allclose(env.read_positions(env.state), env.read_positions(env.shown)), (
        "the network's beam is shown on its own grid; SOFA's beam stays the ground truth")
    env.close()


def test_a_network_of_other_shapes_is_refused_at_connect_time_naming_both(sofa: Any, trained: Path) -> None:
    predictor = dpx.load_predictor(trained)
    wider = {**SMALL, "grid_resolution": (5, 2, 2)}  # 20 nodes
    env = attached(sofa, SofaBeam(**wider))
    with pytest.raises(ConfigError, match=r"network .*network.pt was trained on 'input' samples of shape \(16, 3\), but "
                                          r"environment SofaBeam makes them of shape \(20, 3\)"):
        env.connect_predictor(predictor)
    env.close()

    # In a runSofa scene script createScene connects before SOFA initialises the scene: the fields are
    # declared during SOFA's init, checked then, and the error is raised by the first raise_failure().
    root = sofa.Core.Node("root")
    early = SofaBeam(**wider)
    early.attach(root, seed=0)
    early.connect_predictor(predictor)
    sofa.Simulation.init(root)
    with pytest.raises(ConfigError, match=r"shape \(16, 3\), but environment SofaBeam makes them of shape \(20, 3\)"):
        early.controller.raise_failure()
    early.close()


def test_an_error_in_the_handler_running_the_network_surfaces_through_raise_failure(sofa: Any, trained: Path) -> None:
    class Truncated(SofaBeam):
        """Hands the network one node too few."""

        def read_sample(self) -> None:
            super().read_sample()
            self.sample["input"] = self.sample["input"][:-1]

    env = attached(sofa, Truncated(**{**SMALL, "animate_steps": 1}))
    env.connect_predictor(dpx.load_predictor(trained))
    sofa.Simulation.animate(env.root, env.dt)  # SOFA logs the handler's exception and goes on
    with pytest.raises(ValueError, match=r"trained on 'input' samples of shape \(16, 3\), but was asked to predict on "
                                         r"one of shape \(15, 3\)"):
        env.controller.raise_failure()
    env.controller.raise_failure()  # raised once
    env.close()
