"""Lifecycle hooks: installed plugins take part in runs, can be kept out, and declare their API."""

from __future__ import annotations

import json
import types
import warnings

import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.hookspecs import PLUGIN_API, deprecated_argument, hookspec
from dpx.plugins import Plugins


class Recorder:
    """A lifecycle plugin of a few lines: it writes down every event it receives."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @dpx.hookimpl
    def dpx_run_start(self, run):
        self.events.append(("start", run.pipeline, run.run_id))

    @dpx.hookimpl
    def dpx_batch_stored(self, mode, sample_ids, batch):
        self.events.append(("batch", mode, sample_ids.tolist(), sorted(batch)))

    @dpx.hookimpl
    def dpx_run_end(self, run, outcome, summary, error):
        self.events.append(("end", outcome, summary is not None, type(error).__name__ if error else None))


def generation(tmp_path, **options):
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 4}, seed=0)
    return dpx.DataGeneration(config, session_dir=str(tmp_path), session_name="data", batch_nb=3, batch_size=4,
                              progress=False, **options)


def last_run(session_path):
    return json.loads((session_path / "session.json").read_text())["runs"][-1]


def test_an_installed_plugin_joins_a_generation_run_and_sees_each_stored_batch(tmp_path, dpx_plugin):
    recorder = Recorder()
    dpx_plugin(recorder, name="recorder")
    summary = generation(tmp_path).execute()
    run = last_run(summary.session_path)
    assert recorder.events[0] == ("start", "DataGeneration", run["run_id"])
    assert [event[2] for event in recorder.events[1:-1]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert all(event[1] == "training" and event[3] == ["ground_truth", "input"] for event in recorder.events[1:-1])
    assert recorder.events[-1] == ("end", "completed", True, None)
    assert "recorder" in run["joined_plugins"]
    assert "recorder" in (summary.session_path / "info.txt").read_text()


def test_disable_plugins_keeps_a_plugin_out_of_one_run(tmp_path, dpx_plugin):
    recorder = Recorder()
    dpx_plugin(recorder, name="recorder")
    summary = generation(tmp_path, disable_plugins=["recorder"]).execute()
    assert recorder.events == []
    assert "recorder" not in last_run(summary.session_path)["joined_plugins"]
    generation(tmp_path).execute()
    assert recorder.events[0][0] == "start", "disabled for one run only"


def test_disable_plugins_naming_no_lifecycle_plugin_is_refused_before_anything_is_written(tmp_path, dpx_plugin):
    dpx_plugin(Recorder(), name="recorder")
    with pytest.raises(ConfigError, match=r"disable_plugins names 'recordr'.*recorder"):
        generation(tmp_path, disable_plugins=["recordr"]).prepare()
    assert not (tmp_path / "data").exists()


def test_a_failing_run_tells_the_plugins_its_error(tmp_path, dpx_plugin):
    recorder = Recorder()

    class Failing:
        @dpx.hookimpl
        def dpx_batch_stored(self, sample_ids):
            if sample_ids[0] == 4:
                raise RuntimeError("plugin refuses batch 2")

    dpx_plugin(recorder, name="recorder")
    dpx_plugin(Failing(), name="failing")
    with pytest.raises(RuntimeError, match="plugin refuses batch 2"):
        generation(tmp_path).execute()
    assert recorder.events[-1] == ("end", "failed: RuntimeError: plugin refuses batch 2", False, "RuntimeError")
    assert last_run(tmp_path / "data")["outcome"].startswith("failed: RuntimeError")


def test_a_plugin_written_for_another_api_is_an_error_row_not_registered():
    plugin = types.ModuleType("future_plugin")
    plugin.DPX_PLUGIN_API = PLUGIN_API + 1

    @dpx.hookimpl
    def dpx_run_start(run):
        raise AssertionError("never called")

    plugin.dpx_run_start = dpx_run_start
    plugins = Plugins(entry_points=False, strict=False)
    info = plugins.register(plugin, name="future")
    assert info.status == "error"
    assert f"written for dpx plugin API {PLUGIN_API + 1}, this dpx has {PLUGIN_API}" in info.error
    assert not plugins.manager.hook.dpx_run_start.get_hookimpls()


def test_a_misspelt_lifecycle_hook_is_an_error_row_naming_the_right_one():
    class Typo:
        @dpx.hookimpl
        def dpx_epoch_ends(self, loss):
            pass

    info = Plugins(entry_points=False, strict=False).register(Typo(), name="typo")
    assert info.status == "error" and "did you mean 'dpx_epoch_end'" in info.error


def test_a_deprecated_hook_argument_warns_the_plugins_still_taking_it():
    @hookspec(warn_on_impl_args={"values": deprecated_argument("values", "metrics")})
    def dpx_future_step_end(run, values, metrics):
        """A hook whose ``values`` argument is on its way out."""

    specs = types.ModuleType("future_specs")
    specs.dpx_future_step_end = dpx_future_step_end

    class Old:
        @dpx.hookimpl
        def dpx_future_step_end(self, values):
            pass

    class New:
        @dpx.hookimpl
        def dpx_future_step_end(self, metrics):
            pass

    plugins = Plugins(entry_points=False, strict=True)
    plugins.manager.add_hookspecs(specs)
    with pytest.warns(DeprecationWarning, match=r"'values' is deprecated.*take 'metrics' instead"):
        plugins.register(Old(), name="old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.register(New(), name="new")


def test_hooks_no_plugin_implements_are_not_called(dpx_plugin):
    from dpx.core.lifecycle import Lifecycle

    lifecycle = Lifecycle("Training")
    assert lifecycle.hook("dpx_training_step_end") is None

    class Steps:
        @dpx.hookimpl
        def dpx_training_step_end(self, step):
            pass

    dpx_plugin(Steps(), name="steps")
    assert Lifecycle("Training").hook("dpx_training_step_end") is not None
    assert Lifecycle("Training", disable_plugins=["steps"]).hook("dpx_training_step_end") is None
