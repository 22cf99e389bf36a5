"""The torch network backend: what dpx's pipelines call (see ``dpx.core.network``)."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpx.core.config import ConfigError, NetworkConfig
from dpx.core.network import CheckpointError, build_with_kwargs, check_kwargs
from dpx.core.training import NonFiniteLossError
from dpx_torch.network import Network, default_device
from dpx_torch.optimization import Optimization, build_loss, build_optimizer, build_scheduler
from dpx_torch.transformation import DataTransformation

ARCHITECTURES = {"fc": "dpx_torch.fc:FC", "unet": "dpx_torch.unet:UNet"}
FORMAT = "dpx-torch-checkpoint"
#: The layers ``predict_with_dropout`` switches on: the base of every torch dropout (Dropout, Dropout2d...).
DROPOUTS = torch.nn.modules.dropout._DropoutNd
#: What every checkpoint holds, and the type of each entry: checked before use, a checkpoint being untrusted.
CHECKPOINT_ENTRIES = {
    "architecture": str, "network_kwargs": dict, "shapes": dict, "state_dict": dict, "torch_rng": torch.Tensor, "extra": dict,
}


def resolve_network_class(network_class: str | type) -> type:
    """``"fc"``, ``"unet"``, an import path ``"package.module:Class"`` or a class."""
    if isinstance(network_class, type):
        return network_class
    from dpx.plugins import Component

    path = ARCHITECTURES.get(network_class, network_class)
    if ":" not in path:
        raise ConfigError(
            f"NetworkConfig: unknown network_class {network_class!r}; architectures are "
            f"{', '.join(ARCHITECTURES)}, or give a class or 'package.module:Class'"
        )
    return _load(Component(path), "network_class")


def _load(component: Any, parameter: str) -> type:
    """Import the class a user named by path: a typo is their mistake, reported against ``parameter``."""
    try:
        return component.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"NetworkConfig: {parameter}={component.path!r} cannot be imported: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type (some carry no message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_fields(config: NetworkConfig, fields: dict[str, Any] | None) -> None:
    if len(config.input_fields) != 1 or len(config.target_fields) != 1:
        raise ConfigError(
            "the torch backend trains one input field on one target field; "
            f"got input_fields={config.input_fields}, target_fields={config.target_fields}"
        )
    if fields is not None:
        missing = [name for name in config.input_fields + config.target_fields if name not in fields]
        if missing:
            raise ConfigError(f"NetworkConfig names field(s) {missing} that the data does not have; fields are {sorted(fields)}")


def _resolve_class(choice: str | type | None, default: type, parameter: str, registry: str | None = None) -> type:
    """A class given directly, by import path, or by a name registered in ``registry``."""
    if choice is None:
        return default
    if isinstance(choice, type):
        return choice
    from dpx.plugins import Component, get_plugins

    if ":" in choice:
        return _load(Component(choice), parameter)
    if registry is not None:
        return get_plugins().load(registry, choice)
    raise ConfigError(f"NetworkConfig: {parameter}={choice!r} must be a class or 'package.module:Class'")


class TorchBackend:
    """Build, train, run, save and load one torch network for one input and one target field."""

    def __init__(
        self,
        config: NetworkConfig,
        fields: dict[str, tuple[np.dtype, tuple[int, ...]]],
        normalization: dict[str, tuple[np.ndarray, np.ndarray]],
        seed: int | None = None,
    ) -> None:
        _check_fields(config, fields)
        self.config = config
        self.input_field, self.target_field = config.input_fields[0], config.target_fields[0]
        self.input_shape, self.target_shape = tuple(fields[self.input_field][1]), tuple(fields[self.target_field][1])
        self.dtype = getattr(torch, config.data_type)
        self.device = torch.device(config.device) if config.device else default_device()
        self.architecture = config.network_class if isinstance(config.network_class, str) else (
            f"{config.network_class.__module__}:{config.network_class.__qualname__}"
        )
        network_class = resolve_network_class(config.network_class)
        if seed is not None:
            torch.manual_seed(seed % 2**63)
        self.network: torch.nn.Module = build_with_kwargs(
            network_class, config.network_kwargs, "network_kwargs", f"network {self.architecture}",
            input_shape=self.input_shape, output_shape=self.target_shape,
        )
        self.network.to(device=self.device, dtype=self.dtype)
        self.normalization = {
            name: tuple(torch.as_tensor(v, dtype=self.dtype, device=self.device) for v in pair)
            for name, pair in normalization.items()
        }
        self.transformation = _resolve_class(
            config.data_transformation, DataTransformation, "data_transformation", "transforms"
        )(config)
        self._check_shapes()
        self.optimization = None
        if config.require_training_stuff:
            self.optimization = _resolve_class(config.optimization, Optimization, "optimization")(config, self.network)

    @classmethod
    def check(cls, config: NetworkConfig, fields: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None) -> None:
        """Build every component of ``config``; a bad setting raises a ConfigError naming it.

        With ``fields`` the whole backend is built and probed. Without them
        (online training, before the first sample) the network cannot be
        sized: its ``network_kwargs`` are checked against its constructor, and
        the loss and optimiser (on a placeholder parameter) are built.
        """
        if fields is not None:
            cls(config, fields, {})
            return
        _check_fields(config, None)
        network_class = resolve_network_class(config.network_class)
        check_kwargs(network_class, config.network_kwargs, "network_kwargs", f"network {config.network_class!r}",
                     exclude=("input_shape", "output_shape"))
        _resolve_class(config.data_transformation, DataTransformation, "data_transformation", "transforms")(config)
        _resolve_class(config.optimization, Optimization, "optimization")
        if config.require_training_stuff:
            build_loss(config)
            build_scheduler(config, build_optimizer(config, [torch.nn.Parameter(torch.zeros(1))]))

    # -- shapes ------------------------------------------------------------------------

    def _check_shapes(self) -> None:
        """One forward pass on a zero sample, so mismatches surface now, named."""
        probe = torch.zeros((2, *self.input_shape), dtype=self.dtype, device=self.device)
        self.network.eval()
        try:
            with torch.no_grad():
                output = self.transformation.transform_before_prediction(probe)
                output = self.network(output)
        except RuntimeError as exc:
            raise ConfigError(
                f"network {self.architecture} cannot take field {self.input_field!r} with samples of shape "
                f"{self.input_shape}: {str(exc).splitlines()[0]}"
            ) from exc
        if tuple(output.shape[1:]) != self.target_shape:
            raise ConfigError(
                f"network {self.architecture} predicts samples of shape {tuple(output.shape[1:])} but the target "
                f"field {self.target_field!r} has samples of shape {self.target_shape}"
            )

    # -- data --------------------------------------------------------------------------

    def _tensor(self, name: str, array: np.ndarray) -> torch.Tensor:
        # from_numpy shares a plain writable array's memory at a third of as_tensor's cost,
        # which small batches feel; anything else keeps as_tensor's conversions
        if type(array) is np.ndarray and array.flags.writeable:
            tensor = torch.from_numpy(array).to(self.device, self.dtype)
        else:
            tensor = torch.as_tensor(array, device=self.device).to(self.dtype)
        norm = self.normalization.get(name)
        if norm is not None:
            tensor = (tensor - norm[0]) / norm[1]
        return tensor

    def _denormalize(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        norm = self.normalization.get(name)
        return tensor * norm[1] + norm[0] if norm is not None else tensor

    # -- the contract ------------------------------------------------------------------

    def _mode(self, training: bool) -> None:
        """Switch train/eval only when it changes: ``Module.train`` walks every submodule."""
        if self.network.training != training:
            self.network.train(training)

    def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        self._mode(True)
        prediction, ground_truth = self._forward(batch)
        losses = self.optimization.transform_loss(self.optimization.compute_loss(prediction, ground_truth))
        loss = losses["loss"]
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the loss is {value}")
        self.optimization.optimize(loss)
        if len(losses) == 1:  # the common case, without building a second dict
            return {"loss": value}
        return {"loss": value, **{k: float(v) for k, v in losses.items() if k != "loss"}}

    def validation_loss(self, batch: dict[str, np.ndarray]) -> float:
        self._mode(False)
        with torch.no_grad():
            prediction, ground_truth = self._forward(batch)
            losses = self.optimization.transform_loss(self.optimization.compute_loss(prediction, ground_truth))
        return float(losses["loss"])

    def _forward(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.transformation.transform_before_prediction(self._tensor(self.input_field, batch[self.input_field]))
        prediction = self.network(inputs)
        return self.transformation.transform_before_loss(prediction, self._tensor(self.target_field, batch[self.target_field]))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._mode(False)
        with torch.no_grad():
            x = self.transformation.transform_before_prediction(self._tensor(self.input_field, inputs[self.input_field]))
            prediction = self.transformation.transform_before_apply(self.network(x))
            prediction = self._denormalize(self.target_field, prediction)
        return {self.target_field: Network.tensor_to_numpy(prediction)}

    def predict_with_dropout(self, inputs: dict[str, np.ndarray], passes: int,
                             seed: int | None = None) -> dict[str, np.ndarray]:
        """``passes`` predictions of every input with the network's dropout on (MC dropout), for
        active learning's ``scoring="mc_dropout"``: ``{target field: (passes, n, ...)}``, de-normalised.

        A method of its own so ``predict`` stays as cheap as it is. The inputs go
        through the network once, repeated ``passes`` times (each row draws its own
        masks); only the dropout layers switch to training, so normalisation layers
        keep their statistics. ``seed`` makes the masks reproducible without
        touching torch's global random state.
        """
        dropouts = [m for m in self.network.modules() if isinstance(m, DROPOUTS) and m.p > 0]
        if not dropouts:
            raise ConfigError(f"network {self.architecture} has no dropout to sample: build it with dropout "
                              "(fc: network_kwargs dropout = 0.1)")
        self._mode(False)
        forked = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            for layer in dropouts:
                layer.train()
            with torch.no_grad(), torch.random.fork_rng(devices=forked, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed % 2**63)
                x = self._tensor(self.input_field, inputs[self.input_field])
                x = self.transformation.transform_before_prediction(x)
                repeated = x.repeat(passes, *(1,) * (x.dim() - 1))
                prediction = self.transformation.transform_before_apply(self.network(repeated))
                prediction = self._denormalize(self.target_field, prediction)
        finally:
            for layer in dropouts:
                layer.eval()
        array = Network.tensor_to_numpy(prediction)
        return {self.target_field: array.reshape(passes, len(x), *array.shape[1:])}

    def end_epoch(self, loss: float, validation_loss: float | None) -> None:
        """Called by the Training pipeline after each epoch: moves the learning-rate schedule."""
        end_epoch = getattr(self.optimization, "end_epoch", None)
        if end_epoch is not None:
            end_epoch(loss, validation_loss)

    @property
    def learning_rate(self) -> float | None:
        return self.optimization.learning_rate if self.optimization is not None else None

    @property
    def nb_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def parameter_histograms(self) -> dict[str, np.ndarray]:
        histograms = {}
        for name, parameter in self.network.named_parameters():
            histograms[f"weights/{name}"] = Network.tensor_to_numpy(parameter)
            if parameter.grad is not None:
                histograms[f"gradients/{name}"] = Network.tensor_to_numpy(parameter.grad)
        return histograms

    # -- checkpoints -------------------------------------------------------------------

    def _scheduler(self) -> Any:
        return getattr(self.optimization, "scheduler", None)

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Write the checkpoint next to its final name, then rename: a crash never leaves half a file."""
        checkpoint = {
            "format": FORMAT,
            "architecture": self.architecture,
            "network_kwargs": dict(self.config.network_kwargs),
            "shapes": {"input": list(self.input_shape), "target": list(self.target_shape)},
            "state_dict": self.network.state_dict(),
            "optimizer": self.optimization.optimizer.state_dict() if self.optimization else None,
            "scheduler": self._scheduler().state_dict() if self._scheduler() is not None else None,
            "torch_rng": torch.get_rng_state(),
            "extra": extra,
        }
        tmp = Path(path).with_suffix(".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    @classmethod
    def read_checkpoint(cls, path: Path) -> dict[str, Any]:
        """Load a checkpoint safely (``weights_only=True``); anything unreadable is a CheckpointError naming ``path``."""
        path = Path(path)
        what = f"{path} is not a readable dpx-torch checkpoint"
        try:
            if path.stat().st_size == 0:
                raise CheckpointError(f"{what}: the file is empty (0 bytes)")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(f"{what}: {exc.strerror or _first_line(exc)}") from exc
        except pickle.UnpicklingError as exc:
            reason = "it holds objects other than tensors and plain values, which a safe load refuses"
            if "Weights only load failed" not in str(exc):
                reason = f"corrupt data ({_first_line(exc)})"
            raise CheckpointError(f"{what}: {reason}") from exc
        except Exception as exc:
            raise CheckpointError(f"{what}: truncated or corrupt ({_first_line(exc)})") from exc
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
            raise CheckpointError(f"{what}: it was not written by dpx-torch")
        for key, kind in CHECKPOINT_ENTRIES.items():
            if not isinstance(checkpoint.get(key), kind):
                raise CheckpointError(f"{what}: its {key!r} entry is missing or not a {kind.__name__}")
        return checkpoint

    @classmethod
    def read_extra(cls, path: Path) -> dict[str, Any]:
        return cls.read_checkpoint(path)["extra"]

    def load(self, path: Path, training: bool) -> dict[str, Any]:
        checkpoint = self.read_checkpoint(path)
        saved = (checkpoint["architecture"], checkpoint["network_kwargs"])
        if saved != (self.architecture, dict(self.config.network_kwargs)):
            raise ConfigError(
                f"{path} holds a {saved[0]} network with network_kwargs={saved[1]}, but the NetworkConfig asks for "
                f"{self.architecture} with network_kwargs={dict(self.config.network_kwargs)}"
            )
        try:
            self.network.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as exc:
            raise ConfigError(
                f"{path} was saved by a network of another shape (input {checkpoint['shapes']['input']}, target "
                f"{checkpoint['shapes']['target']}; now {list(self.input_shape)}, {list(self.target_shape)}): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if training and self.optimization is not None and checkpoint.get("optimizer"):
            self.optimization.optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["torch_rng"])
            scheduler = self._scheduler()
            if scheduler is not None and isinstance(checkpoint.get("scheduler"), dict):
                scheduler.load_state_dict(checkpoint["scheduler"])
        return checkpoint["extra"]
