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
``predict_with_dropout(inputs, passes, seed=None) -> {target field: array}`` (optional)
    ``passes`` predictions of each input with the network's dropout on, stacked
    on a first axis; active learning's ``scoring="mc_dropout"`` needs it. A
    network without dropout raises :class:`ConfigError` saying how to add some.
``save(path, extra)`` / ``load(path, training) -> extra``
    A checkpoint: weights, optimiser state and the JSON-able ``extra`` the
    pipeline keeps (epoch, RNG states, normalisation). Loading never runs
    arbitrary code. The classmethod ``read_extra(path)`` returns ``extra``
    without building a network. A backend loading files of its own kind (an
    inference-only one running exported networks) may define the classmethod
    ``find_checkpoint(location, name, which, label) -> Path`` that
    :func:`find_checkpoint` is otherwise.
``learning_rate``, ``nb_parameters``, ``parameter_histograms()``
``check(config, fields=None)`` (classmethod, optional)
    Build every training component of ``config`` (network with
    ``network_kwargs`` when ``fields`` are known, loss with ``loss_kwargs``,
    optimiser with ``optimizer_kwargs``) and raise :class:`ConfigError` naming
    the parameter and key at fault; writes nothing. See :func:`check_network`.

A checkpoint is untrusted input: a file that cannot be read raises
:class:`CheckpointError` (a one-line message naming the file), never an
arbitrary exception.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
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


class CheckpointError(ValueError):
    """A saved network cannot be read: empty, truncated, not a checkpoint, or holding forbidden content."""


class NoNetworkError(FileNotFoundError):
    """No trained network where a pipeline looks for one."""


def load_backend(config: NetworkConfig) -> type:
    from dpx.plugins import get_plugins

    return get_plugins().load("network_backends", config.backend)


def check_network(config: NetworkConfig, fields: FieldSpecs | None = None) -> type:
    """Resolve the backend of ``config`` and build every component it trains with; return the backend class.

    The backend's optional ``check`` classmethod builds the loss with
    ``loss_kwargs``, the optimiser with ``optimizer_kwargs`` and, when
    ``fields`` (``{name: (dtype, shape)}``) are known, the network with
    ``network_kwargs`` and a probe of its shapes. A typo is a
    :class:`ConfigError` naming the parameter and the key; nothing is written,
    so callers run it before creating a session folder. The pipelines build
    the backend again with the data's normalisation and seed: building is
    cheap next to training, and an instance built here holds neither.
    """
    backend_class = load_backend(config)
    check = getattr(backend_class, "check", None)
    if check is not None:
        check(config, fields)
    return backend_class


def check_kwargs(
    cls: Any, kwargs: dict[str, Any], parameter: str, what: str, exclude: tuple[str, ...] = (), positional: int = 0
) -> None:
    """Refuse a key of the user's ``parameter`` that ``cls`` does not take, naming the closest valid one.

    dpx passes the first ``positional`` arguments and the keywords ``exclude``
    itself (e.g. the parameters, the shapes). Classes taking ``**kwargs``
    accept every key.
    """
    accepted = _keyword_names(cls, set(exclude), positional)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(sorted(accepted)) or "none"
            raise ConfigError(f"NetworkConfig: {parameter} has unknown key {key!r} for {what}{hint}; valid keys: {valid}")


def build_with_kwargs(cls: Any, kwargs: dict[str, Any], parameter: str, what: str, *args: Any, **fixed: Any) -> Any:
    """``cls(*args, **fixed, **kwargs)``, where ``kwargs`` come from the user's ``parameter``.

    Unknown keys are refused first (:func:`check_kwargs`); a ``TypeError`` or
    ``ValueError`` of the constructor is reported against ``parameter`` too:
    the user reads which setting to fix, not a traceback.
    """
    check_kwargs(cls, kwargs, parameter, what, tuple(fixed), len(args))
    try:
        return cls(*args, **fixed, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"NetworkConfig: {parameter}={dict(kwargs)!r} rejected by {what}: {exc}") from exc


