"""The set-up phase of every pipeline: what a run would refuse, refused before it touches the disk.

A pipeline's ``prepare()`` calls one function of this module per component. It
resolves every name, builds the environment once from its ``env_kwargs`` (the
constructor only: a simulation is built by ``create()``, in the process that
steps it, so a remote runner's workers still build their own), builds the
network with its loss and optimiser on the CPU, reads the dataset it will train
on or extend, compares a resumed session with its record and estimates the
memory of a batch. Each refusal is a :class:`~dpx.core.config.ConfigError`
naming the parameter at fault. ``execute()`` creates the session folder only
afterwards; ``python -m dpx ... --dry-run`` runs the same checks and stops.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import ConfigError, DatabaseConfig, EnvironmentConfig, as_record
from dpx.core.session import Session, check_session_name, newer_sessions
from dpx.plugins import PluginError, get_plugins

log = logging.getLogger("dpx.preflight")

FieldSpecs = dict[str, tuple[np.dtype, tuple[int, ...]]]
#: Batch buffers a pipeline holds at once: one being stored or trained on while the next is made.
BATCH_COPIES = 2


@dataclass
class SetUp:
    """What ``prepare()`` checked (one line per component, for ``--dry-run``) and what the run needs."""

    checked: list[str] = field(default_factory=list)
    runner_class: type | None = None
    #: Sample fields known before the run (declared by the environment, or stored).
    fields: FieldSpecs = field(default_factory=dict)
    #: Whether ``fields`` holds every field (an environment may leave some to its first sample).
    fields_complete: bool = False
    #: Root seed of the environments' per-sample seeds.
    seed: int | None = None
    #: The checkpoint the run starts from, if any.
    checkpoint: Path | None = None
    #: The dataset the run reads (training on stored samples).
    dataset: Path | None = None
    #: A network backend already built and loaded (prediction).
    network: Any = None
    #: What the run reads from earlier sessions, one line each ("the dataset sessions/spring/dataset").
    reads: list[str] = field(default_factory=list)
    #: The parameters the environment declares (a :class:`~dpx.core.space.ParameterSpace`; empty when none).
    space: Any = ()

    def read(self, what: str, path: Path) -> None:
        """Note that the run reads ``path``, and warn when re-runs made newer sessions beside its session."""
        self.reads.append(f"{what} {path}")
        session = path.parent if path.name in ("dataset", "network") else path.parent.parent
        newer = newer_sessions(session)
        if newer:
            log.warning("dpx: this run reads %s %s, but newer sessions exist beside %s: %s; name one in the "
                        "config to use it", what, path, session, ", ".join(p.name for p in newer))

    def __str__(self) -> str:
        return "config OK: " + ", ".join(self.checked)


def check_session_location(owner: str, session_dir: str | os.PathLike, session_name: str) -> None:
    """``session_name`` is one plain folder and ``session_dir`` is not a file."""
    check_session_name(owner, session_name)
    folder = Path(session_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{owner}: session_dir={str(session_dir)!r} is a file, not a folder")


# -- environment ---------------------------------------------------------------------------


def check_environment(config: EnvironmentConfig, setup: SetUp) -> None:
    """Resolve the runner, environment and viewer; build the environment once to check ``env_kwargs``.

    Sets ``setup.runner_class`` and the fields the environment declares before
    ``create()`` (``init_database`` may need the simulation: then the fields
    are learned when the run starts).
    """
    from dpx.core.runners import InProcessRunner, RemoteRunner

    plugins = get_plugins()
    try:
        runner_class = plugins.load("runners", config.runner)
    except PluginError as exc:
        raise ConfigError(f"EnvironmentConfig: runner={config.runner!r}: {exc}") from exc
    check_options = getattr(runner_class, "check_options", None)  # runners need not subclass Runner
    if check_options is not None:
        check_options(config)
    try:
        cls = config.resolve_environment()
    except PluginError as exc:
        raise ConfigError(f"EnvironmentConfig: environment_class={config.environment_name!r}: {exc}") from exc
    if config.visualizer is not None:
        try:
            plugins.component("visualizers", config.visualizer)
        except PluginError as exc:
            raise ConfigError(f"EnvironmentConfig: visualizer={config.visualizer!r}: {exc}") from exc
    if issubclass(runner_class, InProcessRunner) and config.workers != 1:
        raise ConfigError(
            f"EnvironmentConfig: workers={config.workers} needs a runner with worker processes: set "
            f"runner='multiprocess' (--runner multiprocess); the {config.runner!r} runner runs one environment"
        )
    if issubclass(runner_class, RemoteRunner):
        config.portable()  # env_kwargs must travel to the workers
    environment = build_environment(config, cls)
    setup.space = environment.parameter_space
    setup.runner_class = runner_class
    setup.fields, setup.fields_complete = declared_fields(environment)
    setup.checked.append(f"environment {config.environment_name} -> {cls.__module__}.{cls.__qualname__}")
    setup.checked.append(f"runner {config.runner}" + (f" with {config.workers} workers" if config.workers > 1 else ""))


def build_environment(config: EnvironmentConfig, cls: type) -> Any:
    """The environment built from ``env_kwargs`` (constructor only), or a ConfigError naming the argument."""
    name = config.environment_name
    kwargs = config.env_kwargs
    try:
        signature: inspect.Signature | None = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        _check_arguments(name, signature, kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"EnvironmentConfig: {_culprit(exc, kwargs)} rejected by {name}: {exc}") from exc
    except MemoryError:
        raise ConfigError(
            f"EnvironmentConfig: env_kwargs={kwargs!r}: building {name} ran out of memory; lower its sizes"
        ) from None


def _check_arguments(name: str, signature: inspect.Signature, kwargs: dict[str, Any]) -> None:
    parameters = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    known = [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key, value in kwargs.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"EnvironmentConfig: env_kwargs.{key}={value!r} rejected by {name}: no such parameter{hint}; "
                f"its parameters: {', '.join(known) or 'none'}"
            )
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"EnvironmentConfig: env_kwargs={kwargs!r} rejected by {name}: {exc}") from None


def _culprit(exc: BaseException, kwargs: dict[str, Any]) -> str:
    """``env_kwargs.key=value`` when the environment's message starts with a parameter's name."""
    message = str(exc)
    for key, value in kwargs.items():
        if message.startswith(key) or f"{key!r}" in message:
            return f"env_kwargs.{key}={value!r}"
    return f"env_kwargs={kwargs!r}"


def declared_fields(environment: Any) -> tuple[FieldSpecs, bool]:
    """The fields an environment declares with dtype and shape before ``create()``, and whether that is all of them."""
    try:
        environment.init_database()
    except Exception:  # noqa: BLE001 - init_database may need the simulation; the run calls it after create()
        return {}, False
    declared = {
        name: (np.dtype(f.dtype), tuple(f.shape))
        for name, f in environment.fields.items()
        if f.dtype is not None and f.shape is not None
    }
    return declared, len(declared) == len(environment.fields)


# -- resuming --------------------------------------------------------------------------------


def check_extension(
    setup: SetUp, config: EnvironmentConfig, database_config: DatabaseConfig, dataset: Path | None, mode: str,
    allow_changes: bool,
) -> None:
    """For a run adding samples of ``mode`` to ``dataset`` (None: a new one): pick the seed, refuse other
    environment settings than those recorded, and fields other than those stored."""
    previous = same_mode = None
    extending = dataset is not None and (dataset / "dataset.json").exists()
    if extending and dataset.name == "dataset":
        session = Session(dataset.parent)
        previous, same_mode = session.last_producing_run(), session.last_producing_run(mode)
    setup.seed = resume_seed(previous, config.seed)
    check_same_environment(same_mode, config, setup.seed, allow_changes, dataset)
    if not extending:
        return
    stored, count = stored_fields(dataset, database_config, mode)
    check_same_fields(setup.fields, stored, dataset, mode)
    setup.checked.append(f"dataset {dataset} ({count} {mode} samples, extended)")
    setup.read("the dataset", dataset)
    if stored and not setup.fields_complete:
        setup.fields, setup.fields_complete = stored, True


def recorded_environment_seed(run: dict[str, Any]) -> int | None:
    """The root seed of the environments of a recorded run."""
    if "environment_seed" in run:
        return run["environment_seed"]
    environment = (run.get("configs") or {}).get("environment") or {}
    if run.get("pipeline") == "Training" and environment.get("seed") is not None:
        return environment["seed"]
    return run.get("seed")


def resume_seed(previous: dict[str, Any] | None, seed: int | None) -> int | None:
    """The config's seed, else the one the session's samples were made with (None: a fresh one)."""
    if seed is not None:
        return seed
    return recorded_environment_seed(previous) if previous else None


def check_same_environment(
    previous: dict[str, Any] | None, config: EnvironmentConfig, seed: int | None, allow_changes: bool,
    where: Path | None,
) -> None:
    """Refuse to add samples made by another environment, other ``env_kwargs`` or another seed
    to those of ``previous`` (the last run that made samples of this dataset's mode)."""
    if previous is None:
        return
    changes = environment_changes(previous, config, seed)
    if not changes:
        return
    if allow_changes:
        log.warning("dpx: %s: adding samples made with other settings (allow_changes): %s", where, "; ".join(changes))
        return
    raise ConfigError(
        f"EnvironmentConfig: {'; '.join(changes)}. The dataset {where} holds samples made with the recorded "
        "values and this run would add others to it: start a new session (pipeline.new_session=true or "
        "another pipeline.session_name), or pass --allow-changes (allow_changes=True) to mix them on purpose"
    )


def environment_changes(previous: dict[str, Any], config: EnvironmentConfig, seed: int | None) -> list[str]:
    """``"env_kwargs.dt: 0.1 recorded, 0.5 now"``, one entry per difference."""
    recorded = (previous.get("configs") or {}).get("environment") or {}
    now = _jsonable(as_record(config))
    changes = []
    if recorded.get("environment_class") != now["environment_class"]:
        changes.append(
            f"environment_class: {recorded.get('environment_class')!r} recorded, {now['environment_class']!r} now"
        )
    else:
        before = _with_defaults(config, recorded.get("env_kwargs") or {})
        after = _with_defaults(config, now["env_kwargs"])
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key, _UNSET), after.get(key, _UNSET)
            if old != new:
                changes.append(f"env_kwargs.{key}: {_show(old)} recorded, {_show(new)} now")
    recorded_seed = recorded_environment_seed(previous)
    if seed is not None and recorded_seed is not None and recorded_seed != seed:
        changes.append(f"seed: {recorded_seed} recorded, {seed} now")
    return changes


_UNSET = "(not set)"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _with_defaults(config: EnvironmentConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the constructor's defaults, as JSON values: leaving ``dt`` out equals giving its default."""
    try:
        bound = inspect.signature(config.resolve_environment()).bind_partial(**kwargs)
    except (TypeError, ValueError, PluginError):
        return _jsonable(kwargs)
    bound.apply_defaults()
    return _jsonable(dict(bound.arguments))


def _show(value: Any) -> str:
    return value if value is _UNSET else repr(value)


# -- data ------------------------------------------------------------------------------------


def check_storage(config: DatabaseConfig) -> None:
    try:
        get_plugins().load("storage_backends", config.storage)
    except PluginError as exc:
        raise ConfigError(f"DatabaseConfig: storage={config.storage!r}: {exc}") from exc


def stored_fields(dataset: Path, config: DatabaseConfig, mode: str) -> tuple[FieldSpecs, int]:
    """The fields and sample count of ``mode`` in a dataset, read-only (none when the mode is absent)."""
    from dpx.core.database import Database

    with Database(dataset, DatabaseConfig(storage=config.storage), readonly=True) as database:
        if mode not in database.modes:
            return {}, 0
        return database.fields(mode), database.count(mode)


def check_same_fields(produced: FieldSpecs, stored: FieldSpecs, dataset: Path, mode: str) -> None:
    """Samples added to a dataset must have the stored fields' dtypes and shapes."""
    for name, (dtype, shape) in produced.items():
        if name in stored and (np.dtype(stored[name][0]), tuple(stored[name][1])) != (np.dtype(dtype), tuple(shape)):
            raise ConfigError(
                f"EnvironmentConfig: field {name!r} would be {np.dtype(dtype)} {tuple(shape)}, but the {mode} samples "
                f"of {dataset} store it as {np.dtype(stored[name][0])} {tuple(stored[name][1])}; "
                "start a new session for these samples"
            )


def sample_bytes(fields: FieldSpecs) -> int:
    return sum(np.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in fields.values())


def check_batch_memory(owner: str, batch_size: int, fields: FieldSpecs) -> None:
    """Refuse a batch whose buffers cannot fit in the memory available now (estimated before allocating)."""
    per_sample = sample_bytes(fields)
    needed = BATCH_COPIES * batch_size * per_sample
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"{owner}: batch_size={batch_size} needs {_bytes(needed)} of memory ({BATCH_COPIES} batches of "
            f"{batch_size} samples of {_bytes(per_sample)}), more than the {_bytes(available)} available; "
            "lower batch_size (or the size of the samples)"
        )


