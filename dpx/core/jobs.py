"""Pipelines built from TOML files, and session descriptions: what the CLI runs.

A job file has one table per config object, named as in the Python API::

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

import os
from pathlib import Path
from typing import Any

from dpx.core.config import DatabaseConfig, EnvironmentConfig, check_sections, from_mapping, read_toml
from dpx.core.generation import DataGeneration


def build_generation(path: str | os.PathLike, overrides: list[str], progress: bool | None = None) -> DataGeneration:
    data = read_toml(path, overrides)
    check_sections(data, ("environment", "database", "pipeline"), str(path))
    if "environment" not in data:
        raise KeyError(f"{path}: missing table [environment] (with at least environment_class = \"...\")")
    environment = from_mapping(EnvironmentConfig, data["environment"], f"{path} [environment]")
    database = from_mapping(DatabaseConfig, data.get("database", {}), f"{path} [database]")
    pipeline = dict(data.get("pipeline", {}))
    pipeline.update(environment_config=environment, database_config=database, progress=progress)
    return from_mapping(DataGeneration, pipeline, f"{path} [pipeline]")


def describe_session(path: str | os.PathLike) -> dict[str, Any]:
    """What ``python -m dpx info`` shows, as JSON-friendly data."""
    from dpx.core.database import dataset_path, open_database
    from dpx.core.session import Session

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no session at {path}")
    dataset_dir = dataset_path(path)
    session = Session(dataset_dir.parent if dataset_dir.name == "dataset" else path)
    runs = [
        f"{run['pipeline']} {run['started']} seed={run.get('seed')}" for run in session.read_record().get("runs", [])
    ]
    dataset: dict[str, Any] = {}
    if (dataset_dir / "dataset.json").exists() or (dataset_dir / "dataset.json.prev").exists():
        with open_database(dataset_dir) as database:
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
    return {"path": str(session.path), "runs": runs, "dataset": dataset, "networks": networks}
