"""Pipelines built from TOML files, and session descriptions: what the CLI runs.

A job file has one table per config object, named as in the Python API
(``[environment]``, ``[database]``, ``[network]``) and ``[pipeline]`` for the
pipeline's own arguments::

    [environment]            # EnvironmentConfig
    environment_class = "toy.spring"
    [environment.env_kwargs]
    dt = 0.01
    [database]               # DatabaseConfig
    normalize = true
    [pipeline]               # the pipeline's own arguments
    session_name = "spring"
    batch_nb = 100
    batch_size = 32
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from dpx.core.config import (
    ConfigError,
    DatabaseConfig,
    EnvironmentConfig,
    NetworkConfig,
    check_sections,
    from_mapping,
    read_toml,
)
from dpx.core.preflight import SetUp

SECTIONS = {
    "generate": ("environment", "database", "pipeline"),
    "train": ("environment", "database", "network", "pipeline"),
    "predict": ("environment", "database", "network", "pipeline"),
    "learn": ("environment", "database", "network", "pipeline"),
}
REQUIRED = {"generate": ("environment",), "train": ("network",), "predict": ("environment", "network"),
            "learn": ("environment",)}


def build_job(kind: str, path: str | os.PathLike, overrides: list[str], progress: bool | None = None) -> Any:
    """The pipeline (DataGeneration, Training or Prediction) a job file describes."""
    from dpx.core.generation import DataGeneration
    from dpx.core.learning import ActiveLearning
    from dpx.core.prediction import Prediction
    from dpx.core.training import Training

    data = read_toml(path, overrides)
    check_sections(data, SECTIONS[kind], str(path))
    for section in REQUIRED[kind]:
        if section not in data:
            raise KeyError(f"{path}: missing table [{section}]")
    configs = {
        "environment_config": EnvironmentConfig,
        "database_config": DatabaseConfig,
        "network_config": NetworkConfig,
    }
    pipeline = dict(data.get("pipeline", {}))
    for argument, cls in configs.items():
        section = argument.removesuffix("_config")
        if section in data:
            pipeline[argument] = from_mapping(cls, data[section], f"{path} [{section}]")
    pipeline["progress"] = progress
    pipeline_class = {"generate": DataGeneration, "train": Training, "predict": Prediction, "learn": ActiveLearning}[kind]
    return from_mapping(pipeline_class, pipeline, f"{path} [pipeline]")


#: The TOML table of each configuration object, to place an error raised by the API in the job file.
SECTION_OF = {
    "EnvironmentConfig": "environment",
    "DatabaseConfig": "database",
    "NetworkConfig": "network",
    "DataGeneration": "pipeline",
    "Training": "pipeline",
    "Prediction": "pipeline",
    "ActiveLearning": "pipeline",
}


def prepare_job(pipeline: Any, path: str | os.PathLike) -> SetUp:
    """Run the pipeline's set-up checks; a refusal names the file and table of the parameter at fault."""
    try:
        return pipeline.prepare()
    except ConfigError as exc:
        owner, sep, rest = str(exc).partition(": ")
        if sep and owner in SECTION_OF:
            raise ConfigError(f"{path} [{SECTION_OF[owner]}] {rest}") from exc
        raise ConfigError(f"{path}: {exc}") from exc


def describe_session(path: str | os.PathLike, storage: str = "memmap") -> dict[str, Any]:
    """What ``python -m dpx info`` shows, as JSON-friendly data; ``storage`` is the backend the
    dataset was written with (``deepphysx`` for a DeepPhysX dataset, with the dpx-deepphysx plugin)."""
    from dpx.core.database import dataset_path, open_database
    from dpx.core.parameters import describe as describe_parameters
    from dpx.core.session import Session
    from dpx.core.storage import StorageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no session at {path}")
    if not path.is_dir():
        raise NotADirectoryError(
            f"{path} is a file; `info` describes a session folder (e.g. sessions/spring). "
            f"To check a job file, run it with --dry-run: python -m dpx generate|train|predict {path} --dry-run"
        )
    dataset_dir = dataset_path(path)
    session = Session(dataset_dir.parent if dataset_dir.name == "dataset" else path)
    runs = [_describe_run(run) for run in session.read_record().get("runs", [])]
    dataset: dict[str, Any] = {}
    space: list[dict[str, Any]] = []
    if (dataset_dir / "dataset.json").exists() or (dataset_dir / "dataset.json.prev").exists():
        try:
            database = open_database(dataset_dir, storage)
        except StorageError as exc:
            hint = _deepphysx_hint(dataset_dir, path) if storage == "memmap" else None
            if hint is None:
                raise
            raise StorageError(hint) from exc
        with database:
            space = database.parameter_space.describe()
            normalization = database.normalization
            for mode in database.modes:
                fields = {}
                for name, (dtype, shape) in database.fields(mode).items():
                    fields[name] = {"dtype": str(dtype), "shape": list(shape)}
                    if mode == "training" and name in normalization:
                        fields[name].update(mean=normalization[name].mean.tolist(), std=normalization[name].std.tolist())
                dataset[mode] = {"count": database.count(mode), "fields": fields}
    network_dir = session.path / "network"
    networks = sorted(p.name for p in network_dir.iterdir()) if network_dir.is_dir() else []
    parameters = describe_parameters(dataset_dir) if dataset_dir.is_dir() else {}
    return {"path": str(session.path), "storage": storage, "runs": runs, "dataset": dataset, "parameters": parameters,
            "parameter_space": space, "networks": networks}


def _deepphysx_hint(dataset_dir: Path, path: Path) -> str | None:
    """When dpx's own storage cannot read ``dataset_dir``: say so if it is a DeepPhysX dataset, whose
    ``dataset.json`` lists SQLite partitions (``NAME.db`` beside it) by mode."""
    from dpx.core.storage import INDEX, MAX_INDEX_BYTES, open_file

    try:
        with open(open_file(dataset_dir, (INDEX,), os.O_RDONLY), "rb") as file:
            index = json.loads(file.read(MAX_INDEX_BYTES))
        partitions = index["partitions"]
        names = [name for names in partitions.values() for name in names]
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None

    def is_partition(name: Any) -> bool:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return False
        try:
            return stat.S_ISREG(os.lstat(dataset_dir / f"{name}.db").st_mode)
        except (OSError, ValueError):
            return False

    if not any(is_partition(name) for name in names):
        return None
    return (f"{dataset_dir} holds a DeepPhysX dataset ({INDEX} lists SQLite partitions), not a dpx one: "
            f"python -m dpx info {path} --storage deepphysx (with the dpx-deepphysx plugin)")


def _describe_run(run: dict[str, Any]) -> str:
    """``DataGeneration 2026-01-01T10:00:00 seed=0 mode=training: +320 samples (320 stored), completed``."""
    text = f"{run['pipeline']} {run['started']} seed={run.get('seed')}"
    if run.get("mode"):
        text += f" mode={run['mode']}"
    if isinstance(run.get("sampler"), dict) and run["sampler"].get("name") != "random":
        text += f" sampler={run['sampler'].get('name')}"
    counts = []
    if "produced" in run:
        counts.append(f"+{run['produced']} samples ({run.get('samples')} stored)")
    elif "steps" in run:
        counts.append(f"{run['steps']} steps, {run.get('samples', 0)} samples")
    outcome = run.get("outcome")
    if outcome == "started":
        outcome = "started, never finished (killed?)"
    return text + (": " + ", ".join([*counts, outcome]) if outcome else "")