def _keyword_names(cls: Any, exclude: set[str], positional: int) -> list[str] | None:
    """The keywords ``cls`` accepts past its first ``positional`` arguments, or None when it takes
    ``**kwargs`` or hides its signature."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters[positional:] if p.kind in keywords and p.name not in exclude]


def find_trained_network(config: NetworkConfig, session_path: str | Path) -> Path:
    """The checkpoint a Prediction of ``session_path`` loads: ``config.network_dir``'s, else the session's own.

    Creates nothing; a missing network raises :class:`NoNetworkError` saying
    where it looked and to train first.
    """
    own = config.network_dir is None
    location = Path(session_path) if own else Path(config.network_dir)
    # a backend reading other files than dpx's checkpoints (an exported network) says how to find them
    find = getattr(load_backend(config), "find_checkpoint", find_checkpoint)
    try:
        return find(location, config.network_name, config.which_network, "session" if own else "network_dir")
    except FileNotFoundError as exc:
        raise NoNetworkError(
            f"no trained network to load: {exc}; train first (dpx train), "
            "or set network_dir to a session that holds one"
        ) from None


def checkpoint_path(network_dir: Path, name: str, epoch: int | str | None = None) -> Path:
    """``network.pt`` for the last network, ``network_007.pt`` for epoch 7, ``network_best.pt`` for ``"best"``."""
    if epoch is None:
        return network_dir / f"{name}.pt"
    return network_dir / (f"{name}_{epoch}.pt" if isinstance(epoch, str) else f"{name}_{epoch:03d}.pt")


def find_checkpoint(location: str | Path, name: str, which: int | str = -1, label: str = "network_dir") -> Path:
    """The saved network ``which`` (-1: the last, ``"best"``: the best) of a session or network folder
    (``label`` names it in errors)."""
    folder = Path(location)
    if (folder / "network").is_dir():
        folder = folder / "network"
    if not folder.is_dir():
        raise FileNotFoundError(f"{label}={str(location)!r}: no such folder")
    if which == -1:
        path = checkpoint_path(folder, name)
        if path.exists():
            return path
    else:
        path = checkpoint_path(folder, name, which)
        if path.exists():
            return path
    saved = sorted(p.name for p in folder.glob("*.pt"))
    wanted = {-1: "the last network", "best": "the best network"}.get(which, f"epoch {which}")
    raise FileNotFoundError(
        f"{label}={str(location)!r}: {wanted} named {name!r} is not saved there; saved: {saved or 'nothing'}"
    )


def normalization_from(moments: dict[str, Any], fields: list[str]) -> Normalization:
    """``(mean, std)`` per field from the dataset's statistics; std 0 becomes 1."""
    result = {}
    for name in fields:
        if name in moments:
            std = np.where(moments[name].std > 0, moments[name].std, 1.0)
            result[name] = (moments[name].mean.astype(np.float64), std.astype(np.float64))
    return result


def saved_fields(extra: dict[str, Any], path: Path) -> FieldSpecs:
    """The fields a checkpoint's network was trained on, checked: a checkpoint is untrusted input."""
    try:
        specs = {str(name): (np.dtype(f["dtype"]), tuple(int(n) for n in f["shape"])) for name, f in extra["fields"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's field description is unreadable ({exc!r})") from None
    for name, (dtype, shape) in specs.items():
        if dtype.kind not in "biuf" or any(n < 0 for n in shape):
            raise CheckpointError(f"{path}: the checkpoint describes field {name!r} as {dtype} {shape}")
    return specs


def saved_normalization(extra: dict[str, Any], path: Path) -> Normalization:
    """The ``(mean, std)`` per field a checkpoint's network was trained with."""
    try:
        return {
            str(name): (np.asarray(v["mean"], np.float64), np.asarray(v["std"], np.float64))
            for name, v in (extra.get("normalization") or {}).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's normalisation is unreadable ({exc!r})") from None


def with_saved_kwargs(config: NetworkConfig, extra: dict[str, Any]) -> NetworkConfig:
    """``config`` with the checkpoint's ``network_kwargs`` when it gives none.

    A saved network knows how it was built; a config that loads it (to
    predict, or to train further from ``network_dir``) need not repeat it.
    """
    saved = (extra.get("network_config") or {}).get("network_kwargs")
    if config.network_kwargs or not isinstance(saved, dict) or not saved:
        return config
    return dataclasses.replace(config, network_kwargs=dict(saved))
