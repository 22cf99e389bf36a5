"""A trained network beside an environment, outside any pipeline.

Where the simulator owns the loop (a ``runSofa`` scene, a game engine), no
dpx pipeline steps the environment: the scene script loads the network and
connects it, and the environment's :meth:`~dpx.core.environment.Environment.get_prediction`
asks it directly::

    predictor = dpx.load_predictor("sessions/beam")        # a session, or its network/ folder
    env.connect_predictor(predictor)                        # shapes checked against the network's
    env.get_prediction(input=forces)["prediction"]

The Prediction pipeline answers its environments' requests with the same
:class:`Predictor`, and the Training pipeline with the network it is training
(:class:`TrainingPredictor`). Importing this module imports no AI framework;
loading does (through the backend named in the network's config).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import ConfigError, NetworkConfig
from dpx.core.network import (
    FieldSpecs,
    find_trained_network,
    load_backend,
    saved_fields,
    saved_normalization,
    with_saved_kwargs,
)

log = logging.getLogger("dpx.prediction")

#: What a network loaded without a NetworkConfig takes from the one it was trained with.
SAVED_SETTINGS = ("network_class", "data_transformation", "data_type", "input_fields", "target_fields")


def load_network(network_config: NetworkConfig, path: Path) -> tuple[Any, FieldSpecs]:
    """Build the backend of the checkpoint ``path`` (its ``network_kwargs`` unless the config gives some) and load it.

    Returns the backend and the fields the network was trained on.
    """
    backend_class = load_backend(network_config)
    extra = backend_class.read_extra(path)
    epoch = extra.get("epoch")
    if isinstance(epoch, int) and epoch < 0:
        log.warning("dpx: %s was saved before its training finished a first epoch", path)
    specs = saved_fields(extra, path)
    config = dataclasses.replace(with_saved_kwargs(network_config, extra), require_training_stuff=False)
    backend = backend_class(config, specs, saved_normalization(extra, path))
    backend.load(path, training=False)
    return backend, specs


def check_network_shapes(
    network: NetworkConfig, specs: FieldSpecs, checkpoint: Path, environment: str,
    shapes: Mapping[str, tuple[int, ...] | None], complete: bool = True,
) -> None:
    """The environment's fields against those the network was trained on, both shapes named.

    ``complete=False`` when ``shapes`` may lack fields the environment makes
    later (declared before ``create()``): only the fields present are checked.
    """
    for name in network.input_fields + network.target_fields:
        if name not in shapes:
            if name in network.target_fields or not complete:
                continue  # the ground truth is optional when predicting
            raise ConfigError(
                f"the network {checkpoint} takes field {name!r}, which environment {environment} does not "
                f"make (its fields: {sorted(shapes)})"
            )
        expected, shape = tuple(specs[name][1]), shapes[name]
        if shape is not None and tuple(shape) != expected:
            raise ConfigError(
                f"the network {checkpoint} was trained on {name!r} samples of shape {expected}, but environment "
                f"{environment} makes them of shape {tuple(shape)}: give the environment the parameters of "
                "the training (env_kwargs), or train a network for these shapes"
            )


class Predictor:
    """A loaded network answering one sample at a time, as ``Environment.get_prediction`` asks.

    ``predictor({"input": array})`` returns ``{"prediction": array}``, the
    target field de-normalised. Each input's shape is checked against the
    network's (a tuple comparison, next to a network call), so a wrong
    array is a one-line error naming both shapes rather than the framework's
    matrix error. ``calls`` and ``seconds`` count the predictions and the time
    spent in them: a simulator running the network in its own loop reports them.
    """

    def __init__(self, backend: Any, fields: FieldSpecs, checkpoint: Path, network_config: NetworkConfig) -> None:
        self.backend, self.fields, self.checkpoint, self.network_config = backend, fields, checkpoint, network_config
        self.input_fields = tuple(network_config.input_fields)
        self._input_shapes = {name: tuple(fields[name][1]) for name in self.input_fields if name in fields}
        self.calls, self.seconds = 0, 0.0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        batch = {}
        for name in self.input_fields:
            value = inputs.get(name)
            if value is None:
                raise ValueError(f"the network {self.checkpoint} takes field {name!r}; the request gave {sorted(inputs)}")
            value = np.asarray(value)
            expected = self._input_shapes.get(name)
            if expected is not None and value.shape != expected:
                raise ValueError(
                    f"the network {self.checkpoint} was trained on {name!r} samples of shape {expected}, "
                    f"but was asked to predict on one of shape {value.shape}"
                )
            batch[name] = value[None]
        (prediction,) = self.backend.predict(batch).values()
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return {"prediction": prediction[0]}

    def check_fields(self, environment: str, shapes: Mapping[str, tuple[int, ...] | None]) -> None:
        """Raise :class:`ConfigError` naming both shapes when a field of ``shapes`` differs from the network's.

        Fields missing from ``shapes`` or without a shape yet are not checked.
        """
        check_network_shapes(self.network_config, self.fields, self.checkpoint, environment, shapes, complete=False)

    def __repr__(self) -> str:
        return f"<Predictor {self.checkpoint}>"


class TrainingPredictor:
    """The network a Training is training, answering its environments' ``get_prediction``.

    The environments produce in another thread (and, through it, in worker
    processes) while the pipeline trains, so a prediction and a training step
    take turns on :attr:`lock`: a request sees the weights between two steps,
    never half an update. The backend's ``predict`` runs in eval mode with no
    autograd graph and draws no random number, and the next step puts the
    network back in train mode, so training goes on as if nobody had asked.
    Until :meth:`serve` hands it the network, a request raises a
    :class:`ConfigError` saying why there is none yet (:attr:`unavailable`).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unavailable = "the network is not built yet"
        self._predictor: Predictor | None = None

    def serve(self, predictor: Predictor) -> None:
        """Answer the requests with ``predictor`` (its backend is the one the pipeline trains under :attr:`lock`)."""
        self._predictor = predictor

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        predictor = self._predictor
        if predictor is None:
            raise ConfigError(f"get_prediction() in Training: {self.unavailable}")
        with self.lock:
            return predictor(inputs)


