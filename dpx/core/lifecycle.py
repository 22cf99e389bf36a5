"""The lifecycle hooks of one pipeline run: which plugins join it, and calling them.

A pipeline builds a :class:`Lifecycle` when it starts; it resolves, once, the
hook callers of the plugins that join the run (every installed plugin that
implements a lifecycle hook, less those ``disable_plugins`` names), so that a
hook nobody implements is ``None`` and the hot loops skip it for the price of
an attribute test. The hooks themselves are documented in :mod:`dpx.hookspecs`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpx.core.config import ConfigError
from dpx.hookspecs import LIFECYCLE_HOOKS


@dataclass
class RunInfo:
    """What every lifecycle hook of a run receives as ``run`` (see :func:`dpx.hookspecs.dpx_run_start`)."""

    pipeline: str
    session_path: Path
    configs: dict[str, Any]
    seed: int | None = None
    plugins: dict[str, str | None] = field(default_factory=dict)
    run_id: str = ""
    #: Plugins keep their per-run data here, under their own name.
    state: dict[str, Any] = field(default_factory=dict)


def lifecycle_plugins(plugins: Any = None) -> dict[str, str | None]:
    """The loaded plugins implementing at least one lifecycle hook -> their versions."""
    if plugins is None:
        from dpx.plugins import get_plugins

        plugins = get_plugins()
    names = {impl.plugin_name for hook in LIFECYCLE_HOOKS for impl in getattr(plugins.manager.hook, hook).get_hookimpls()}
    return {name: plugins.plugins[name].version if name in plugins.plugins else None for name in sorted(names)}


def check_disabled(owner: str, disable_plugins: Iterable[str], plugins: Any = None) -> None:
    """Refuse a ``disable_plugins`` name that turns nothing off: the plugin meant would still join.

    A first-party plugin that is not installed is accepted, so that a config
    keeping ``mlflow`` out runs where dpx-mlflow is not installed too.
    """
    from dpx.plugins import FIRST_PARTY, get_plugins

    plugins = plugins if plugins is not None else get_plugins()
    joining = lifecycle_plugins(plugins)
    absent_first_party = {p.plugin for p in FIRST_PARTY} - set(plugins.plugins)
    for name in disable_plugins:
        if name not in joining and name not in absent_first_party:
            listed = ", ".join(joining) or "none is installed"
            raise ConfigError(
                f"{owner}: disable_plugins names {name!r}, which is no plugin taking part in runs; "
                f"plugins implementing lifecycle hooks: {listed}"
            )


class Lifecycle:
    """The lifecycle hook callers of one run; a hook no joining plugin implements is None."""

    def __init__(self, pipeline: str, disable_plugins: Iterable[str] = (), plugins: Any = None) -> None:
        if plugins is None:
            from dpx.plugins import get_plugins

            plugins = get_plugins()
        disabled = set(disable_plugins)
        check_disabled(pipeline, disabled, plugins)
        manager = plugins.manager
        removed = [manager.get_plugin(name) for name in disabled if manager.get_plugin(name) is not None]
        self.pipeline = pipeline
        #: Unique to this run, recorded in ``session.json`` and given to the plugins.
        self.run_id = uuid.uuid4().hex
        self.joined = {name: version for name, version in lifecycle_plugins(plugins).items() if name not in disabled}
        self.callers: dict[str, Callable[..., Any] | None] = {}
        for name in LIFECYCLE_HOOKS:
            caller = manager.subset_hook_caller(name, removed)
            self.callers[name] = caller if caller.get_hookimpls() else None
        self.run: RunInfo | None = None

    def hook(self, name: str) -> Callable[..., Any] | None:
        """The caller of hook ``name`` for this run, None when no joining plugin implements it.

        Hot loops fetch it once and test it for None each step; calls go
        through :meth:`call` elsewhere.
        """
        return self.callers[name]

    def start(self, session_path: Path, configs: dict[str, Any], seed: int | None = None) -> RunInfo:
        self.run = RunInfo(self.pipeline, Path(session_path), configs, seed, dict(self.joined), self.run_id)
        self.call("dpx_run_start")
        return self.run

    def call(self, name: str, **arguments: Any) -> Any:
        """Call hook ``name`` with this run; None when no joining plugin implements it."""
        caller = self.callers[name]
        if caller is None or self.run is None:
            return None
        return caller(run=self.run, **arguments)

    def end(self, outcome: str, summary: Any = None, error: BaseException | None = None) -> None:
        """Tell the plugins how the run ended (only once a run started)."""
        if self.run is not None:
            self.call("dpx_run_end", outcome=outcome, summary=summary, error=error)
