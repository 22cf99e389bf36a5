"""The MLflow side of the plugin: one MLflow run per dpx run, through ``MlflowClient``.

The client API (not ``mlflow.start_run``) keeps no global active run, so a
training running inside a user's own MLflow run, or two pipelines in one
process, never mix their runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

# dpx records runs on this machine by default: it does not opt its users into MLflow's usage
# telemetry (reports to mlflow-telemetry.io). Set MLFLOW_DISABLE_TELEMETRY=false to allow it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

log = logging.getLogger("dpx.mlflow")

#: Parameters and metrics per request (MLflow's own limits are 100 and 1000).
BATCH = 100
#: MLflow refuses longer parameter values.
MAX_PARAM_LENGTH = 6000
DEFAULT_EXPERIMENT = "dpx"
STATUS = {"completed": RunStatus.FINISHED, "interrupted": RunStatus.KILLED}


@dataclasses.dataclass
class Tracked:
    """What the plugin keeps in ``run.state["mlflow"]`` between a run's hooks."""

    client: MlflowClient
    run_id: str
    tracking_uri: str
    best: Path | None = None
    last: Path | None = None


def tracking_uri(session_path: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the file store ``mlruns/`` beside the session."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # MLflow 3 keeps its file store in maintenance mode behind this switch; it is the one
    # store that needs no database, which is what an embedded default is for
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(session_path).resolve().parent / "mlruns").as_uri()


def start(run: Any) -> None:
    uri = tracking_uri(run.session_path)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
    tags = {"dpx.pipeline": run.pipeline, "dpx.session": str(run.session_path), "dpx.run_id": run.run_id,
            "dpx.plugins": ", ".join(f"{n} {v}" for n, v in run.plugins.items())}
    created = client.create_run(experiment_id, run_name=f"{run.session_path.name} {run.pipeline}", tags=tags)
    tracked = Tracked(client, created.info.run_id, uri)
    run.state["mlflow"] = tracked
    params = [Param(key, value) for key, value in flatten({**run.configs, "seed": run.seed}).items()]
    for first in range(0, len(params), BATCH):
        client.log_batch(tracked.run_id, params=params[first : first + BATCH])


@contextlib.contextmanager
def tolerated(run: Any, what: str):
    """Past its start, a run outlives its tracking: a store that fails (a server gone, a full disk)
    costs the MLflow record, with a warning, never the training it records."""
    try:
        yield
    except Exception as exc:  # MLflow's stores raise more than MlflowException (the file store: plain Exception)
        tracked: Tracked | None = run.state.pop("mlflow", None)
        if tracked is not None:
            reason = (str(exc).splitlines() or [""])[0][:300]
            log.warning("dpx-mlflow: could not %s in %s (%s: %s); this run goes on without MLflow tracking",
                        what, tracked.tracking_uri, type(exc).__name__, reason)


def log_epoch(run: Any, epoch: int, metrics: dict[str, float | None]) -> None:
    tracked: Tracked | None = run.state.get("mlflow")
    if tracked is None:
        return
    now = int(time.time() * 1000)
    values = [Metric(key, float(value), now, epoch) for key, value in metrics.items()
              if value is not None and math.isfinite(value)]
    if values:
        with tolerated(run, f"log epoch {epoch}'s metrics"):
            tracked.client.log_batch(tracked.run_id, metrics=values)


def note_checkpoint(run: Any, path: Path, best: bool) -> None:
    tracked: Tracked | None = run.state.get("mlflow")
    if tracked is not None:
        if best:
            tracked.best = Path(path)
        else:
            tracked.last = Path(path)


def end(run: Any, outcome: str, summary: Any) -> None:
    """Attach ``session.json`` and the best network (else the last), then close the MLflow run."""
    tracked: Tracked | None = run.state.get("mlflow")
    if tracked is None:
        return
    with tolerated(run, "close the run"):
        _close(tracked, run, outcome, summary)
    run.state.pop("mlflow", None)


def _close(tracked: Tracked, run: Any, outcome: str, summary: Any) -> None:
    client = tracked.client
    try:
        record = run.session_path / "session.json"
        if record.exists():
            client.log_artifact(tracked.run_id, str(record))
        network = tracked.best or tracked.last
        if network is not None and network.exists():
            client.log_artifact(tracked.run_id, str(network), artifact_path="network")
        if dataclasses.is_dataclass(summary):
            fields = {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)}
            numbers = {f"summary/{key}": value for key, value in fields.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
            if numbers:
                now = int(time.time() * 1000)
                client.log_batch(tracked.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()])
        if outcome not in STATUS:
            client.set_tag(tracked.run_id, "dpx.outcome", outcome[:MAX_PARAM_LENGTH])
    finally:
        client.set_terminated(tracked.run_id, RunStatus.to_string(STATUS.get(outcome, RunStatus.FAILED)))


def flatten(configs: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"network": {"lr": 0.001}}`` -> ``{"network.lr": "0.001"}``; values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in configs.items():
        name = prefix + re.sub(r"[^\w\-. /]", "_", str(key))  # the characters MLflow accepts in a key
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif value is not None:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat
