"""Configuration objects of the pipelines, with DeepPhysX's parameter names.

Configs are plain dataclasses checked when built: a wrong type or value raises
a :class:`ConfigError` naming the config, the parameter and the value. The same
classes read the sections of a TOML file (:func:`from_mapping`), where an
unknown key is an error with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dpx.core import renames

DATABASE_MODES = ("training", "validation", "prediction")
#: Stream number of each mode in the per-sample seeding (see dpx.core.producer).
MODE_STREAMS = {mode: index for index, mode in enumerate(DATABASE_MODES)}


#: Smallest ``DatabaseConfig.max_file_size`` (gigabytes): below it partitions hold a sample or two each.
MIN_FILE_SIZE = 1e-6


class ConfigError(ValueError):
    """A configuration parameter has a wrong type or value."""


def _check_types(config: Any) -> None:
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = hints[f.name]
        if not _matches(value, expected):
            raise ConfigError(
                f"{type(config).__name__}: {f.name}={value!r} is a {type(value).__name__}, "
                f"expected {_describe_type(expected)}"
            )


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if origin is Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is type:
        return isinstance(value, type)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


def _describe_type(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(option) for option in typing.get_args(expected))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(expected))
    if expected is type(None):
        return "None"
    if origin is type:
        return "a class"
    return getattr(origin or expected, "__name__", str(expected))


def _require(config: Any, condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{type(config).__name__}: {name}={getattr(config, name)!r}: {message}")


@renames.deepphysx_names
@dataclass
class EnvironmentConfig:
    """How to build and run the simulations.

    ``environment_class`` is an :class:`~dpx.Environment` subclass or a
    registered name such as ``"toy.spring"``; ``env_kwargs`` go to its
    constructor. ``visualizer`` names a viewer (e.g. ``"vedo"``) built with
    ``visualizer_kwargs``; ``runner_kwargs`` are the runner's options (for
    ``multiprocess``, :class:`dpx.core.multiprocess.MultiprocessOptions`).
    ``seed`` is the root of the per-sample seeds (random when ``None``, and
    recorded in the session either way). ``non_finite`` says what to do with a
    sample holding NaN or inf: ``"error"`` stops the run, ``"drop"`` steps again
    and counts the dropped sample. ``load_samples`` feeds stored samples to the
    environments (``only_first_epoch``: in the first epoch only) in Training
    and Prediction, as DeepPhysX does: see :mod:`dpx.core.feeding`.

    Before a run creates its session, dpx builds one environment in its own
    process to check ``env_kwargs`` (the constructor and ``init_database``
    only; ``create`` builds simulations where they run, in the workers of a
    remote runner): keep ``__init__`` cheap and free of side effects.
    """

    environment_class: type | str
    runner: str = "inprocess"
    workers: int = 1
    simulations_per_step: int = 1
    max_wrong_samples_per_step: int = 10
    load_samples: bool = False
    only_first_epoch: bool = True
    always_produce: bool = False
    visualizer: str | None = None
    record_wrong_samples: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    visualizer_kwargs: dict[str, Any] = field(default_factory=dict)
    runner_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    non_finite: Literal["error", "drop"] = "error"

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self, self.workers >= 1, "workers", "must be at least 1")
        _require(self, self.simulations_per_step >= 1, "simulations_per_step", "must be at least 1")
        _require(self, self.max_wrong_samples_per_step >= 0, "max_wrong_samples_per_step", "must be 0 or more")
        _require(self, self.seed is None or self.seed >= 0, "seed", "must be a non-negative integer")
        if isinstance(self.environment_class, type):
            from dpx.core.environment import Environment

            _require(
                self,
                issubclass(self.environment_class, Environment),
                "environment_class",
                "must be a subclass of dpx.Environment or a registered name such as 'toy.mean'",
            )
        self.env_kwargs = dict(self.env_kwargs)

    def resolve_environment(self) -> type:
        """The environment class, imported through the plugins when given by name."""
        if isinstance(self.environment_class, type):
            return self.environment_class
        from dpx.core.environment import Environment
        from dpx.plugins import Component, PluginError, UnknownComponentError, get_plugins

        try:
            cls = get_plugins().load("environments", self.environment_class)
        except UnknownComponentError:
            if ":" not in self.environment_class:
                raise
            try:  # not registered, but an import path ("package.module:Class")
                cls = Component(self.environment_class).load()
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"environment {self.environment_class!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise PluginError(f"environment {self.environment_class!r} resolves to {cls!r}, not a dpx.Environment subclass")
        return cls

    @property
    def environment_name(self) -> str:
        cls = self.environment_class
        return cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"

    def portable(self) -> dict[str, Any]:
        """This config as JSON values, to build the same environments in another process.

        The environment class travels as its import path; ``env_kwargs`` must be
        JSON values (tuples arrive as lists).
        """
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["environment_class"] = self.environment_name
        record["visualizer"] = None
        record["visualizer_kwargs"] = {}
        for key, value in self.env_kwargs.items():
            try:
                json.dumps(value, allow_nan=True)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"EnvironmentConfig: env_kwargs[{key!r}]={value!r} cannot be sent to worker processes: "
                    "only JSON values (numbers, strings, booleans, lists, dicts) can"
                ) from None
        return json.loads(json.dumps(record))


@dataclass
class DatabaseConfig:
    """Where samples are stored and how they are read back.

    ``max_file_size`` bounds each partition file, in gigabytes as in DeepPhysX.
    ``existing_dir`` opens the dataset of another session (a session folder or
    its ``dataset/`` folder) to extend it or train on it.
    """

    existing_dir: str | None = None
    mode: Literal["training", "validation", "prediction"] | None = None
    max_file_size: float = 0.25
    shuffle: bool = True
    normalize: bool = False
    recompute_normalization: bool = False
    storage: str = "memmap"

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self, self.max_file_size > 0, "max_file_size", "must be positive (gigabytes)")
        _require(
            self, self.max_file_size >= MIN_FILE_SIZE, "max_file_size",
            f"partition files this small hold one sample each; give gigabytes, at least {MIN_FILE_SIZE:g} (1 kB), "
            "default 0.25",
        )

    @property
    def max_file_bytes(self) -> int:
        return max(1, int(self.max_file_size * 1e9))


@renames.deepphysx_names
@dataclass
class NetworkConfig:
    """The network, its optimisation and its data transformation.

    ``network_class`` is an architecture name offered by the backend (``"fc"``,
    ``"unet"``) or a network class of that backend; ``network_kwargs`` go to
    its constructor (e.g. ``{"dim_layers": [90, 64, 3]}`` for ``fc``).
    ``loss`` and ``optimizer`` are names (``"mse"``, ``"adam"``) or classes;
    ``data_transformation`` names a registered transform. ``network_dir`` is a
    session (or its ``network/`` folder) to load a saved network from, and
    ``which_network`` picks the saved epoch (``-1``: the last one, ``"best"``:
    the one with the lowest validation loss, else training loss).
    ``input_fields`` feed the network, ``target_fields`` are what it predicts.
    ``lr_scheduler`` names a learning-rate schedule of the backend (torch:
    ``"step"``, ``"cosine"``, ``"plateau"`` on the validation loss,
    ``"onecycle"``...) built with ``lr_scheduler_kwargs``; ``gradient_clipping``
    caps the gradients' global norm before each step.
    """

    network_class: type | str = "fc"
    backend: str = "torch"
    optimization: type | str | None = None
    data_transformation: type | str | None = None
    network_dir: str | None = None
    network_name: str = "network"
    which_network: int | Literal["best"] = -1
    save_each_epoch: bool = False
    data_type: Literal["float32", "float64"] = "float32"
    lr: float = 1e-3
    loss: type | str = "mse"
    optimizer: type | str = "adam"
    require_training_stuff: bool = True
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    input_fields: list[str] = field(default_factory=lambda: ["input"])
    target_fields: list[str] = field(default_factory=lambda: ["ground_truth"])
    device: str | None = None
    lr_scheduler: str | None = None
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    gradient_clipping: float | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self, self.lr > 0, "lr", "must be positive")
        _require(self, self.gradient_clipping is None or self.gradient_clipping > 0, "gradient_clipping",
                 "must be a positive maximum gradient norm (or None)")
        _require(self, len(self.input_fields) >= 1, "input_fields", "name at least one field")
        _require(self, len(self.target_fields) >= 1, "target_fields", "name at least one field")
        self.input_fields, self.target_fields = list(self.input_fields), list(self.target_fields)


def from_mapping(target: Any, data: Mapping[str, Any], where: str, exclude: Iterable[str] = ()) -> Any:
    """Call ``target`` (a config class or pipeline) with a TOML section's parameters.

    Unknown keys are refused with the closest valid name; ``where`` (e.g.
    ``"spring.toml [database]"``) prefixes every error.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of parameters, got {data!r}")
    if dataclasses.is_dataclass(target):
        known = {f.name for f in dataclasses.fields(target)}
    else:
        known = set(inspect.signature(target).parameters) - {"self"}
    known -= set(exclude)
    known |= set(renames.RENAMED.get(getattr(target, "__name__", ""), ()))  # the constructor translates them
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            hint = f": {renames.hint(target.__name__, key)}." if renames.hint(target.__name__, key) else hint
            raise ConfigError(f"{where}: unknown parameter {key!r}{hint} Valid: {', '.join(sorted(known))}")
    try:
        return target(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def as_record(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config, classes written as import paths."""
    record = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, type):
            value = f"{value.__module__}:{value.__qualname__}"
        if f.name == "runner_kwargs" and "authkey" in value:
            value = {**value, "authkey": "<not recorded>"}  # a key is never written to disk
        record[f.name] = value
    return record


def read_toml(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a pipeline's TOML file and apply ``section.key=value`` overrides.

    Override values are parsed as TOML values (``batch_nb=10``,
    ``env_kwargs.n_points=100``, ``runner="multiprocess"``); a value that is not
    valid TOML is taken as a string, so ``environment.runner=multiprocess`` works.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        table = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a table")
        table[leaf] = value
    return data


def check_sections(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse unknown top-level tables, naming the closest valid one."""
    allowed = list(allowed)
    for section in data:
        if section not in allowed:
            close = difflib.get_close_matches(section, allowed, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"{where}: unknown section [{section}]{hint} Valid: {', '.join(allowed)}")
