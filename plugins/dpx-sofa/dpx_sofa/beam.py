"""``sofa.beam``: a clamped hexahedral FEM beam bent by a force on its free end.

The beam scenario of DeepPhysX.Sofa: the network learns the displacement of
every grid node from the forces applied to the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dpx.checks import float_range, number, positive_float, positive_int, triple
from dpx.core.space import Parameter, direction_parameters, unit_vector
from dpx_sofa.environment import SceneError, SofaEnvironment

#: The fields' shapes: ``(n_nodes, 3)`` or channel-first ``(3, nx, ny, nz)``.
LAYOUTS = ("nodes", "grid")


class SofaBeam(SofaEnvironment):
    """A beam along x, clamped at ``x = 0`` and loaded at ``x = length``.

    Scene (the paths :meth:`init` looks up are in brackets)::

        root (gravity 0, DefaultAnimationLoop)
          beam
            EulerImplicitSolver, CGLinearSolver
            RegularGridTopology "grid", MechanicalObject "state"   [beam/state]
            UniformMass, HexahedronFEMForceField (corotational, "large")
            FixedConstraint "clamp" on the nodes at x = 0
            ConstantForceField "load" on the nodes at x = length   [beam/load]
          prediction
            RegularGridTopology "grid", MechanicalObject "state"   [prediction/state]

    Each sample resets the beam to rest, applies one random force (uniform
    direction, magnitude drawn from ``force_range``) spread evenly over the
    free end's nodes, and runs ``animate_steps`` time steps. The declared
    sample parameters (drawn by the run's sampler) are ``force`` (the
    magnitude), ``direction_z`` and ``direction_azimuth`` (see
    :func:`dpx.core.space.direction_parameters`).
    :meth:`apply_prediction` shows the predicted shape in the ``prediction``
    node, which has no solver: the simulated beam stays the ground truth.

    Fields (``n_nodes = nx * ny * nz``, nodes numbered x fastest, then y, then z),
    in the shape ``layout`` chooses: ``"nodes"``, ``(n_nodes, 3)`` (an FC
    network), or ``"grid"``, channel first ``(3, nx, ny, nz)`` (a 3D UNet):

    ``input``
        ``float32``: the force on each node (zero except at the free end).
    ``ground_truth``
        ``float32``: each node's displacement from rest.

    With a viewer (``visualizer="vedo"``) SOFA's beam is drawn in green and,
    beside it (shifted along y), the network's in red.

    Parameters: ``grid_resolution`` (nodes along x, y, z; each >= 2),
    ``size`` (beam extent along x, y, z; > 0), ``young_modulus`` (> 0),
    ``poisson_ratio`` (in [0, 0.5)), ``total_mass`` (> 0), ``force_range``
    (magnitude of the total force, ``(low, high)`` with ``0 <= low``),
    ``rayleigh_stiffness`` and ``rayleigh_mass`` (>= 0), ``cg_iterations``
    (>= 1), ``cg_tolerance`` (> 0), ``layout`` (``"nodes"`` or ``"grid"``),
    and :class:`SofaEnvironment`'s ``dt`` and ``animate_steps``.
    """

    plugins = (
        "Sofa.Component.StateContainer",  # MechanicalObject
        "Sofa.Component.ODESolver.Backward",  # EulerImplicitSolver
        "Sofa.Component.LinearSolver.Iterative",  # CGLinearSolver
        "Sofa.Component.Topology.Container.Grid",  # RegularGridTopology
        "Sofa.Component.Mass",  # UniformMass
        "Sofa.Component.SolidMechanics.FEM.Elastic",  # HexahedronFEMForceField
        "Sofa.Component.Constraint.Projective",  # FixedProjectiveConstraint
        "Sofa.Component.MechanicalLoad",  # ConstantForceField
    )

    def __init__(
        self,
        *,
        grid_resolution: tuple[int, int, int] = (25, 5, 5),
        size: tuple[float, float, float] = (100.0, 15.0, 15.0),
        young_modulus: float = 4000.0,
        poisson_ratio: float = 0.3,
        total_mass: float = 1.0,
        force_range: tuple[float, float] = (50.0, 150.0),
        rayleigh_stiffness: float = 0.1,
        rayleigh_mass: float = 0.1,
        cg_iterations: int = 50,
        cg_tolerance: float = 1e-9,
        layout: str = "nodes",
        dt: float = 0.1,
        animate_steps: int = 20,
    ) -> None:
        super().__init__(dt=dt, animate_steps=animate_steps)
        self.grid_resolution = triple("grid_resolution", grid_resolution, _grid_count)
        self.size = triple("size", size, positive_float)
        self.young_modulus = positive_float("young_modulus", young_modulus)
        self.poisson_ratio = number("poisson_ratio", poisson_ratio, minimum=0.0, below=0.5)
        self.total_mass = positive_float("total_mass", total_mass)
        self.force_range = float_range("force_range", force_range, minimum=0.0)
        self.rayleigh_stiffness = number("rayleigh_stiffness", rayleigh_stiffness, minimum=0.0)
        self.rayleigh_mass = number("rayleigh_mass", rayleigh_mass, minimum=0.0)
        self.cg_iterations = positive_int("cg_iterations", cg_iterations)
        self.cg_tolerance = positive_float("cg_tolerance", cg_tolerance)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        self.layout = layout
        self.define_parameters(Parameter("force", *self.force_range), *direction_parameters())
        nx, ny, nz = self.grid_resolution
        self.n_nodes = nx * ny * nz
        self.field_shape = (self.n_nodes, 3) if layout == "nodes" else (3, nx, ny, nz)
        # RegularGridTopology numbers node (i, j, k) as i + nx * (j + ny * k)
        i, _, _ = np.unravel_index(np.arange(self.n_nodes), (nx, ny, nz), order="F")
        #: Nodes at x = 0 (held fixed) and at x = length (loaded).
        self.clamped = np.flatnonzero(i == 0)
        self.free_end = np.flatnonzero(i == nx - 1)
        self.state: Any = None
        self.load: Any = None
        self.shown: Any = None
        self._visual: tuple[int, int] | None = None

    def create_scene(self, root: Any) -> None:
        root.gravity.value = [0.0, 0.0, 0.0]  # the force field is the only load
        beam = root.addChild("beam")
        beam.addObject(
            self.component_name("EulerImplicitSolver", "EulerImplicitIntegrationScheme"),
            name="solver", rayleighStiffness=self.rayleigh_stiffness, rayleighMass=self.rayleigh_mass,
        )
        beam.addObject(
            "CGLinearSolver", name="linear_solver",
            iterations=self.cg_iterations, tolerance=self.cg_tolerance, threshold=self.cg_tolerance,
        )
        self._add_grid(beam)
        beam.addObject("UniformMass", name="mass", totalMass=self.total_mass)
        beam.addObject(
            "HexahedronFEMForceField", name="fem",
            youngModulus=self.young_modulus, poissonRatio=self.poisson_ratio, method="large",
        )
        beam.addObject(
            self.component_name("FixedProjectiveConstraint", "FixedConstraint"),
            name="clamp", indices=self.clamped.tolist(),
        )
        beam.addObject(
            "ConstantForceField", name="load",
            indices=self.free_end.tolist(), forces=np.zeros((len(self.free_end), 3)).tolist(),
        )
        self._add_grid(root.addChild("prediction"))

    def _add_grid(self, node: Any) -> None:
        node.addObject("RegularGridTopology", name="grid", n=list(self.grid_resolution), min=[0.0, 0.0, 0.0],
                       max=list(self.size))
        node.addObject("MechanicalObject", name="state", template="Vec3d")

    def init(self) -> None:
        """Find the components the samples read and write, and check the grid's numbering."""
        self.state = self.find_component("beam/state", "MechanicalObject", needed_by="SofaBeam.read_sample")
        self.load = self.find_component("beam/load", "ConstantForceField", needed_by="SofaBeam.start_sample")
        self.shown = self.find_component("prediction/state", "MechanicalObject", needed_by="SofaBeam.apply_prediction")
        rest = self.read_positions(self.state, "rest_position")
        if rest.shape != (self.n_nodes, 3):
            raise SceneError(f"beam/state has {rest.shape} rest positions; the grid {self.grid_resolution} has {self.n_nodes} nodes")
        length = self.size[0]
        if not (np.allclose(rest[self.clamped, 0], 0.0) and np.allclose(rest[self.free_end, 0], length)):
            raise SceneError("beam/state's nodes are not numbered x fastest, as SofaBeam expects from RegularGridTopology")

    def init_database(self) -> None:
        self.define_training_fields(
            ("input", np.float32, self.field_shape),
            ("ground_truth", np.float32, self.field_shape),
        )

    def init_visualization(self) -> None:
        """SOFA's beam (green) and, beside it along y, the network's (red), as hexahedral meshes."""
        rest = self.read_positions(self.state, "rest_position")
        self._beside = np.array([0.0, 1.5 * self.size[1], 0.0])
        cells = _hexahedra(self.grid_resolution)
        self._visual = (self.factory.add_mesh(rest, cells, color="green"),
                        self.factory.add_mesh(rest + self._beside, cells, color="red"))

    def start_sample(self) -> None:
        """Reset the beam to rest and load its free end with the sample's force."""
        self.reset()
        magnitude, z, azimuth = self.sample_parameters.array.tolist()
        total = magnitude * unit_vector(z, azimuth)
        self.write_data(self.load, "forces", np.tile(total / len(self.free_end), (len(self.free_end), 1)))

    def read_sample(self) -> None:
        forces = np.zeros((self.n_nodes, 3), np.float64)
        forces[self.read_data(self.load, "indices").astype(np.intp)] = self.read_data(self.load, "forces")
        positions = self.read_positions(self.state)
        displacement = positions - self.read_positions(self.state, "rest_position")
        self.set_training_data(input=self.as_field(forces), ground_truth=self.as_field(displacement))
        if self._visual is not None:
            self.factory.update(self._visual[0], positions=positions)
            self.update_visualisation()

    def apply_prediction(self, prediction: Mapping[str, np.ndarray]) -> None:
        """Show the predicted displacement on the ``prediction`` node's grid."""
        displacement = np.asarray(prediction["prediction"], dtype=np.float64)
        if displacement.size != self.n_nodes * 3:
            raise ValueError(
                f"SofaBeam expects a displacement of {self.n_nodes} x 3 values, got shape {displacement.shape}"
            )
        positions = self.read_positions(self.shown, "rest_position") + self.to_nodes(displacement)
        self.write_positions(self.shown, positions)
        if self._visual is not None:
            self.factory.update(self._visual[1], positions=positions + self._beside)
            self.update_visualisation()

    def as_field(self, nodal: np.ndarray) -> np.ndarray:
        """A new float32 array of ``(n_nodes, 3)`` values in the fields' layout."""
        if self.layout == "nodes":
            return np.array(nodal, dtype=np.float32)
        nx, ny, nz = self.grid_resolution
        return np.ascontiguousarray(np.reshape(nodal, (nz, ny, nx, 3)).transpose(3, 2, 1, 0), dtype=np.float32)

    def to_nodes(self, field: np.ndarray) -> np.ndarray:
        """A new float64 ``(n_nodes, 3)`` array from values in the fields' layout (or flattened)."""
        field = np.asarray(field, dtype=np.float64)
        if self.layout == "nodes":
            return field.reshape(self.n_nodes, 3).copy()
        nx, ny, nz = self.grid_resolution
        return np.ascontiguousarray(field.reshape(3, nx, ny, nz).transpose(3, 2, 1, 0).reshape(self.n_nodes, 3))


def _hexahedra(resolution: tuple[int, int, int]) -> np.ndarray:
    """The grid's cells as 8 node numbers each, in VTK's hexahedron order (nodes numbered x fastest)."""
    nx, ny, nz = resolution
    i, j, k = (axis.ravel() for axis in np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), np.arange(nz - 1), indexing="ij"))

    def node(di: int, dj: int, dk: int) -> np.ndarray:
        return (i + di) + nx * ((j + dj) + ny * (k + dk))

    corners = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]
    return np.stack([node(*corner) for corner in corners], axis=1)


def _grid_count(name: str, value: Any) -> int:
    count = positive_int(name, value)
    if count < 2:
        raise ValueError(f"{name} values must be >= 2 (a beam needs two node layers along each axis), got {value!r}")
    return count
