"""Stand-in for ``Sofa.Core``: Node, components (Object), Controller, Data, ObjectFactory.

As in SofaPython3: ``Data.value`` of an array is a read-only view,
``writeableArray()`` a context manager giving a writable one; a component's
data are its attributes; ``getObject``/``getChild`` return None when absent;
``addObject`` raises ValueError for a component type that no loaded plugin
provides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np

#: Component -> (plugin providing it, default data). "" means always available.
COMPONENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "DefaultAnimationLoop": ("", {}),
    "EulerImplicitSolver": ("Sofa.Component.ODESolver.Backward", {"rayleighStiffness": 0.0, "rayleighMass": 0.0}),
    "CGLinearSolver": ("Sofa.Component.LinearSolver.Iterative", {"iterations": 25, "tolerance": 1e-5, "threshold": 1e-5}),
    "RegularGridTopology": ("Sofa.Component.Topology.Container.Grid", {"n": [2, 2, 2], "min": [0.0] * 3, "max": [1.0] * 3}),
    "MechanicalObject": (
        "Sofa.Component.StateContainer",
        {"template": "Vec3d", "position": np.empty((0, 3)), "rest_position": np.empty((0, 3)), "velocity": np.empty((0, 3))},
    ),
    "UniformMass": ("Sofa.Component.Mass", {"totalMass": 1.0}),
    "HexahedronFEMForceField": ("Sofa.Component.SolidMechanics.FEM.Elastic", {"youngModulus": 5000.0, "poissonRatio": 0.45, "method": "large"}),
    "FixedProjectiveConstraint": ("Sofa.Component.Constraint.Projective", {"indices": np.empty(0, np.uint32)}),
    "ConstantForceField": ("Sofa.Component.MechanicalLoad", {"indices": np.empty(0, np.uint32), "forces": np.empty((0, 3))}),
}
#: Plugins loaded by SofaRuntime.importPlugin.
LOADED_PLUGINS: set[str] = set()
#: Data holding point indices, stored as uint32 like SOFA's index vectors.
INDEX_DATA = {"indices"}


def load_plugin(name: str) -> bool:
    """Load a plugin ("Sofa.Component" loads every Sofa.Component.* module)."""
    modules = {plugin for plugin, _ in COMPONENTS.values() if plugin}
    found = {m for m in modules if m == name or m.startswith(name + ".")}
    LOADED_PLUGINS.update(found)
    return bool(found)


class Data:
    """One datum of a component or node."""

    def __init__(self, name: str, value: Any) -> None:
        self._name = name
        self.value = value

    @property
    def value(self) -> Any:
        if isinstance(self._value, np.ndarray):
            view = self._value.view()
            view.flags.writeable = False
            return view
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        if isinstance(value, (str, bool, int, float)) or value is None:
            self._value = value
        else:
            self._value = np.array(value, dtype=np.uint32 if self._name in INDEX_DATA else None)

    @contextlib.contextmanager
    def writeableArray(self) -> Iterator[np.ndarray]:
        yield self._value


class Base:
    """What nodes and components share: a name, a class name and data as attributes."""

    def __init__(self, class_name: str, data: dict[str, Any]) -> None:
        object.__setattr__(self, "_class_name", class_name)
        object.__setattr__(self, "_data", {})
        for key, value in data.items():
            self._data[key] = Data(key, value)

    def getName(self) -> str:
        return self._data["name"].value

    def getClassName(self) -> str:
        return self._class_name

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("_data", {})
        if name in data:
            return data[name]
        raise AttributeError(f"{self.__dict__.get('_class_name', type(self).__name__)} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_data", {}):
            self._data[name].value = value
        else:
            object.__setattr__(self, name, value)


class Object(Base):
    """A component, created by ``Node.addObject``."""

    def __init__(self, class_name: str, data: dict[str, Any]) -> None:
        super().__init__(class_name, data)
        self.context: Node | None = None

    def getPathName(self) -> str:
        parent = self.context.getPathName() if self.context is not None else ""
        return f"{parent.rstrip('/')}/{self.getName()}"

    def init(self) -> None:
        """Called by Sofa.Simulation.init."""


class Controller(Object):
    """Base of Python controllers: SOFA calls ``on<EventName>(event)`` methods."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(type(self).__name__, {"name": kwargs.pop("name", type(self).__name__), "listening": True, **kwargs})


class Node(Base):
    """A node of the scene graph."""

    def __init__(self, name: str = "root") -> None:
        super().__init__("Node", {"name": name, "dt": 0.01, "gravity": [0.0, -9.81, 0.0], "time": 0.0})
        self.parent: Node | None = None
        self._children: list[Node] = []
        self._objects: list[Object] = []
        self.initialized = False

    def addObject(self, kind: str | Object, **kwargs: Any) -> Object:
        if isinstance(kind, Object):
            component = kind
        else:
            if kind not in COMPONENTS:
                raise ValueError(f"Object type {kind}<> was not created: the object factory does not know it")
            plugin, defaults = COMPONENTS[kind]
            if plugin and plugin not in LOADED_PLUGINS:
                raise ValueError(f"Object type {kind}<> was not created: load the plugin {plugin}")
            component = Object(kind, {**defaults, "name": kwargs.pop("name", kind), **kwargs})
        component.context = self
        self._objects.append(component)
        return component

    def addChild(self, name: str) -> Node:
        child = Node(name)
        child.parent = self
        self._children.append(child)
        return child

    def getObject(self, name: str) -> Object | None:
        return next((o for o in self._objects if o.getName() == name), None)

    def getChild(self, name: str) -> Node | None:
        return next((c for c in self._children if c.getName() == name), None)

    @property
    def objects(self) -> list[Object]:
        return list(self._objects)

    @property
    def children(self) -> list[Node]:
        return list(self._children)

    def getPathName(self) -> str:
        if self.parent is None:
            return "/"
        return f"{self.parent.getPathName().rstrip('/')}/{self.getName()}"

    def isInitialized(self) -> bool:
        return self.initialized

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            found = self.getChild(name) or self.getObject(name)
            if found is None:
                raise
            return found


class _ObjectFactory:
    @property
    def components(self) -> list[SimpleNamespace]:
        """Entries of the components that loaded plugins provide."""
        return [
            SimpleNamespace(className=name)
            for name, (plugin, _) in COMPONENTS.items()
            if not plugin or plugin in LOADED_PLUGINS
        ]


ObjectFactory = _ObjectFactory()