def check_partitions(config: DatabaseConfig, fields: FieldSpecs) -> None:
    """A partition file must hold at least one sample of every field."""
    for name, (dtype, shape) in fields.items():
        size = np.dtype(dtype).itemsize * math.prod(shape)
        if size > config.max_file_bytes:
            raise ConfigError(
                f"DatabaseConfig: max_file_size={config.max_file_size:g} (gigabytes) is smaller than one sample of "
                f"field {name!r} ({_bytes(size)}): each file would hold one sample; raise it (default 0.25)"
            )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), else the physical memory, else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# -- training ---------------------------------------------------------------------------------


def check_stats_writers(names: list[str]) -> None:
    plugins = get_plugins()
    for name in names:
        try:
            plugins.load("stats_writers", name)
        except PluginError as exc:
            raise ConfigError(f"Training: stats={names!r}: {exc}") from exc


def check_same_network(config: Any, checkpoint: Path, backend_class: type) -> None:
    """A checkpoint continues only the architecture it holds (``network_class`` and ``network_kwargs``)."""
    saved = backend_class.read_extra(checkpoint).get("network_config") or {}
    now = _jsonable(as_record(config))
    if any(key in saved and saved[key] != now[key] for key in ("network_class", "network_kwargs")):
        raise ConfigError(
            f"NetworkConfig: {checkpoint} holds a {saved.get('network_class')} network with network_kwargs="
            f"{saved.get('network_kwargs')}, but network_class={now['network_class']!r} with network_kwargs="
            f"{now['network_kwargs']} is asked for; ask for the saved one, or start a new session"
        )


def check_network_fields(fields: FieldSpecs, input_fields: list[str], target_fields: list[str], source: str) -> None:
    for parameter, names in (("input_fields", input_fields), ("target_fields", target_fields)):
        missing = [name for name in names if name not in fields]
        if missing:
            raise ConfigError(
                f"NetworkConfig: {parameter}={names!r}: {source} has no field {missing[0]!r}; "
                f"its fields are {sorted(fields)}"
            )
