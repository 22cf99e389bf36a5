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


#: Short names of torch's learning-rate schedules; any class of ``torch.optim.lr_scheduler`` is also
#: accepted by its lower-case class name (``"multisteplr"``, ``"exponentiallr"``...).
SCHEDULERS = {
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "cosine": "CosineAnnealingLR",
    "cosine_warm_restarts": "CosineAnnealingWarmRestarts",
    "plateau": "ReduceLROnPlateau",
    "onecycle": "OneCycleLR",
    "cyclic": "CyclicLR",
}
#: Schedules that move at every optimisation step; the others move at every epoch's end.
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def schedulers() -> dict[str, type]:
    """Every learning-rate schedule by name: the short ones of :data:`SCHEDULERS` and torch's class names."""
    module = torch.optim.lr_scheduler
    known = {
        name.lower(): cls for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, module.LRScheduler) and cls is not module.LRScheduler
    }
    known["reducelronplateau"] = module.ReduceLROnPlateau
    known.update({short: getattr(module, name) for short, name in SCHEDULERS.items()})
    return known


def build_scheduler(config: NetworkConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule of ``config`` (None without one), built with its ``lr_scheduler_kwargs``."""
    if config.lr_scheduler is None:
        if config.lr_scheduler_kwargs:
            raise ConfigError("NetworkConfig: lr_scheduler_kwargs are given but no lr_scheduler; name one "
                              f"({', '.join(SCHEDULERS)})")
        return None
    known = schedulers()
    cls = known.get(config.lr_scheduler.lower())
    if cls is None:
        close = difflib.get_close_matches(config.lr_scheduler.lower(), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"NetworkConfig: unknown lr_scheduler {config.lr_scheduler!r}{hint}; "
                          f"available: {', '.join(SCHEDULERS)} or a class name of torch.optim.lr_scheduler")
    return build_with_kwargs(cls, config.lr_scheduler_kwargs, "lr_scheduler_kwargs",
                             f"lr_scheduler {config.lr_scheduler!r}", optimizer)


def _name(choice: str | type) -> str:
    return repr(choice) if isinstance(choice, str) else f"{choice.__module__}:{choice.__qualname__}"


class Optimization:
    """Compute the loss and apply the optimiser; subclass to change either.

    ``transform_loss`` receives ``{"loss": tensor}`` and may add terms or
    extra values (e.g. a regularisation, a gradient norm): every extra entry
    is logged by the stats writers. ``gradient_clipping`` caps the gradients'
    global norm before each step; ``lr_scheduler`` moves the learning rate at
    every step (one-cycle, cyclic) or at every epoch's end (the others; plateau
    watches the validation loss, the training loss without validation data).
    """

    def __init__(self, config: NetworkConfig, network: torch.nn.Module) -> None:
        self.config = config
        self.loss = build_loss(config)
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, self.parameters)
        self.scheduler = build_scheduler(config, self.optimizer)
        per_step = self.scheduler is not None and type(self.scheduler).__name__ in PER_STEP_SCHEDULERS
        self._step_scheduler = self.scheduler.step if per_step else None
        self._epoch_scheduler = self.scheduler if self.scheduler is not None and not per_step else None

    def compute_loss(self, prediction: torch.Tensor, ground_truth: torch.Tensor) -> dict[str, Any]:
        return {"loss": self.loss(prediction, ground_truth)}

    def transform_loss(self, losses: dict[str, Any]) -> dict[str, Any]:
        return losses

    def optimize(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.gradient_clipping is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.gradient_clipping)
        self.optimizer.step()
        if self._step_scheduler is not None:
            self._step_scheduler()

    def end_epoch(self, loss: float, validation_loss: float | None) -> None:
        """Move an epoch-wise learning-rate schedule (plateau on ``validation_loss``, else ``loss``)."""
        scheduler = self._epoch_scheduler
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(validation_loss if validation_loss is not None else loss)
        else:
            scheduler.step()

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
