"""Visual objects: described by environments, routed to whichever viewer is configured."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import dpx
from dpx.core.visual import VisualFactory


def test_factory_records_objects_and_updates_as_snapshots():
    factory = VisualFactory()
    positions = np.zeros((4, 3))
    cloud = factory.add_points(positions, color="red")
    label = factory.add_text("t = 0")
    positions += 1  # the simulation changes its buffer: the description must not
    assert factory.scene()[cloud]["positions"].sum() == 0
    factory.update(cloud, positions=positions)
    factory.update(label, text="t = 1")
    updates = factory.take_updates()
    assert updates[cloud]["positions"].sum() == 12 and updates[label] == {"text": "t = 1"}
    assert factory.take_updates() == {}
    with pytest.raises(KeyError, match=r"no visual object 7; this environment's objects are \[0, 1\]"):
        factory.update(7, positions=positions)
    with pytest.raises(ValueError, match=r"points objects have no field \['cells'\]"):
        factory.update(cloud, cells=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="a mesh object needs cells"):
        factory.add_mesh(positions, None)


def test_environments_feed_the_configured_viewer(tmp_path, dpx_plugin):
    from dpx.testing_envs import Moving, Recorder

    module = type(sys)("recorder_plugin")
    module.dpx_visualizers = dpx.hookimpl(lambda: {"recorder": "dpx.testing_envs:Recorder"})
    dpx_plugin(module, name="recorder")
    config = dpx.EnvironmentConfig(Moving, seed=0, visualizer="recorder", visualizer_kwargs={"offscreen": True})
    dpx.DataGeneration(config, session_dir=str(tmp_path), batch_nb=2, batch_size=3, progress=False).execute()
    viewer = Recorder.instances[-1]
    assert viewer.options == {"offscreen": True} and viewer.closed
    assert viewer.scenes[0][0]["kind"] == "points"
    stored = dpx.open_database(tmp_path / "generation").read()["input"]
    assert len(viewer.updates) == 6
    np.testing.assert_array_equal(viewer.updates[-1][1][0]["positions"], stored[-1])


def test_no_viewer_means_no_visualisation_calls(tmp_path):
    class Strict(dpx.Environment):
        def init_visualization(self):
            raise AssertionError("init_visualization must not run without a viewer")

        def step(self):
            self.set_training_data(input=np.zeros((2, 3)), ground_truth=np.zeros(1))

    dpx.DataGeneration(dpx.EnvironmentConfig(Strict), session_dir=str(tmp_path), progress=False).execute()
