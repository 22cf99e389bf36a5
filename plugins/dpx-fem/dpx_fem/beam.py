"""``fem.beam``: a 3D linear-elastic cantilever under random loads, solved with scikit-fem."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Literal

import numpy as np

import dpx
from dpx.checks import float_range, number, positive_float, positive_int
from dpx.core.space import direction_parameters, unit_vector

LAYOUTS = ("nodes", "grid")


class Beam(dpx.Environment):
    """A box beam ``length`` x ``width`` x ``height`` meshed with ``nx`` x ``ny``
    x ``nz`` trilinear hexahedra, clamped at ``x = 0`` (every DOF of that face
    fixed), small-strain isotropic linear elasticity.

    Each sample loads the free surface with one random force: a total force
    of magnitude uniform in ``force_range`` and uniformly random direction,
    shared equally by the surface nodes within ``patch_radius`` of a random
    surface node whose ``x`` lies in ``load_region`` (fractions of
    ``length``). The declared sample parameters (drawn by the run's sampler):
    ``load_node`` (which of those surface nodes, an integer), ``force`` (the
    magnitude), ``direction_z`` (the direction's z, in [-1, 1]) and
    ``direction_azimuth`` (its angle about z, in [0, 2 pi]): uniform in both,
    the direction is uniform on the sphere.

    Nodes are numbered ``x``-major, then ``y``, then ``z`` (node ``(i, j, k)``
    of the grid is number ``(i * (ny + 1) + j) * (nz + 1) + k``), so the nodal
    arrays are also grids. Fields, chosen by ``layout``:

    ``input``
        ``float32``: the nodal forces, ``(n_nodes, 3)`` for ``"nodes"`` (an
        FC network) or channel first ``(3, nx + 1, ny + 1, nz + 1)`` for
        ``"grid"`` (a 3D UNet).
    ``ground_truth``
        ``float32``, same shape: the FEM nodal displacements.
    ``load`` (additional)
        ``float32 (6,)``: the patch centre ``(x, y, z)`` and the total force
        ``(fx, fy, fz)``.

    :meth:`create` assembles and factorises the stiffness matrix once, so a
    sample costs one sparse back-substitution (:meth:`solve`).
    """

    def __init__(
        self,
        *,
        length: float = 10.0,
        width: float = 1.0,
        height: float = 1.0,
        nx: int = 20,
        ny: int = 4,
        nz: int = 4,
        young_modulus: float = 1e5,
        poisson_ratio: float = 0.3,
        force_range: tuple[float, float] = (1.0, 10.0),
        load_region: tuple[float, float] = (0.5, 1.0),
        patch_radius: float = 1.0,
        layout: Literal["nodes", "grid"] = "nodes",
    ) -> None:
        self.size = (positive_float("length", length), positive_float("width", width), positive_float("height", height))
        self.cells = (positive_int("nx", nx), positive_int("ny", ny), positive_int("nz", nz))
        self.young_modulus = positive_float("young_modulus", young_modulus)
        self.poisson_ratio = number("poisson_ratio", poisson_ratio, minimum=0.0, below=0.5, strict=True)
        self.force_range = float_range("force_range", force_range, minimum=0.0)
        if self.force_range[1] == 0.0:
            raise ValueError(f"force_range must allow a nonzero force, got {force_range!r}")
        self.load_region = float_range("load_region", load_region, minimum=0.0, maximum=1.0)
        self.patch_radius = positive_float("patch_radius", patch_radius)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        self.layout = layout

        nx, ny, nz = self.cells
        self.grid_shape = tuple(n + 1 for n in self.cells)
        self.n_nodes = math.prod(self.grid_shape)
        self._axes = [np.linspace(0.0, s, n + 1) for s, n in zip(self.size, self.cells)]
        #: Rest positions of the nodes, ``(n_nodes, 3)``, in this environment's node order.
        self.nodes = np.stack(np.meshgrid(*self._axes, indexing="ij"), axis=-1).reshape(-1, 3)
        i, j, k = np.indices(self.grid_shape).reshape(3, -1)
        #: Nodes of the clamped face ``x = 0``.
        self.clamped = i == 0
        surface = (i == nx) | (j == 0) | (j == ny) | (k == 0) | (k == nz)
        self._loadable = surface & ~self.clamped
        low, high = (fraction * self.size[0] for fraction in self.load_region)
        slack = 1e-9 * self.size[0]
        x = self.nodes[:, 0]
        self._centres = np.flatnonzero(self._loadable & (x >= low - slack) & (x <= high + slack))
        if not len(self._centres):
            raise ValueError(
                f"load_region={load_region!r} holds no free surface node: nodes are {self.size[0] / nx:g} apart "
                f"along x; widen load_region or raise nx"
            )
        self._field_shape = (self.n_nodes, 3) if layout == "nodes" else (3, *self.grid_shape)
        self.define_parameters(
            dpx.Parameter("load_node", 0, len(self._centres) - 1, integer=True),
            dpx.Parameter("force", *self.force_range),
            *direction_parameters(),
        )

        #: Forces and FEM displacements of the last sample, ``(n_nodes, 3)`` float64.
        self.forces: np.ndarray | None = None
        self.displacement: np.ndarray | None = None
        #: The last prediction given to :meth:`apply_prediction`, ``(n_nodes, 3)``.
        self.predicted_displacement: np.ndarray | None = None
        #: Seconds :meth:`create` spent assembling and factorising the stiffness matrix.
        self.assembly_seconds = self.factorization_seconds = math.nan
        self._lu = None
        self._visual: tuple[int, int, int] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def create(self) -> None:
        from scipy.sparse.linalg import splu
        from skfem import Basis, ElementHex1, ElementVector, MeshHex, asm, condense
        from skfem.models.elasticity import lame_parameters, linear_elasticity

        started = time.perf_counter()
        mesh = MeshHex.init_tensor(*self._axes)
        # 2x2x2 Gauss points integrate the trilinear stiffness exactly on box
        # cells; scikit-fem's default rule takes 64 points for the same matrix.
        basis = Basis(mesh, ElementVector(ElementHex1()), intorder=3)
        #: The assembled stiffness matrix (scikit-fem's DOF numbering).
        self.stiffness = asm(linear_elasticity(*lame_parameters(self.young_modulus, self.poisson_ratio)), basis)
        self.assembly_seconds = time.perf_counter() - started

        # scikit-fem numbers nodes its own way: map ours (x-major) to its DOFs.
        spacing = np.array([s / n for s, n in zip(self.size, self.cells)])
        ours = np.ravel_multi_index(tuple(np.rint(mesh.p / spacing[:, None]).astype(int)), self.grid_shape)
        theirs = np.empty(self.n_nodes, dtype=np.int64)
        theirs[ours] = np.arange(self.n_nodes)
        #: ``dofs[node, component]``: the global DOF of a node's displacement component.
        self.dofs = basis.nodal_dofs[:, theirs].T
        self._n_dofs = basis.N

        fixed = basis.get_dofs(lambda p: np.isclose(p[0], 0.0))
        reduced, _, self._free = condense(self.stiffness, D=fixed)
        started = time.perf_counter()
        self._lu = splu(reduced.tocsc())
        self.factorization_seconds = time.perf_counter() - started

    def init_database(self) -> None:
        shape = self._field_shape
        self.define_training_fields(("input", np.float32, shape), ("ground_truth", np.float32, shape))
        self.define_additional_fields(("load", np.float32, (6,)))

    def init_visualization(self) -> None:
        """The FEM deformed nodes (green), the predicted ones (red) and the forces (arrows)."""
        rest = self.nodes.astype(np.float32)
        arrow_scale = 0.2 * self.size[0] / self.force_range[1]
        self._visual = (
            self.factory.add_points(rest, color="green"),
            self.factory.add_points(rest, color="red"),
            self.factory.add_arrows(rest, np.zeros_like(rest), color="blue", scale=arrow_scale),
        )

    def step(self) -> None:
        forces, load = self._random_load()
        self.forces, self.displacement = forces, self.solve(forces)
        self.set_training_data(input=self.as_field(forces), ground_truth=self.as_field(self.displacement))
        self.set_additional_data(load=load)
        if self._visual is not None:
            fem, _, arrows = self._visual
            self.factory.update(fem, positions=self.nodes + self.displacement)
            self.factory.update(arrows, vectors=forces)
            self.update_visualisation()

    def apply_prediction(self, prediction: Mapping[str, np.ndarray]) -> None:
        """Keep the network's displacement (as nodes, in :attr:`predicted_displacement`)
        to compare with :attr:`displacement` or show it; the beam has no state to change."""
        predicted = np.asarray(prediction["prediction"])
        if predicted.shape != self._field_shape:
            raise ValueError(f"Beam expects a prediction of shape {self._field_shape}, got shape {predicted.shape}")
        self.predicted_displacement = self.to_nodes(predicted)
        if self._visual is not None:
            self.factory.update(self._visual[1], positions=self.nodes + self.predicted_displacement)
            self.update_visualisation()

    def close(self) -> None:
        self._lu = None

    # -- the solver ------------------------------------------------------------------

    def solve(self, forces: np.ndarray) -> np.ndarray:
        """The FEM displacements ``(n_nodes, 3)`` under nodal ``forces`` ``(n_nodes, 3)``:
        one back-substitution with the factorisation of :meth:`create`. Forces on
        clamped nodes go into the support and move nothing."""
        if self._lu is None:
            raise RuntimeError("Beam.solve() needs the factorised stiffness matrix: call create() first")
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (self.n_nodes, 3):
            raise ValueError(f"forces must have shape {(self.n_nodes, 3)}, got {forces.shape}")
        load = np.zeros(self._n_dofs)
        load[self.dofs] = forces
        displacement = np.zeros(self._n_dofs)
        displacement[self._free] = self._lu.solve(load[self._free])
        return displacement[self.dofs]

    # -- layouts ---------------------------------------------------------------------

    def as_field(self, nodal: np.ndarray) -> np.ndarray:
        """A new float32 array of ``nodal`` ``(n_nodes, 3)`` values in the fields' layout."""
        if self.layout == "nodes":
            return np.array(nodal, dtype=np.float32)
        return np.ascontiguousarray(np.asarray(nodal).T.reshape(self._field_shape), dtype=np.float32)

    def to_nodes(self, field: np.ndarray) -> np.ndarray:
        """A new float64 ``(n_nodes, 3)`` array from values in the fields' layout."""
        field = np.asarray(field, dtype=np.float64)
        if self.layout == "nodes":
            return field.reshape(self.n_nodes, 3).copy()
        return np.ascontiguousarray(field.reshape(3, self.n_nodes).T)

    # -- loads --------------------------------------------------------------------

    def _random_load(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodal forces of the sample's patch load, and its ``(centre, total force)``."""
        node, magnitude, z, azimuth = self.sample_parameters.array.tolist()
        centre = self.nodes[self._centres[int(node)]]
        patch = self._loadable & (np.linalg.norm(self.nodes - centre, axis=1) <= self.patch_radius)
        force = magnitude * unit_vector(z, azimuth)
        forces = np.zeros((self.n_nodes, 3))
        forces[patch] = force / patch.sum()
        return forces, np.concatenate([centre, force]).astype(np.float32)

