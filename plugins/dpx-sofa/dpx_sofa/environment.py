"""The bridge between a SOFA scene and dpx's Environment API.

A SOFA environment names the SOFA modules its components come from
(:attr:`SofaEnvironment.plugins`), writes four hooks and lets
:class:`SofaEnvironment` do the rest (loading the modules, root node,
initialisation and its errors, time stepping, unloading):

``create_scene(root)``
    add nodes and components under the root node;
``start_sample()``
    prepare a new sample, e.g. reset the scene and draw random loads from
    ``self.rng`` (dpx reseeds it per sample);
``read_sample()``
    hand the sample's arrays to dpx with ``set_training_data``, read from the
    scene's components (:meth:`SofaEnvironment.read_positions`);
``apply_prediction(prediction)``
    write the network's answer into the scene
    (:meth:`SofaEnvironment.write_positions`).

Processes: dpx runs one SOFA simulation per process. Each environment builds
its scene in :meth:`~SofaEnvironment.create`, inside the process that steps it
(a runner with worker processes builds one environment in each worker); a live
simulation is never sent between processes, and pickling a created
environment is refused.

SOFA in charge: :meth:`SofaEnvironment.attach` builds the same scene into the
root node that ``runSofa`` hands to ``createScene``; the scene's
:class:`~dpx_sofa.controller.EnvironmentController` then turns the GUI's time
steps into dpx samples.

This module does not import SOFA; :meth:`SofaEnvironment.create` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

import dpx
from dpx.checks import positive_float, positive_int
from dpx_sofa._sofa import import_sofa

#: How many components a "the scene has: ..." message lists before eliding.
LISTED_COMPONENTS = 40


class SceneError(LookupError):
    """The scene lacks a component an environment reads or writes, or holds the wrong one."""


class SofaEnvironment(dpx.Environment):
    """Base class of dpx environments simulated by SOFA.

    Parameters: ``dt`` (> 0), the SOFA time step, and ``animate_steps``
    (>= 1), the number of SOFA time steps one dpx :meth:`step` runs.
    Subclasses take their own keyword arguments and pass these two on.
    """

    #: The SOFA modules (plugins) the scene's components come from, loaded before it is built.
    #: Name each module (``"Sofa.Component.Mass"``): SOFA builds need not hold the umbrella
    #: ``"Sofa.Component"``, which only loads all of them.
    plugins: tuple[str, ...] = ()
    #: The root's animation loop; None when :meth:`create_scene` adds its own.
    animation_loop: str | None = "DefaultAnimationLoop"

    def __init__(self, *, dt: float = 0.01, animate_steps: int = 1) -> None:
        self.dt = positive_float("dt", dt)
        self.animate_steps = positive_int("animate_steps", animate_steps)
        #: The scene's root node (a ``Sofa.Core.Node``), set by :meth:`create` or :meth:`attach`.
        self.root: Any = None
        #: The :class:`~dpx_sofa.controller.EnvironmentController` in the scene.
        self.controller: Any = None
        self._sofa: Any = None
        self._known_components: set[str] | None = None
        self._dpx_animating = False
        self._needs_init = False
        self._substep = 0

    # -- hooks written by subclasses ------------------------------------------------

    def create_scene(self, root: Any) -> None:
        """Add the scene's nodes and components under ``root`` (a ``Sofa.Core.Node``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement create_scene(root)")

    def start_sample(self) -> None:
        """Prepare a new sample before its time steps (reset, new random loads). Default: nothing."""

    def read_sample(self) -> None:
        """Set the sample's data from the scene with :meth:`set_training_data`, after its time steps."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_sample()")

    # -- dpx lifecycle ------------------------------------------------------------------

    def create(self) -> None:
        """Import SOFA, build the scene in a new root node and initialise it.

        Raises :class:`SceneError` with SOFA's own messages when a component
        fails to initialise: SOFA only logs it and would simulate nothing.
        """
        sofa, _ = import_sofa()
        self.build(sofa.Core.Node("root"))
        # initRoot is the root's entry point from SofaPython3 v24.12; earlier versions only have init
        initialise = getattr(sofa.Simulation, "initRoot", sofa.Simulation.init)
        with _SofaErrors() as errors:
            initialise(self.root)
        invalid = [f"{component.getPathName()} ({component.getClassName()})"
                   for component in _components(self.root) if _state(component) == "Invalid"]
        if errors.messages or invalid:
            problems = errors.messages or [f"{name} is invalid (see SOFA's log above)" for name in invalid]
            self.close()
            raise SceneError(f"{type(self).__name__}: SOFA could not initialise the scene: " + "; ".join(problems))

    def step(self) -> None:
        """Start a sample, run ``animate_steps`` SOFA time steps, read the sample."""
        self.start_sample()
        self._dpx_animating = True
        try:
            self.animate(self.animate_steps)
        finally:
            self._dpx_animating = False
        self.read_sample()

    def animate(self, steps: int = 1) -> None:
        """Run ``steps`` SOFA time steps of ``dt``, raising what the controller's handlers raised.

        SOFA logs and swallows exceptions raised in a controller's event
        handlers; the controller keeps the first one and this re-raises it.
        """
        animate = self._sofa.Simulation.animate
        for _ in range(steps):
            animate(self.root, self.dt)
            self.controller.raise_failure()

    def close(self) -> None:
        """Unload the scene and drop every reference to its components.

        SOFA frees an unloaded scene's components; an attribute still holding
        one (``self.state``) would point at freed memory.
        """
        if self.root is not None:
            sofa = self._sofa
            sofa.Simulation.unload(self.root)
            for name, value in list(vars(self).items()):
                if isinstance(value, sofa.Core.Base):
                    setattr(self, name, None)
        self.root = self.controller = None

    # -- building the scene -----------------------------------------------------------------

    def build(self, root: Any) -> None:
        """Fill ``root``: plugins, time step, animation loop, :meth:`create_scene`, the controller.

        Used by :meth:`create` and :meth:`attach`; SOFA initialises the scene afterwards.
        """
        sofa, runtime = import_sofa()
        from dpx_sofa.controller import EnvironmentController

        self._sofa = sofa
        # importPlugin returns False (and SOFA logs why) rather than raising
        missing = [plugin for plugin in self.plugins if not runtime.importPlugin(plugin)]
        if missing:
            raise SceneError(
                f"{type(self).__name__}: SOFA could not load the plugin(s) {', '.join(missing)} its scene needs "
                f"(SOFA_ROOT={os.environ.get('SOFA_ROOT', 'unset')}); use a SOFA build that has them"
            )
        root.dt.value = self.dt
        if self.animation_loop is not None:
            root.addObject(self.animation_loop, name="animation_loop")
        self.root = root
        self.create_scene(root)
        self.controller = root.addObject(EnvironmentController(self, name="dpx"))

    def attach(self, root: Any, seed: int | None = None) -> None:
        """Build the scene into ``root`` for SOFA to run, e.g. from a ``runSofa`` scene file::

            def createScene(root):
                beam = SofaBeam(grid_resolution=(10, 3, 3))
                beam.attach(root)
                beam.connect_predictor(dpx.load_predictor("sessions/beam"))  # optional

        SOFA then initialises the scene (and :meth:`on_init_done` runs
        :meth:`init` and :meth:`init_database`) and animates it; every
        ``animate_steps`` time steps the controller starts and reads a sample
        and, with a network connected, applies its prediction on the sample's
        ``input`` to the scene: SOFA's own loop runs the network. ``seed``
        seeds ``self.rng`` unless dpx already did.
        """
        if not hasattr(self, "rng"):
            self.rng = np.random.default_rng(seed)
        self.build(root)
        self._needs_init = True

    def component_name(self, *candidates: str) -> str:
        """The first of ``candidates`` that SOFA's object factory knows.

        Components get renamed between SOFA versions (``FixedConstraint``
        became ``FixedProjectiveConstraint`` in v24.06, the old name went away
        in v25.06), so a scene meant for several versions lists both names.
        """
        if self._known_components is None:
            self._known_components = {entry.className for entry in self._sofa.Core.ObjectFactory.components}
        for name in candidates:
            if name in self._known_components:
                return name
        raise SceneError(
            f"{type(self).__name__}: SOFA knows none of the components {', '.join(candidates)}; "
            f"loaded plugins: {', '.join(self.plugins)}"
        )

    def reset(self) -> None:
        """Put the scene back in its initial state (positions, velocities, time)."""
        self._sofa.Simulation.reset(self.root)

    # -- reading and writing the scene ---------------------------------------------------------

    def find_component(self, path: str, kind: str | None = None, needed_by: str | None = None) -> Any:
        """The component at ``path`` (``"node/child/component"`` from the root).

        ``kind`` is the SOFA class it must be (``"MechanicalObject"``);
        ``needed_by`` names who reads it, for the error. Raises
        :class:`SceneError` listing the scene's components when it is missing.
        """
        if self.root is None:
            raise RuntimeError(f"{type(self).__name__}.find_component({path!r}): the scene is not built; call create() first")
        *node_names, name = path.strip("/").split("/")
        node = self.root
        for node_name in node_names:
            node = node.getChild(node_name) if node is not None else None
        component = node.getObject(name) if node is not None else None
        reader = f" needed by {needed_by}" if needed_by else ""
        if component is None:
            expected = f" ({kind})" if kind else ""
            found = list(_describe_scene(self.root))
            listed = ", ".join(found[:LISTED_COMPONENTS]) + (", ..." if len(found) > LISTED_COMPONENTS else "")
            raise SceneError(f"scene has no component {path!r}{expected}{reader}; the scene has: {listed or 'nothing'}")
        if kind is not None and component.getClassName() != kind:
            raise SceneError(f"component {path!r}{reader} is a {component.getClassName()}, not a {kind}")
        return component

    @staticmethod
    def read_data(component: Any, name: str) -> np.ndarray:
        """A copy of the array data ``name`` of ``component`` (SOFA's own array changes as it simulates)."""
        return np.array(getattr(component, name).value, copy=True)

    @staticmethod
    def write_data(component: Any, name: str, values: Any) -> None:
        """Write ``values`` into the array data ``name`` of ``component``, in place.

        The shape must match the data's current shape: SOFA sizes a
        component's arrays at initialisation, and a wrong size would change
        the number of nodes it simulates.
        """
        data = getattr(component, name)
        values = np.asarray(values)
        shape = np.shape(data.value)
        if values.shape != shape:
            raise ValueError(
                f"cannot write an array of shape {values.shape} into {component.getPathName()}.{name}, "
                f"which has shape {shape}"
            )
        with data.writeable() as target:
            target[...] = values

    def read_positions(self, mechanical_object: Any, data: str = "position") -> np.ndarray:
        """A float64 copy of a MechanicalObject's ``position`` (or ``rest_position``, ``velocity``)."""
        return self.read_data(mechanical_object, data).astype(np.float64, copy=False)

    def write_positions(self, mechanical_object: Any, positions: Any, data: str = "position") -> None:
        """Write ``positions`` (``(n_nodes, 3)``) into a MechanicalObject's ``position`` (or ``data``)."""
        self.write_data(mechanical_object, data, np.asarray(positions, dtype=np.float64))

    # -- events forwarded by the controller -----------------------------------------------------

    def on_init_done(self, event: Any) -> None:
        """SOFA initialised the scene. After :meth:`attach`, run :meth:`init` and
        :meth:`init_database` (dpx runs them itself after :meth:`create`): the
        fields are declared, and checked against a connected network, before the
        first time step."""
        if self._needs_init:
            self._needs_init = False
            self.init()
            self.init_database()

    def on_animate_begin(self, event: Any) -> None:
        """Start of a SOFA time step. When SOFA runs the loop (not :meth:`step`),
        start a sample every ``animate_steps`` steps. Overrides call ``super()``."""
        if self._dpx_animating:
            return
        if self._substep == 0:
            if len(self.parameter_space):  # no pipeline draws them: SOFA runs the loop
                self.draw_parameters()
            self.start_sample()

    def on_animate_end(self, event: Any) -> None:
        """End of a SOFA time step. When SOFA runs the loop, read the sample after
        its last step and apply the network's prediction on its ``input`` when a
        network is connected. Overrides call ``super()``."""
        if self._dpx_animating:
            return
        self._substep = (self._substep + 1) % self.animate_steps
        if self._substep:
            return
        self.sample.clear()
        self.read_sample()
        if getattr(self, "_predictor", None) is not None:
            self.apply_prediction(self.get_prediction(input=self.sample["input"]))

    def __getstate__(self) -> dict[str, Any]:
        if self.root is not None:
            raise TypeError(
                f"{type(self).__name__} holds a live SOFA simulation, which cannot be sent to another process; "
                "send its class and parameters and build it there"
            )
        return {**self.__dict__, "_sofa": None}  # a module; create() imports it again


class _SofaErrors:
    """Collects SOFA's error messages while open (SofaPython3's ``Sofa.Helper.MessageHandler``)."""

    def __init__(self) -> None:
        import Sofa.Helper

        handler_base = getattr(Sofa.Helper, "MessageHandler", None)
        self.messages: list[str] = []
        self._handler = None
        if handler_base is not None:  # older SofaPython3 may lack it: then only invalid components are seen
            messages = self.messages

            class Handler(handler_base):  # type: ignore[misc, valid-type]
                def process(self, message: dict[str, Any]) -> None:
                    if message.get("type") in ("Error", "Fatal"):
                        component = message.get("component")
                        where = component.getPathName() if component is not None else message.get("sender", "")
                        messages.append(f"[{message['type'].upper()}] {where}: {message.get('message', '').strip()}")

            self._handler = Handler()

    def __enter__(self) -> _SofaErrors:
        if self._handler is not None:
            self._handler.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._handler is not None:
            self._handler.__exit__(*exc_info)


def _components(node: Any) -> Iterator[Any]:
    """Every component under ``node``, depth first."""
    yield from node.objects
    for child in node.children:
        yield from _components(child)


def _state(component: Any) -> str:
    """SOFA's ``componentState`` of a component ("Valid", "Invalid", "Undefined", ...)."""
    data = getattr(component, "componentState", None)
    return str(data.value) if data is not None else "Undefined"


def _describe_scene(node: Any, prefix: str = "") -> Iterator[str]:
    """``"path (Class)"`` for every component under ``node``, depth first."""
    for component in node.objects:
        yield f"{prefix}{component.getName()} ({component.getClassName()})"
    for child in node.children:
        yield from _describe_scene(child, f"{prefix}{child.getName()}/")
