"""The plugin manager: finds plugins, records what each offers, resolves names.

Plugins come from three places, registered the same way:

* the core's own providers (:mod:`dpx.builtins`), so ``python -m dpx plugins``
  shows them like any other plugin;
* every entry point in the ``dpx`` group of the installed distributions;
* modules named in ``DPX_PLUGINS`` (comma separated), for developing a plugin
  that is not installed yet.

``DPX_DISABLE_PLUGINS=a,b`` skips plugins by name (a name matching no plugin is
warned about). Using a name that no installed plugin offers says which
first-party distribution offers it (:data:`FIRST_PARTY`) or which plugin is
disabled. A plugin that fails to import or to register is recorded with its
error and skipped, so one broken plugin never takes dpx down; ``DPX_STRICT_PLUGINS=1`` turns that into an exception, for
plugin authors and tests.

Registering a plugin only calls its registry hooks, which return import paths:
no component is imported until a pipeline asks for it by name. A plugin
declaring a ``DPX_PLUGIN_API`` this dpx does not support (see
:data:`dpx.hookspecs.PLUGIN_API`) is an error row, not registered.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from dpx import hookspecs

log = logging.getLogger("dpx.plugins")

BUILTIN_PLUGIN = "dpx"
#: The core's distribution name (``dpx`` on the package index is an unrelated project).
CORE_DISTRIBUTION = "dpx-core"


class PluginError(Exception):
    """A plugin could not be loaded, or a name could not be resolved."""


class PluginUnavailable(PluginError):
    """Raise from a plugin (at import or in a hook) when something it needs outside
    Python's reach is missing, e.g. a simulator installed separately.

    The plugin is listed as ``unavailable`` with the message, without the
    warning a broken plugin gets, and strict mode does not fail on it.
    """


class UnknownComponentError(PluginError, LookupError):
    """No installed plugin offers the requested name."""


class AmbiguousComponentError(PluginError, LookupError):
    """Several plugins offer the requested name."""


@dataclass(frozen=True)
class Component:
    """What a registry hook offers under one name: an import path and a summary.

    The path (``"package.module:Attribute"``) is imported only by :meth:`load`,
    so a registry can name classes that need torch without importing torch.
    """

    path: str
    summary: str = ""

    def __post_init__(self) -> None:
        module, sep, attribute = self.path.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"component path {self.path!r} must look like 'package.module:Attribute'")

    def load(self) -> Any:
        module_name, _, attribute = self.path.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj


@dataclass
class PluginInfo:
    """One row of ``python -m dpx plugins``."""

    name: str
    module: str
    source: str  # "builtin", "entry point" or "DPX_PLUGINS"
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # "ok", "error", "unavailable" or "disabled"
    error: str | None = None
    #: registry name (e.g. "environments") -> {component name: component}
    provides: dict[str, dict[str, Component]] = field(default_factory=dict)
    #: the lifecycle hooks it implements (it takes part in runs), without the ``dpx_`` prefix
    joins: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "provides": {
                registry: {name: {"path": c.path, "summary": c.summary} for name, c in offers.items()}
                for registry, offers in self.provides.items()
            },
            "joins": self.joins,
        }


#: Registry names as used in the API: "environments", "losses", ...
REGISTRIES: tuple[str, ...] = tuple(hook.removeprefix("dpx_") for hook in hookspecs.REGISTRY_KINDS)


@dataclass(frozen=True)
class FirstParty:
    """A plugin of the dpx project, known even when not installed, so that using
    one of its names without it says what to install."""

    plugin: str  # its entry-point name
    distribution: str
    summary: str
    #: registry -> names it offers; ``"toy.*"`` stands for every name under ``toy.``
    offers: dict[str, tuple[str, ...]]

    def offers_name(self, registry: str, name: str) -> bool:
        return any(
            name.startswith(pattern[:-1]) if pattern.endswith(".*") else name == pattern
            for pattern in self.offers.get(registry, ())
        )


#: The first-party plugins, checked against what they register by tests/test_plugins.py.
FIRST_PARTY: tuple[FirstParty, ...] = (
    FirstParty("toy", "dpx-toy", "NumPy toy simulators", {"environments": ("toy.*",)}),
    FirstParty("torch", "dpx-torch", "PyTorch networks, losses and transforms", {
        "network_backends": ("torch",),
        "losses": ("huber", "l1", "mse", "relative_l2", "smooth_l1"),
        "transforms": ("identity",),
        "exporters": ("onnx", "pt2"),
    }),
    FirstParty("fem", "dpx-fem", "a finite-element beam on scikit-fem", {"environments": ("fem.*",)}),
    FirstParty("sofa", "dpx-sofa", "SOFA simulations (SOFA itself installed separately)", {"environments": ("sofa.*",)}),
    FirstParty("vedo", "dpx-vedo", "a 3D viewer", {"visualizers": ("vedo",)}),
    FirstParty("tensorboard", "dpx-tensorboard", "TensorBoard training curves", {"stats_writers": ("tensorboard",)}),
    FirstParty("ray", "dpx-ray", "environments on a Ray cluster", {"runners": ("ray",)}),
    FirstParty("onnx", "dpx-onnx", "exported ONNX networks on onnxruntime, without torch", {"network_backends": ("onnx",)}),
    FirstParty("deepphysx", "dpx-deepphysx", "DeepPhysX datasets read safely, and `dpx import deepphysx`",
               {"storage_backends": ("deepphysx",), "importers": ("deepphysx",)}),
    FirstParty("mlflow", "dpx-mlflow", "every run tracked as an MLflow run (lifecycle hooks)", {}),
)


def kind_of(registry: str) -> str:
    """The singular word for a registry, for messages: 'environments' -> 'environment'."""
    return hookspecs.REGISTRY_KINDS["dpx_" + registry]


def _env_list(variable: str) -> list[str]:
    return [item.strip() for item in os.environ.get(variable, "").split(",") if item.strip()]


def _describe(exc: BaseException) -> str:
    """One line for a table row; pluggy's validation errors keep every line, the
    reason being on the last one."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not isinstance(exc, pluggy.PluginValidationError):
        lines = lines[:1]
    return f"{type(exc).__name__}: {'; '.join(lines)}" if lines else type(exc).__name__


