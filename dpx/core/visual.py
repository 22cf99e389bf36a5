"""What environments show: visual objects described in plain NumPy, for any viewer.

An environment describes its objects in ``init_visualization`` through
``self.factory`` and updates them by id in ``step``, then calls
``self.update_visualisation()``::

    def init_visualization(self):
        self.cloud = self.factory.add_points(self.positions, color="green")

    def step(self):
        ...
        self.factory.update(self.cloud, positions=self.positions)
        self.update_visualisation()

The factory only records descriptions (dicts of arrays and strings), so they
travel to a viewer in another process as easily as to one beside the
environment; the viewer (a ``dpx_visualizers`` component, e.g. vedo) turns
them into pictures.

A visualizer class is built as ``cls(**visualizer_kwargs)`` and has
``add_scene(instance_id, objects)``, ``update(instance_id, updates)`` and
``close()``; ``objects`` and ``updates`` map object ids to descriptions.
Updates must never block the simulation: a slow viewer drops frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Object kinds, with the fields each accepts (arrays unless noted).
KINDS: dict[str, tuple[str, ...]] = {
    "points": ("positions", "color", "point_size", "alpha", "scalars"),
    "mesh": ("positions", "cells", "color", "alpha", "wireframe", "scalars"),
    "arrows": ("positions", "vectors", "color", "scale"),
    "glyphs": ("positions", "radii", "color"),
    "text": ("text", "position", "color", "size"),
}
REQUIRED = {"points": ("positions",), "mesh": ("positions", "cells"), "arrows": ("positions", "vectors"),
            "glyphs": ("positions",), "text": ("text",)}


class VisualFactory:
    """Record an environment's visual objects and their pending updates."""

    def __init__(self) -> None:
        self.objects: dict[int, dict[str, Any]] = {}
        self._updates: dict[int, dict[str, Any]] = {}

    def add_points(self, positions: np.ndarray, **options: Any) -> int:
        return self._add("points", positions=positions, **options)

    def add_mesh(self, positions: np.ndarray, cells: np.ndarray, **options: Any) -> int:
        return self._add("mesh", positions=positions, cells=cells, **options)

    def add_arrows(self, positions: np.ndarray, vectors: np.ndarray, **options: Any) -> int:
        return self._add("arrows", positions=positions, vectors=vectors, **options)

    def add_glyphs(self, positions: np.ndarray, radii: np.ndarray | float = 0.05, **options: Any) -> int:
        return self._add("glyphs", positions=positions, radii=radii, **options)

    def add_text(self, text: str, **options: Any) -> int:
        return self._add("text", text=text, **options)

    def update(self, object_id: int, **fields: Any) -> None:
        """Change fields of an object; the viewer sees them at the next ``update_visualisation``."""
        obj = self.objects.get(object_id)
        if obj is None:
            raise KeyError(f"no visual object {object_id!r}; this environment's objects are {sorted(self.objects)}")
        self._check(obj["kind"], fields)
        values = _copied(fields)
        obj.update(values)
        self._updates.setdefault(object_id, {}).update(values)

    def scene(self) -> dict[int, dict[str, Any]]:
        """Every object as described now (sent to the viewer once, at start)."""
        self._updates.clear()
        return {object_id: dict(obj) for object_id, obj in self.objects.items()}

    def take_updates(self) -> dict[int, dict[str, Any]]:
        """The changes since the last call, and forget them."""
        updates, self._updates = self._updates, {}
        return updates

    def _add(self, kind: str, **fields: Any) -> int:
        self._check(kind, fields)
        missing = [name for name in REQUIRED[kind] if fields.get(name) is None]
        if missing:
            raise ValueError(f"a {kind} object needs {', '.join(missing)}")
        object_id = len(self.objects)
        self.objects[object_id] = {"kind": kind, **_copied(fields)}
        return object_id

    @staticmethod
    def _check(kind: str, fields: dict[str, Any]) -> None:
        unknown = sorted(set(fields) - set(KINDS[kind]))
        if unknown:
            raise ValueError(f"{kind} objects have no field {unknown}; their fields are {', '.join(KINDS[kind])}")


def _copied(fields: dict[str, Any]) -> dict[str, Any]:
    """Snapshot arrays: the simulation keeps changing its own buffers."""
    return {name: np.array(value) if isinstance(value, np.ndarray) else value for name, value in fields.items()}