def load_predictor(session_or_network_dir: str | Path, network_config: NetworkConfig | None = None) -> Predictor:
    """Load the trained network of a session (or of its ``network/`` folder) to run beside an environment.

    ``network_config`` picks the backend, the saved epoch (``which_network``)
    and the network's name; without one, the backend is ``torch`` and the
    architecture, fields and transformation are the ones saved with the
    network. The checkpoint is read safely (no code runs from it).
    """
    config = network_config or NetworkConfig()
    path = find_trained_network(dataclasses.replace(config, network_dir=None), session_or_network_dir)
    if network_config is None:
        config = saved_config(config, path)
    backend, fields = load_network(config, path)
    return Predictor(backend, fields, path, config)


def saved_config(config: NetworkConfig, path: Path) -> NetworkConfig:
    """``config`` with :data:`SAVED_SETTINGS` from the checkpoint's record of its training config.

    A checkpoint is untrusted: a class saved as an import path is not
    imported from it; the user names it in a NetworkConfig instead.
    """
    record = load_backend(config).read_extra(path).get("network_config")
    if not isinstance(record, dict):
        return config
    saved = {name: record[name] for name in SAVED_SETTINGS if name in record}
    for name, value in saved.items():
        if isinstance(value, str) and ":" in value:
            raise ConfigError(
                f"{path} was trained with {name}={value!r}, an import path a checkpoint cannot name safely; "
                f"load it with a NetworkConfig({name}=...) naming that class"
            )
    try:
        return dataclasses.replace(config, **saved)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: the network's saved config is unreadable ({exc}); load it with a NetworkConfig") from exc