class Plugins:
    """The loaded plugins and the components they offer.

    Most code uses the process-wide instance from :func:`get_plugins`; tests and
    tools can build their own (``Plugins(entry_points=False)``) to see exactly
    the plugins they register.
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        strict: bool | None = None,
        disabled: Iterable[str] | None = None,
        dev_modules: Iterable[str] | None = None,
    ) -> None:
        self.strict = os.environ.get("DPX_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
        self.disabled = set(_env_list("DPX_DISABLE_PLUGINS") if disabled is None else disabled)
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._loaded: dict[tuple[str, str], Any] = {}

        from dpx import builtins

        self.register(builtins, name=BUILTIN_PLUGIN, source="builtin", distribution=CORE_DISTRIBUTION)
        if entry_points:
            self._load_entry_points()
        for module in _env_list("DPX_PLUGINS") if dev_modules is None else dev_modules:
            self._load_module(module)
        if entry_points:
            self._check_disabled_names()

    # -- loading ---------------------------------------------------------------

    def _load_entry_points(self) -> None:
        seen: set[tuple[str, str]] = set()
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if (ep.name, ep.value) in seen:  # a distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            info = PluginInfo(ep.name, ep.value, "entry point", dist, version)
            if ep.name in self.disabled:
                info.status = "disabled"
                self.plugins[ep.name] = info
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(info, f"import failed: {_describe(exc)}", exc)
                continue
            self.register(plugin, name=ep.name, source="entry point", distribution=dist, version=version)

    def _load_module(self, module_name: str) -> None:
        info = PluginInfo(module_name, module_name, "DPX_PLUGINS")
        if module_name in self.disabled:
            info.status = "disabled"
            self.plugins[module_name] = info
            return
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            self._fail(info, f"import failed: {_describe(exc)}", exc)
            return
        self.register(module, name=module_name, source="DPX_PLUGINS")

    def _check_disabled_names(self) -> None:
        """A disabled name that matches no plugin is a typo or a distribution name: say so,
        since the plugin the user meant to disable is still running."""
        for name in sorted(self.disabled - {info.name for info in self.plugins.values() if info.status == "disabled"}):
            owner = next((info.name for info in self.plugins.values() if info.distribution == name), None)
            if name == BUILTIN_PLUGIN:
                reason = "the core's own providers cannot be disabled"
            elif owner is not None:
                reason = f"that is a distribution; its plugin is named {owner!r}"
            else:
                names = sorted(info.name for info in self.plugins.values() if info.source != "builtin")
                close = difflib.get_close_matches(name, names, n=1)
                reason = (f"no installed plugin has that name{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"plugins: {', '.join(names) or 'none'}")
            log.warning("dpx: DPX_DISABLE_PLUGINS names %r, which disables nothing: %s", name, reason)

    def register(
        self,
        plugin: ModuleType | object,
        *,
        name: str,
        source: str = "registered",
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register a plugin object (usually a module) and record what it offers.

        A plugin with a hook that dpx does not define, a hook with arguments dpx
        does not pass, or a registry returning something other than
        ``{name: import path}`` becomes an error row instead of being registered.
        """
        if name in self.plugins and self.plugins[name].status != "disabled":
            raise PluginError(f"a plugin named {name!r} is already registered ({self.plugins[name].module})")
        module = getattr(plugin, "__name__", type(plugin).__name__)
        if version is None and distribution:
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                version = None
        info = PluginInfo(name, module, source, distribution, version)
        api = getattr(plugin, "DPX_PLUGIN_API", hookspecs.PLUGIN_API)
        if api not in hookspecs.SUPPORTED_PLUGIN_APIS:
            reason = (f"written for dpx plugin API {api!r}, this dpx has {hookspecs.PLUGIN_API}: "
                      f"install a version of {distribution or module} made for it")
            self._fail(info, reason, PluginError(reason))
            return info
        try:
            self.manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.manager.is_registered(plugin):  # pluggy may stop half-way through
                self.manager.unregister(plugin)
            self._fail(info, _describe(exc), exc)
            return info
        try:
            self._check_hook_names(plugin)
            info.provides = self._collect_offers(name)
            info.joins = sorted(caller.name.removeprefix("dpx_") for caller in self.manager.get_hookcallers(plugin) or []
                                if caller.name in hookspecs.LIFECYCLE_HOOKS)
        except PluginError as exc:
            self.manager.unregister(plugin)
            self._fail(info, str(exc), exc)
            return info
        self.plugins[name] = info
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name`` (used by the test fixture)."""
        plugin = self.manager.get_plugin(name)
        if plugin is not None:
            self.manager.unregister(plugin)
        self.plugins.pop(name, None)
        self._loaded = {key: obj for key, obj in self._loaded.items() if key[0] != name}

    def _check_hook_names(self, plugin: object) -> None:
        """pluggy accepts an implementation of a hook nobody specified, waiting for
        a spec that never comes; in dpx that is always a typo, so say so."""
        for caller in self.manager.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            close = difflib.get_close_matches(caller.name, [*hookspecs.REGISTRY_KINDS, *hookspecs.LIFECYCLE_HOOKS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginError(f"implements unknown hook {caller.name!r}{hint}")

    def _collect_offers(self, plugin_name: str) -> dict[str, dict[str, Component]]:
        offers: dict[str, dict[str, Component]] = {}
        for registry in REGISTRIES:
            hook = getattr(self.manager.hook, "dpx_" + registry)
            for impl in hook.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                try:
                    result = impl.function()
                except PluginUnavailable:
                    raise
                except Exception as exc:
                    raise PluginError(f"dpx_{registry}() raised {_describe(exc)}") from exc
                offers[registry] = self._as_components(registry, result)
        return offers

    @staticmethod
    def _as_components(registry: str, result: Any) -> dict[str, Component]:
        if not isinstance(result, dict):
            raise PluginError(
                f"dpx_{registry}() must return a dict {{name: import path}}, not {type(result).__name__}"
            )
        components: dict[str, Component] = {}
        for name, value in result.items():
            if not isinstance(name, str) or not name or ":" in name:
                raise PluginError(f"dpx_{registry}(): {name!r} is not a valid name (a non-empty string without ':')")
            try:
                components[name] = value if isinstance(value, Component) else Component(value)
            except (TypeError, ValueError) as exc:
                raise PluginError(f"dpx_{registry}(): {name!r} -> {value!r}: {exc}") from exc
        return components

    def _fail(self, info: PluginInfo, reason: str, exc: BaseException) -> None:
        self.plugins[info.name] = info
        if isinstance(exc, PluginUnavailable):
            info.status, info.error = "unavailable", str(exc)
            log.info("dpx: plugin %r unavailable: %s", info.name, info.error)
            return
        info.status, info.error = "error", reason
        if self.strict:
            raise PluginError(f"plugin {info.name!r} ({info.module}): {reason}") from exc
        log.warning("dpx: plugin %r skipped: %s", info.name, reason)

    # -- lookup ------------------------------------------------------------------

    def offers(self, registry: str) -> dict[str, list[tuple[PluginInfo, Component]]]:
        """Every name offered in ``registry``, with the plugins offering it."""
        self._check_registry(registry)
        found: dict[str, list[tuple[PluginInfo, Component]]] = {}
        for info in self.plugins.values():
            for name, component in info.provides.get(registry, {}).items():
                found.setdefault(name, []).append((info, component))
        return found

    def names(self, registry: str) -> list[str]:
        return sorted(self.offers(registry))

    def component(self, registry: str, name: str) -> tuple[PluginInfo, Component]:
        """Resolve ``name`` (or ``plugin:name``) to the plugin and component offering it."""
        offers = self.offers(registry)
        plugin_name, sep, bare = name.rpartition(":")
        candidates = offers.get(bare if sep else name, [])
        if sep:
            candidates = [(info, c) for info, c in candidates if info.name == plugin_name]
        if len(candidates) == 1:
            return candidates[0]
        kind = kind_of(registry)
        if not candidates:
            raise UnknownComponentError(self._unknown_message(registry, name, offers))
        owners = ", ".join(f"{info.name!r} ({c.path})" for info, c in candidates)
        choices = " or ".join(f"'{info.name}:{name}'" for info, _ in candidates)
        raise AmbiguousComponentError(f"{kind} {name!r} is offered by several plugins: {owners}; choose one with {choices}")

    def _unknown_message(self, registry: str, name: str, offers: dict[str, list]) -> str:
        kind = kind_of(registry)
        bare = name.rpartition(":")[2]
        available = sorted(offers)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(bare, available, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; available: {', '.join(available) if available else 'none'}."
        owner = next((p for p in FIRST_PARTY if p.offers_name(registry, bare)), None)
        installed = self.plugins.get(owner.plugin) if owner else None
        owner_disabled = installed is not None and installed.status == "disabled"
        if owner and installed is None:
            message += f" {kind.capitalize()} {bare!r} comes with the {owner.distribution} plugin: pip install {owner.distribution}."
        elif owner_disabled:
            message += f" {kind.capitalize()} {bare!r} comes with the plugin {owner.plugin!r}, disabled by DPX_DISABLE_PLUGINS."
        disabled = sorted(info.name for info in self.plugins.values() if info.status == "disabled")
        if disabled and not owner_disabled:
            message += f" Disabled by DPX_DISABLE_PLUGINS: {', '.join(disabled)}."
        broken = [info.name for info in self.plugins.values() if info.status == "error"]
        if broken:
            message += f" Plugins that failed to load: {', '.join(broken)} (see `python -m dpx plugins`)."
        return message

    def install_hint(self) -> str:
        """What to install to get simulators and networks, when no plugin is installed at all."""
        if any(info.source != "builtin" for info in self.plugins.values()):
            return ""
        lines = ["No plugin is installed: simulators, networks and viewers come as plugins. First-party ones:"]
        width = max(len(p.distribution) for p in FIRST_PARTY)
        lines += [f"  {p.distribution.ljust(width)}  {p.summary}" for p in FIRST_PARTY]
        lines.append("For example: pip install dpx-toy dpx-torch")
        return "\n".join(lines)

    def load(self, registry: str, name: str) -> Any:
        """Import and return the object registered as ``name`` in ``registry``."""
        info, component = self.component(registry, name)
        key = (info.name, component.path)
        if key not in self._loaded:
            try:
                obj = component.load()
            except Exception as exc:
                raise PluginError(
                    f"{kind_of(registry)} {name!r} of plugin {info.name!r} could not be loaded "
                    f"from {component.path!r}: {_describe(exc)}"
                ) from exc
            broken = contract_breach(registry, obj)
            if broken:
                contract = hookspecs.CONTRACTS["dpx_" + registry]
                raise PluginError(
                    f"{kind_of(registry)} {name!r} of plugin {info.name!r} ({component.path}) {broken}; "
                    f"a {kind_of(registry)} must be {contract.summary} (see dpx/hookspecs.py, dpx_{registry})"
                )
            self._loaded[key] = obj
        return self._loaded[key]

    @staticmethod
    def _check_registry(registry: str) -> None:
        if registry not in REGISTRIES:
            raise ValueError(f"unknown registry {registry!r}; registries are {', '.join(REGISTRIES)}")


def contract_breach(registry: str, obj: Any) -> str | None:
    """What ``obj`` lacks to be a component of ``registry`` (see ``hookspecs.CONTRACTS``), or None."""
    contract = hookspecs.CONTRACTS["dpx_" + registry]
    if not isinstance(obj, type):
        what = "a function" if callable(obj) else f"a {type(obj).__name__}"
        return f"is {what}, not a class"
    if contract.base is not None:
        base = Component(contract.base).load()
        if not issubclass(obj, base):
            return f"is not a subclass of {base.__module__}.{base.__qualname__}"
    # looked up in the classes themselves: every class answers getattr(cls, "__call__") through its metaclass
    missing = [method for method in contract.methods if not any(method in vars(k) for k in obj.__mro__[:-1])]
    if missing:
        return f"has no method {', '.join(missing)}"
    return None


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset_plugins() -> None:
    """Forget the loaded plugins so the next :func:`get_plugins` finds them again."""
    global _plugins
    _plugins = None


def load(registry: str, name: str) -> Any:
    """Shortcut for ``get_plugins().load(registry, name)``."""
    return get_plugins().load(registry, name)
