"""Environments fed from the dataset: DeepPhysX's ``load_samples`` and ``only_first_epoch``.

With ``EnvironmentConfig(load_samples=True)`` the environments step on stored
samples instead of producing their own: before each ``step()`` an environment
finds the stored sample's fields in ``self.sample_training`` and
``self.sample_additional`` (to set its simulation's state from a stored input,
say), and the fields it sets replace the stored values in the batch; the
others keep theirs. Samples travel to worker processes as raw buffers, as
batches do.

* **Training** feeds the batches it reads from the dataset: in the first epoch
  only (``only_first_epoch=True``, from ``DatabaseConfig(existing_dir=...)``:
  an environment that produces the first epoch itself has nothing to be fed
  then) or in every epoch that reads stored samples (``only_first_epoch=False``).
  The network trains on the fed batch; the dataset is never rewritten (DeepPhysX
  updates the stored rows in place: dpx's storage is append-only).
* **Prediction** replays the stored samples of ``DatabaseConfig(existing_dir=...,
  mode=...)`` in order, one per environment and step, so the network's error
  inside the simulation is measured on a fixed, reproducible set
  (``step_nb=-1``: every stored sample once).

A fed sample is seeded from its stored index, in a stream of its own: feeding
sample ``k`` twice gives the environment the same random numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from dpx.core.config import MODE_STREAMS, ConfigError, EnvironmentConfig

#: Seed streams of fed samples, apart from the streams that produce a mode's samples.
FEED_STREAMS = {mode: 8 + index for mode, index in MODE_STREAMS.items()}


def check_training(config: EnvironmentConfig | None, existing_dir: str | None) -> None:
    """Refuse a Training whose ``load_samples`` would never feed anything (instead of ignoring it)."""
    if config is None or not config.load_samples:
        return
    if config.always_produce:
        raise ConfigError(
            "EnvironmentConfig: load_samples=True with always_produce=True: every epoch is produced, none is fed "
            "from the dataset; drop one of them"
        )
    if existing_dir is None and config.only_first_epoch:
        raise ConfigError(
            "EnvironmentConfig: load_samples=True with only_first_epoch=True feeds the first epoch, which the "
            "environment produces itself here: set DatabaseConfig(existing_dir=...) to feed a stored dataset, or "
            "only_first_epoch=False to feed the epochs after the first"
        )


def check_fields(config: EnvironmentConfig | None, declared: dict[str, Any], stored: dict[str, Any],
                 dataset: Any, mode: str) -> None:
    """The fields an environment declares must take the stored samples it is fed: same shape, a dtype cast safely."""
    if config is None or not config.load_samples:
        return
    for name, (dtype, shape) in declared.items():
        if name not in stored:
            continue
        stored_dtype, stored_shape = np.dtype(stored[name][0]), tuple(stored[name][1])
        if stored_shape != tuple(shape) or not np.can_cast(stored_dtype, dtype, "same_kind"):
            raise ConfigError(
                f"EnvironmentConfig: load_samples=True feeds {config.environment_name} the {mode} samples of "
                f"{dataset}, whose field {name!r} is {stored_dtype} {stored_shape}, but the environment declares it "
                f"{np.dtype(dtype)} {tuple(shape)}; feed it a dataset made by this environment"
            )


def feeds_only(config: EnvironmentConfig | None, existing_dir: str | None) -> bool:
    """Whether a Training's environments only step on stored samples and produce none (nothing is stored)."""
    return config is not None and config.load_samples and existing_dir is not None


def feeds(config: EnvironmentConfig | None, epoch: int) -> bool:
    """Whether the environments step on the stored batches of ``epoch`` (an epoch they do not produce)."""
    return config is not None and config.load_samples and (epoch == 0 or not config.only_first_epoch)


def fed_batches(runner: Any, database: Any, mode: str, batch_size: int, fields: Iterable[str],
                order: np.ndarray, pinned: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The stored samples of ``mode`` in ``order``, in batches, each stepped through the environments
    (``pinned``: row ``i`` by environment ``i``, as prediction steps need).

    A batch holds the environments' fields and the stored values of
    ``fields`` they do not declare (those a network needs).
    """
    stored_fields = database.fields(mode)
    wanted = set(fields)
    names = [name for name in stored_fields if name in runner.fields or name in wanted]
    stream = FEED_STREAMS[mode]
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        stored = database.read(mode, names, ids)
        yield {**stored, **runner.feed(stored, ids, stream, pinned=pinned)}


def check_replay(step_nb: int, instances: int, count: int, dataset: Any, mode: str) -> int:
    """The steps a Prediction replaying ``count`` stored samples makes; ConfigError when ``step_nb`` asks more."""
    if count == 0:
        raise ConfigError(f"DatabaseConfig: load_samples=True replays stored samples, and {dataset} holds no "
                          f"{mode!r} samples; set mode= to one it holds")
    available = -(-count // instances)
    if step_nb > available:
        raise ConfigError(
            f"Prediction: step_nb={step_nb} with load_samples=True replays {step_nb * instances} stored samples, "
            f"but {dataset} holds {count} {mode!r} samples ({available} steps of {instances}); "
            "lower step_nb, or -1 for every stored sample once"
        )
    return available if step_nb == -1 else step_nb
