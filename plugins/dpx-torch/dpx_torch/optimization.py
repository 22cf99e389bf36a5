"""Loss and optimiser, by name from torch (and plugins), as DeepPhysX's ``Optimization``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

import torch

from dpx.core.config import ConfigError, NetworkConfig
from dpx.core.network import build_with_kwargs


def optimizers() -> dict[str, type]:
    """Every optimiser of ``torch.optim`` by lower-case name (``adam``, ``adamw``, ``sgd``...)."""
    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


def resolve_optimizer(optimizer: str | type) -> type:
    if not isinstance(optimizer, str):
        return optimizer
    known = optimizers()
    try:
        return known[optimizer.lower()]
    except KeyError:
        close = difflib.get_close_matches(optimizer.lower(), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"NetworkConfig: unknown optimizer {optimizer!r}{hint}; available: {', '.join(sorted(known))}") from None


def resolve_loss(loss: str | type) -> type:
    """A loss class by registered name (torch's, or a plugin's through ``dpx_losses``)."""
    if not isinstance(loss, str):
        return loss
    from dpx.plugins import UnknownComponentError, get_plugins

    try:
        return get_plugins().load("losses", loss)
    except UnknownComponentError as exc:
        raise ConfigError(f"NetworkConfig: {exc}") from None


def build_loss(config: NetworkConfig) -> torch.nn.Module:
    """The loss of ``config`` built with its ``loss_kwargs`` (a bad key is a ConfigError naming it)."""
    return build_with_kwargs(resolve_loss(config.loss), config.loss_kwargs, "loss_kwargs", f"loss {_name(config.loss)}")


def build_optimizer(config: NetworkConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over ``parameters``, with ``lr`` and its ``optimizer_kwargs``."""
    return build_with_kwargs(
        resolve_optimizer(config.optimizer), config.optimizer_kwargs, "optimizer_kwargs",
        f"optimizer {_name(config.optimizer)}", parameters, lr=config.lr,
    )


def _name(choice: str | type) -> str:
    return repr(choice) if isinstance(choice, str) else f"{choice.__module__}:{choice.__qualname__}"


class Optimization:
    """Compute the loss and apply the optimiser; subclass to change either.

    ``transform_loss`` receives ``{"loss": tensor}`` and may add terms or
    extra values (e.g. a regularisation, a gradient norm): every extra entry
    is logged by the stats writers.
    """

    def __init__(self, config: NetworkConfig, network: torch.nn.Module) -> None:
        self.config = config
        self.loss = build_loss(config)
        self.optimizer = build_optimizer(config, network.parameters())

    def compute_loss(self, prediction: torch.Tensor, ground_truth: torch.Tensor) -> dict[str, Any]:
        return {"loss": self.loss(prediction, ground_truth)}

    def transform_loss(self, losses: dict[str, Any]) -> dict[str, Any]:
        return losses

    def optimize(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
