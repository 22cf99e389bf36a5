"""What the core asks of an AI framework: the network backend contract.

The core never imports an AI framework. Pipelines talk to the backend named in
``NetworkConfig(backend=...)`` (a component of the ``dpx_network_backends``
hook) through this small interface, with NumPy arrays on both sides:

``Backend(config, fields, normalization, seed=None)``
    Build the network for ``fields`` (``{name: (dtype, shape)}`` of the
    dataset) and, when ``config.require_training_stuff``, its loss and
    optimiser; ``seed`` seeds the framework so initial weights are
    reproducible. ``normalization`` maps field names to ``(mean, std)`` arrays
    (one value per index of the field's last axis) to apply on the way in and
    undo on the way out. Shape mismatches between network and fields are
    reported here, naming the field and both shapes.
``train_batch(batch) -> {"loss": float, ...}``
    One optimisation step; extra values (from the loss transform) are logged.
``validation_loss(batch) -> float``
``predict(inputs) -> {target field: array}``
    Inputs are a batch of the input fields; outputs are de-normalised.
``save(path, extra)`` / ``load(path, training) -> extra``
    A checkpoint: weights, optimiser state and the JSON-able ``extra`` the
    pipeline keeps (epoch, RNG states, normalisation). Loading never runs
    arbitrary code. The classmethod ``read_extra(path)`` returns ``extra``
    without building a network.
``learning_rate``, ``nb_parameters``, ``parameter_histograms()``
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dpx.core.config import ConfigError, NetworkConfig

FieldSpecs = dict[str, tuple[np.dtype, tuple[int, ...]]]
Normalization = dict[str, tuple[np.ndarray, np.ndarray]]


class NetworkBackend(Protocol):
    nb_parameters: int

    def __init__(
        self, config: NetworkConfig, fields: FieldSpecs, normalization: Normalization, seed: int | None = None
    ) -> None: ...

    def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, float]: ...

    def validation_loss(self, batch: dict[str, np.ndarray]) -> float: ...

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def save(self, path: Path, extra: dict[str, Any]) -> None: ...

    def load(self, path: Path, training: bool) -> dict[str, Any]: ...

    @classmethod
    def read_extra(cls, path: Path) -> dict[str, Any]: ...

    @property
    def learning_rate(self) -> float: ...

    def parameter_histograms(self) -> dict[str, np.ndarray]: ...


def load_backend(config: NetworkConfig) -> type:
    from dpx.plugins import get_plugins

    return get_plugins().load("network_backends", config.backend)


def check_network(config: NetworkConfig, fields: FieldSpecs | None = None) -> None:
    """Build the backend's network, loss and optimiser once on the CPU, before any session exists.

    A wrong name or keyword argument becomes a :class:`ConfigError` naming
    ``network_kwargs``, ``loss_kwargs`` or ``optimizer_kwargs``. Without
    ``fields`` (shapes unknown until the environments run) only the backend
    name is checked.
    """
    from dpx.plugins import PluginError

    try:
        backend_class = load_backend(config)
    except PluginError as exc:
        raise ConfigError(f"NetworkConfig: backend={config.backend!r}: {exc}") from exc
    if not fields:
        return
    try:
        backend_class(dataclasses.replace(config, device="cpu"), fields, {})
    except ConfigError:
        raise
    except (TypeError, ValueError, ImportError, AttributeError, PluginError) as exc:
        raise ConfigError(f"NetworkConfig: {_network_culprit(config, exc)}: {exc}") from exc


def _network_culprit(config: NetworkConfig, exc: BaseException) -> str:
    """The parameter a failed build most likely comes from, found in the error's message."""
    message = str(exc)
    for parameter in ("loss_kwargs", "optimizer_kwargs", "network_kwargs"):
        kwargs = getattr(config, parameter)
        for key, value in kwargs.items():
            if f"'{key}'" in message or message.startswith(key):
                return f"{parameter}.{key}={value!r}"
    for parameter in ("network_class", "loss", "optimizer", "optimization", "data_transformation"):
        value = getattr(config, parameter)
        name = value.__name__ if isinstance(value, type) else value
        if isinstance(name, str) and name and name in message:
            return f"{parameter}={value!r}"
    return "network_kwargs, loss_kwargs or optimizer_kwargs"


def checkpoint_path(network_dir: Path, name: str, epoch: int | None = None) -> Path:
    """``network.pt`` for the last network, ``network_007.pt`` for epoch 7."""
    return network_dir / (f"{name}.pt" if epoch is None else f"{name}_{epoch:03d}.pt")


def find_checkpoint(location: str | Path, name: str, which: int = -1) -> Path:
    """The saved network ``which`` (-1: the last) of a session or network folder."""
    folder = Path(location)
    if (folder / "network").is_dir():
        folder = folder / "network"
    if not folder.is_dir():
        raise FileNotFoundError(f"network_dir={str(location)!r}: no such folder")
    if which == -1:
        path = checkpoint_path(folder, name)
        if path.exists():
            return path
    else:
        path = checkpoint_path(folder, name, which)
        if path.exists():
            return path
    saved = sorted(p.name for p in folder.glob("*.pt"))
    wanted = "the last network" if which == -1 else f"epoch {which}"
    raise FileNotFoundError(
        f"network_dir={str(location)!r}: {wanted} named {name!r} is not saved there; saved: {saved or 'nothing'}"
    )


def normalization_from(moments: dict[str, Any], fields: list[str]) -> Normalization:
    """``(mean, std)`` per field from the dataset's statistics; std 0 becomes 1."""
    result = {}
    for name in fields:
        if name in moments:
            std = np.where(moments[name].std > 0, moments[name].std, 1.0)
            result[name] = (moments[name].mean.astype(np.float64), std.astype(np.float64))
    return result
