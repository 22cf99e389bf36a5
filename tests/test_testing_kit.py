"""The plugin authors' kit catches the runner bugs it is there to catch."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import dpx
from dpx.core.runners import InProcessRunner
from dpx.testing import RunnerChecks


class OffByOneRunner(InProcessRunner):
    """Makes sample ``i + 1`` when asked for sample ``i``: a chunking bug."""

    def produce(self, sample_ids, stream=0, pinned=False):
        return super().produce(np.asarray(sample_ids) + 1, stream, pinned)


class ForgetfulViewerRunner(InProcessRunner):
    """Never passes the viewer on to the environment."""

    def start(self):
        fields = super().start()
        self.producer.env._connect(viewer=None)
        return fields


@pytest.fixture
def register_runner(dpx_plugin, monkeypatch):
    module = types.ModuleType("dpx_kit_runners")
    module.OffByOneRunner, module.ForgetfulViewerRunner = OffByOneRunner, ForgetfulViewerRunner
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def register(name: str, class_name: str) -> None:
        plugin = types.ModuleType(f"plugin_{name}")
        plugin.dpx_runners = dpx.hookimpl(lambda: {name: f"dpx_kit_runners:{class_name}"})
        dpx_plugin(plugin, name=f"plugin-{name}")

    return register


def test_same_dataset_catches_a_runner_producing_the_wrong_samples(tmp_path, register_runner):
    register_runner("offbyone", "OffByOneRunner")
    with pytest.raises(AssertionError, match=r"field 'input' differs from the in-process dataset"):
        RunnerChecks("offbyone", tmp_path, workers=1).same_dataset()


def test_visuals_catch_a_runner_that_drops_the_viewer(tmp_path, register_runner):
    register_runner("forgetful", "ForgetfulViewerRunner")
    with pytest.raises(AssertionError, match=r"forgetful: updates reached the viewer from environments set\(\)"):
        RunnerChecks("forgetful", tmp_path, workers=1).visuals()


def test_the_in_process_runner_passes_its_own_checks(tmp_path):
    checks = RunnerChecks("inprocess", tmp_path, workers=1)
    checks.same_dataset()
    checks.refused_samples()
    checks.visuals()
