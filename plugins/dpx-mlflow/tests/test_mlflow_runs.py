"""dpx runs read back as MLflow runs with the real mlflow package."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

import dpx
import dpx.plugins
from dpx.core.stats import read_csv_curves
from dpx.testing import assert_light_import


@pytest.fixture
def mlflow_joins(monkeypatch):
    """The plugin joining every run, as it does once installed (the test suite keeps it out elsewhere)."""
    for variable in ("DPX_DISABLE_PLUGINS", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(variable, raising=False)
    dpx.plugins.reset_plugins()
    yield
    dpx.plugins.reset_plugins()


def generate(folder, **options):
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    for mode, batch_nb in (("training", 4), ("validation", 1)):
        summary = dpx.DataGeneration(config, dpx.DatabaseConfig(mode=mode, normalize=True), session_dir=str(folder),
                                     session_name="data", batch_nb=batch_nb, batch_size=32, progress=False,
                                     new_session=False, **options).execute()
    return summary.session_path


def run_id_of(session_path):
    return json.loads((session_path / "session.json").read_text())["runs"][-1]["run_id"]


def mlflow_run(uri, session_path):
    """The MLflow run of the last dpx run of ``session_path``, found by the dpx run id it is tagged with."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpx")
    (found,) = client.search_runs([experiment.experiment_id], f"tags.`dpx.run_id` = '{run_id_of(session_path)}'")
    return client, found


def test_a_training_is_an_mlflow_run_with_the_curves_of_curves_csv(tmp_path, mlflow_joins):
    dataset = generate(tmp_path)
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2)
    summary = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                           session_dir=str(tmp_path), session_name="net", epoch_nb=3, batch_size=32,
                           progress=False, seed=0).execute()
    assert (tmp_path / "mlruns").is_dir(), "the file store lies beside the sessions"
    client, run = mlflow_run((tmp_path / "mlruns").as_uri(), summary.session_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dpx.pipeline"] == "Training"
    assert run.data.params["network.lr"] == "0.01" and run.data.params["pipeline.epoch_nb"] == "3"
    assert run.data.params["network.network_kwargs.hidden"] == "[16]"
    curves = read_csv_curves(summary.session_path / "stats")
    for tag in ("loss/epoch", "loss/validation"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert history == curves[tag], tag
    rates = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "learning_rate"))
    assert rates == [(0, 1e-2), (1, 1e-2), (2, 1e-2)]
    assert run.data.metrics["summary/epochs"] == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "session.json" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "network")] == ["network/network_best.pt"]
    stored = client.download_artifacts(run.info.run_id, "session.json", str(tmp_path))
    assert json.loads(open(stored).read()) == json.loads((summary.session_path / "session.json").read_text())


def test_generation_runs_join_and_a_disabled_run_leaves_no_mlflow_run(tmp_path, mlflow_joins):
    session = generate(tmp_path)
    client, run = mlflow_run((tmp_path / "mlruns").as_uri(), session)
    assert run.data.tags["dpx.pipeline"] == "DataGeneration" and run.data.metrics["summary/total"] == 32
    before = len(client.search_runs([client.get_experiment_by_name("dpx").experiment_id]))
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    dpx.DataGeneration(config, session_dir=str(tmp_path), session_name="quiet", batch_nb=1, batch_size=4,
                       progress=False, disable_plugins=["mlflow"]).execute()
    assert len(client.search_runs([client.get_experiment_by_name("dpx").experiment_id])) == before
    assert "mlflow" not in json.loads((tmp_path / "quiet" / "session.json").read_text())["runs"][-1]["joined_plugins"]


def test_the_tracking_uri_and_experiment_come_from_mlflow_s_own_variables(tmp_path, mlflow_joins, monkeypatch):
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "beam study")
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": 5}, seed=0)
    summary = dpx.DataGeneration(config, session_dir=str(tmp_path / "sessions"), session_name="data", batch_nb=1,
                                 batch_size=4, progress=False).execute()
    assert not (tmp_path / "sessions" / "mlruns").exists()
    client = MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("beam study").experiment_id])
    assert [run.data.tags["dpx.run_id"] for run in runs] == [run_id_of(summary.session_path)]


def test_a_failed_run_is_a_failed_mlflow_run_saying_why(tmp_path, mlflow_joins):
    dataset = generate(tmp_path)
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2)

    class Breaks:
        @dpx.hookimpl
        def dpx_epoch_end(self, epoch):
            raise RuntimeError("the plugin broke")

    dpx.plugins.get_plugins().register(Breaks(), name="breaks")
    training = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset)), session_dir=str(tmp_path),
                            session_name="net", epoch_nb=2, batch_size=32, progress=False)
    with pytest.raises(RuntimeError, match="the plugin broke"):
        training.execute()
    _, run = mlflow_run((tmp_path / "mlruns").as_uri(), training.session_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["dpx.outcome"] == "failed: RuntimeError: the plugin broke"


def test_a_tracking_store_lost_mid_run_costs_the_record_not_the_training(tmp_path, mlflow_joins, caplog):
    dataset = generate(tmp_path)
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16]}, lr=1e-2)

    class LosesTheStore:
        @dpx.hookimpl(tryfirst=True)
        def dpx_epoch_end(self, epoch):
            if epoch == 0:  # the store goes away under the run, as a server or a disk would
                shutil.rmtree(tmp_path / "mlruns")

    dpx.plugins.get_plugins().register(LosesTheStore(), name="loses_the_store")
    with caplog.at_level(logging.WARNING, logger="dpx.mlflow"):
        summary = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset)), session_dir=str(tmp_path),
                               session_name="net", epoch_nb=3, batch_size=32, progress=False).execute()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dpx.mlflow"]
    assert len(warnings) == 1 and "could not log epoch 0's metrics" in warnings[0], warnings
    assert "this run goes on without MLflow tracking" in warnings[0]
    assert summary.epochs == 3
    assert len(read_csv_curves(summary.session_path / "stats")["loss/epoch"]) == 3
    assert json.loads((summary.session_path / "session.json").read_text())["runs"][-1]["outcome"] == "completed"


def test_listing_plugins_imports_no_mlflow():
    assert_light_import("dpx_mlflow", heavy=("mlflow", "torch", "tensorboard"))


def test_mlflow_usage_telemetry_is_off_unless_the_user_turns_it_on(tmp_path):
    """Outside a test runner and CI, MLflow reports usage to a remote service; dpx does not opt users in."""
    probe = ("import dpx_mlflow.tracking\n"
             "from mlflow.telemetry.utils import is_telemetry_disabled\n"
             "print(is_telemetry_disabled())")
    # what MLflow reads as "in CI or a test": any of these keeps its telemetry off whatever dpx does
    markers = {"PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
               "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
               "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
               "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    quiet = {k: v for k, v in os.environ.items() if k not in markers}

    def disabled(**extra: str) -> str:
        return subprocess.run([sys.executable, "-c", probe], env={**quiet, **extra}, cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert disabled() == "True"
    assert disabled(MLFLOW_DISABLE_TELEMETRY="false") == "False"
