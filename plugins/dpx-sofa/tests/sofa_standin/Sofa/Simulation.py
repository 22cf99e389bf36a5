"""Stand-in for ``Sofa.Simulation``: init, initRoot, animate, reset, unload.

``init`` fills an empty MechanicalObject from its node's RegularGridTopology
(nodes numbered x fastest, as SOFA does) and records the rest and reset
states. ``animate`` sends AnimateBeginEvent / AnimateEndEvent to every
controller and, in each node holding a solver, moves every node's
displacement ``u`` toward ``f / youngModulus`` (``f``: the ConstantForceFields'
forces): ``u += min(dt, 1) * (f / E - u)``, held at zero on fixed indices.
A toy, linear response, enough to check that data flows both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from Sofa.Core import Controller, Node, Object

SOLVERS = {"EulerImplicitSolver"}
FEM = {"HexahedronFEMForceField"}
FIXED = {"FixedProjectiveConstraint", "FixedConstraint"}


def _nodes(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _nodes(child)


def _find(node: Node, kinds: set[str]) -> list[Object]:
    return [o for o in node.objects if o.getClassName() in kinds]


def _grid_positions(grid: Object) -> np.ndarray:
    nx, ny, nz = (int(n) for n in grid.n.value)
    low, high = np.asarray(grid.min.value, float), np.asarray(grid.max.value, float)
    axes = [np.linspace(low[d], high[d], n) for d, n in enumerate((nx, ny, nz))]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def init(root: Node) -> None:
    for node in _nodes(root):
        for state in _find(node, {"MechanicalObject"}):
            grids = _find(node, {"RegularGridTopology"})
            if len(state.position.value) == 0 and grids:
                state.position.value = _grid_positions(grids[0])
            if len(state.rest_position.value) != len(state.position.value):
                state.rest_position.value = state.position.value.copy()
            state.velocity.value = np.zeros_like(state.position.value)
            state._reset_position = state.position.value.copy()
        for field in _find(node, {"ConstantForceField"}):
            if len(field.forces.value) != len(field.indices.value):
                raise ValueError(f"{field.getPathName()}: {len(field.forces.value)} forces for {len(field.indices.value)} indices")
        for component in node.objects:
            component.init()
        node.initialized = True


initRoot = init


def _send(root: Node, event: dict[str, Any]) -> None:
    method = "on" + event["type"]
    for node in _nodes(root):
        for component in node.objects:
            if isinstance(component, Controller) and component.listening.value and hasattr(component, method):
                getattr(component, method)(event)


def animate(root: Node, dt: float = 0.0) -> None:
    if not root.isInitialized():
        raise RuntimeError("Sofa.Simulation.animate: the scene is not initialised")
    dt = dt or root.dt.value
    _send(root, {"type": "AnimateBeginEvent", "dt": dt})
    for node in _nodes(root):
        if not _find(node, SOLVERS):
            continue
        for state in _find(node, {"MechanicalObject"}):
            position, rest = state.position.value, state.rest_position.value
            force = np.zeros_like(position)
            for field in _find(node, {"ConstantForceField"}):
                force[field.indices.value.astype(np.intp)] += field.forces.value
            stiffness = next((float(f.youngModulus.value) for f in _find(node, FEM)), 1.0)
            displacement = position - rest
            moved = displacement + min(dt, 1.0) * (force / stiffness - displacement)
            for constraint in _find(node, FIXED):
                moved[constraint.indices.value.astype(np.intp)] = 0.0
            with state.velocity.writeableArray() as velocity:
                velocity[...] = (moved - displacement) / dt
            with state.position.writeableArray() as target:
                target[...] = rest + moved
    root.time.value = root.time.value + dt
    _send(root, {"type": "AnimateEndEvent", "dt": dt})


def reset(root: Node) -> None:
    for node in _nodes(root):
        for state in _find(node, {"MechanicalObject"}):
            state.position.value = state._reset_position.copy()
            state.velocity.value = np.zeros_like(state._reset_position)
    root.time.value = 0.0


def unload(root: Node) -> None:
    for node in list(_nodes(root)):
        node._objects.clear()
        node._children.clear()
        node.initialized = False
