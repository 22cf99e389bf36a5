"""dpx-mlflow: every dpx run this plugin joins is an MLflow run.

Built only on dpx's lifecycle hooks: installing the distribution is the whole
set-up. This module is what the ``dpx`` entry point names, so it imports
nothing but ``dpx``: mlflow is imported by :mod:`dpx_mlflow.tracking` when the
first run starts, never by ``python -m dpx plugins``.

Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server, a database),
otherwise MLflow's file store in ``mlruns/`` beside the sessions
(``<session_dir>/mlruns``), under the experiment ``MLFLOW_EXPERIMENT_NAME``
(default ``dpx``). MLflow's usage telemetry stays off unless
``MLFLOW_DISABLE_TELEMETRY=false`` is set. Keep a run out with ``disable_plugins=["mlflow"]`` (or
``DPX_DISABLE_PLUGINS=mlflow`` for every run).
"""

import dpx

DPX_PLUGIN_API = 1


@dpx.hookimpl
def dpx_run_start(run):
    from dpx_mlflow.tracking import start

    start(run)


@dpx.hookimpl
def dpx_epoch_end(run, epoch, metrics):
    from dpx_mlflow.tracking import log_epoch

    log_epoch(run, epoch, metrics)


@dpx.hookimpl
def dpx_checkpoint_saved(run, path, best):
    from dpx_mlflow.tracking import note_checkpoint

    note_checkpoint(run, path, best)


@dpx.hookimpl
def dpx_run_end(run, outcome, summary):
    from dpx_mlflow.tracking import end

    end(run, outcome, summary)
