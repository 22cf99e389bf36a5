"""DeepPhysX's parameter names, so that its users' configs work or say what to write.

A name with the same meaning under another name in dpx is accepted by the
configs' constructors and in TOML files; a DeepPhysX parameter whose meaning
changed is refused with what to write instead. The README's "Coming from
DeepPhysX" table lists the same renames (a test keeps them in step).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

#: Config class -> {DeepPhysX name: dpx name} of parameters that mean the same.
RENAMED: dict[str, dict[str, str]] = {
    "NetworkConfig": {
        "optimization_class": "optimization",
        "data_transformation_class": "data_transformation",
    },
    "EnvironmentConfig": {
        "number_of_thread": "workers",
    },
}

#: Config class -> {DeepPhysX name: what to write in dpx} where the meaning changed.
REPLACED: dict[str, dict[str, str]] = {
    "NetworkConfig": {
        "network_type": "network_class names the architecture ('fc', 'unet') or gives its class",
    },
    "EnvironmentConfig": {
        "as_tcp_ip_client": "runner='multiprocess' runs the environments in worker processes (runner='inprocess' in "
        "the pipeline's own)",
        "ip_address": "runner_kwargs={'host': ...} of the multiprocess runner",
        "port": "runner_kwargs={'port': ...} of the multiprocess runner",
    },
}

Config = TypeVar("Config", bound=type)


def translate(config: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with DeepPhysX's names replaced by dpx's; a replaced one raises ConfigError."""
    from dpx.core.config import ConfigError

    renamed, replaced = RENAMED.get(config, {}), REPLACED.get(config, {})
    result = dict(parameters)
    for old, new in renamed.items():
        if old in result:
            if new in result:
                raise ConfigError(f"{config}: {old} is DeepPhysX's name for {new}; give only one of them")
            result[new] = result.pop(old)
    for old, instead in replaced.items():
        if old in result:
            raise ConfigError(f"{config}: {old}={result[old]!r} is DeepPhysX's; in dpx, {instead}")
    return result


def deepphysx_names(cls: Config) -> Config:
    """Let a config's constructor take DeepPhysX's names (see :data:`RENAMED`)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **translate(cls.__name__, kwargs))

    cls.__init__ = __init__
    return cls


def hint(config: str, name: str) -> str | None:
    """What to write instead of DeepPhysX's ``name`` in ``config``, for an unknown-parameter error."""
    if name in RENAMED.get(config, {}):
        return f"DeepPhysX's name for {RENAMED[config][name]!r}"
    if name in REPLACED.get(config, {}):
        return f"DeepPhysX's; in dpx, {REPLACED[config][name]}"
    return None
