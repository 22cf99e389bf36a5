"""The Environment API: what a simulator implements to produce samples for dpx.

A simulator subclasses :class:`Environment`, takes its parameters as keyword
arguments of ``__init__`` (they come from ``EnvironmentConfig(env_kwargs=...)``)
and overrides the lifecycle methods it needs. The only one it must write is
:meth:`Environment.step`, which computes one sample and hands its arrays to dpx
with :meth:`Environment.set_training_data`::

    class Mean(dpx.Environment):
        def __init__(self, n_points: int = 30):
            self.n_points = n_points

        def step(self):
            cloud = self.rng.random((self.n_points, 3), dtype=np.float32)
            self.set_training_data(input=cloud, ground_truth=cloud.mean(axis=0))

The names follow DeepPhysX's ``BaseEnvironment``. Two things differ: dpx seeds
:attr:`Environment.rng` for each sample (so a dataset does not depend on how
many workers made it), and fields get their shape and dtype from the first
sample unless declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dpx.core.predictor import Predictor
    from dpx.core.visual import VisualFactory

TRAINING_FIELDS = ("input", "ground_truth")


class FieldError(ValueError):
    """A sample's field is missing, unknown, or has the wrong shape or dtype."""


#: NumPy dtype kinds a field may hold: bool, integers, floats, complex. Anything
#: else (objects, strings, structured records, datetimes) is refused: mapped from
#: a file, an object dtype turns file bytes into pointers.
STORABLE_KINDS = "biufc"


def check_field_name(name: object, what: str = "field") -> str:
    """``name`` if it is a Python identifier, else FieldError.

    Names become folder names of a dataset: an identifier holds no path
    separator, no ``..`` and nothing a shell or a filesystem treats specially.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise FieldError(f"{what} name {name!r} must be a Python identifier")
    return name


def check_field_dtype(name: str, dtype: object, what: str = "field") -> np.dtype:
    """``dtype`` as a NumPy dtype if it is plain numeric or bool, else FieldError."""
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise FieldError(f"{what} {name!r}: {dtype!r} is not a NumPy dtype") from exc
    if parsed.kind not in STORABLE_KINDS or parsed.fields is not None or parsed.subdtype is not None:
        raise FieldError(
            f"{what} {name!r}: {parsed} arrays cannot be stored; use a numeric or bool dtype"
        )
    return parsed


@dataclass
class Field:
    """A named array every sample carries.

    ``dtype`` and ``shape`` may be left ``None``: the first sample fixes them,
    and every later sample must agree.
    """

    name: str
    dtype: np.dtype | None = None
    shape: tuple[int, ...] | None = None
    training: bool = True

    def __post_init__(self) -> None:
        check_field_name(self.name)
        if self.dtype is not None and self.dtype is not np.ndarray:
            self.dtype = check_field_dtype(self.name, self.dtype)
        else:
            self.dtype = None
        if self.shape is not None:
            self.shape = tuple(int(n) for n in self.shape)

    @classmethod
    def parse(cls, spec: Any, training: bool) -> Field:
        """Accept ``"name"``, ``("name", dtype)``, ``("name", dtype, shape)`` or a Field."""
        if isinstance(spec, Field):
            return cls(spec.name, spec.dtype, spec.shape, training)
        if isinstance(spec, str):
            return cls(spec, training=training)
        if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
            return cls(*spec, training=training)
        raise FieldError(f"cannot read a field from {spec!r}; use 'name', ('name', dtype) or ('name', dtype, shape)")

    def learn(self, value: np.ndarray) -> None:
        """Fix the dtype and shape a field was declared without, from a first value."""
        if self.dtype is None:
            self.dtype = check_field_dtype(self.name, value.dtype)
        if self.shape is None:
            self.shape = value.shape

    def describe(self) -> dict[str, Any]:
        return {"dtype": str(self.dtype), "shape": list(self.shape or ()), "training": self.training}


class Environment:
    """Base class of every simulator dpx can run.

    Attributes set by dpx before :meth:`create`:

    ``instance_id``
        Index of this environment among those of the run (0-based).
    ``instance_nb``
        Number of environments in the run.
    ``rng``
        A ``numpy.random.Generator``; dpx re-seeds it before each sample from
        the run's root seed and the sample's id. Draw every random number of a
        sample from it and the dataset is reproducible.

    Set by dpx before each :meth:`step` when the pipeline feeds stored samples
    (``EnvironmentConfig(load_samples=True)``), ``None`` otherwise:

    ``sample_training``, ``sample_additional``
        The stored sample's training and additional fields, by name (read-only
        arrays). Fields the step sets replace the stored values in the batch;
        the others keep them.
    """

    instance_id: int = 0
    instance_nb: int = 1
    rng: np.random.Generator
    sample_training: dict[str, np.ndarray] | None = None
    sample_additional: dict[str, np.ndarray] | None = None

    # -- lifecycle, overridden by simulators --------------------------------------

    def create(self) -> None:
        """Build the simulation (scene, mesh, solver). Called once, in the process
        that will step it."""

    def init(self) -> None:
        """Initialise the simulation once it is created."""

    def init_database(self) -> None:
        """Declare fields with :meth:`define_training_fields` and
        :meth:`define_additional_fields`. The default keeps ``input`` and
        ``ground_truth`` with shapes and dtypes learned from the first sample."""

    def init_visualization(self) -> None:
        """Describe the objects a viewer should show with ``self.factory`` (see
        :mod:`dpx.core.visual`); only called when a viewer is configured."""

    def step(self) -> None:
        """Advance the simulation and set the data of one sample.

        May be a coroutine function (``async def step``), as in DeepPhysX.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def check_sample(self) -> bool:
        """Return False to refuse the sample just produced; dpx steps again."""
        return True

    def apply_prediction(self, prediction: Mapping[str, np.ndarray]) -> None:
        """Use the network's prediction (``prediction["prediction"]``) in the simulation."""

    def close(self) -> None:
        """Release what :meth:`create` acquired."""

    # -- data ----------------------------------------------------------------------

    def define_training_fields(self, *specs: Any, fields: Any = None) -> None:
        """Declare the fields the network trains on, replacing ``input``/``ground_truth``.

        Each field is ``"name"``, ``("name", dtype)`` or ``("name", dtype, shape)``;
        DeepPhysX's ``fields=[...]`` (or ``fields=("name", np.ndarray)``) works too.
        """
        parsed = [Field.parse(spec, training=True) for spec in _flatten(specs, fields)]
        self._fields = {name: f for name, f in self.fields.items() if not f.training}
        self._add_fields(parsed)
        # training fields first, as documented, also after define_parameters() in __init__
        self._fields = dict(sorted(self._fields.items(), key=lambda item: not item[1].training))

    def define_additional_fields(self, *specs: Any, fields: Any = None) -> None:
        """Declare extra fields stored with each sample but not fed to the network."""
        self._add_fields(Field.parse(spec, training=False) for spec in _flatten(specs, fields))

    def set_training_data(self, **arrays: Any) -> None:
        """Hand the arrays of the current sample's training fields to dpx (no copy is made)."""
        self._set(arrays, training=True)

    def set_additional_data(self, **arrays: Any) -> None:
        """Hand the arrays of the current sample's additional fields to dpx."""
        self._set(arrays, training=False)

    @property
    def fields(self) -> dict[str, Field]:
        """Every declared field by name, training fields first."""
        try:
            return self._fields
        except AttributeError:
            self._fields = {name: Field(name) for name in TRAINING_FIELDS}
            return self._fields

    @property
    def sample(self) -> dict[str, np.ndarray]:
        """The arrays set for the current sample."""
        try:
            return self._sample
        except AttributeError:
            self._sample: dict[str, np.ndarray] = {}
            return self._sample

    # -- named parameters stored with the dataset --------------------------------------

    def save_parameters(self, **parameters: Any) -> None:
        """Store named constants with the dataset (a mesh's rest positions, a scene's constants).

        Values are numeric or bool arrays, or JSON values; names are
        identifiers. Call it from :meth:`create`, :meth:`init` or
        :meth:`init_database`: dpx takes them once the environment has started
        and stores them in the dataset the pipeline writes, for this
        ``instance_id``. Not to be confused with a sampler's parameter space,
        which draws values per sample.
        """
        from dpx.core.parameters import check_parameters

        if getattr(self, "_parameters_taken", False):
            raise RuntimeError(
                f"{type(self).__name__}.save_parameters() was called after the environment started; "
                "call it from create(), init() or init_database()"
            )
        self._saved_parameters = {**getattr(self, "_saved_parameters", {}),
                                  **check_parameters(parameters, type(self).__name__)}

    def load_parameters(self) -> dict[str, Any]:
        """The named parameters stored with the dataset the pipeline reads (see :meth:`save_parameters`).

        Those this ``instance_id`` saved, else those of instance 0 (a run with
        more environments than the one that saved them); ``{}`` when none were
        stored. Available from :meth:`create` on.
        """
        return dict(getattr(self, "_stored_parameters", {}))
    # -- sample parameters, drawn per sample by a sampler -----------------------------

    def define_parameters(self, *parameters: Any) -> None:
        """Declare the parameters a sample depends on (:class:`dpx.Parameter`), in ``__init__``.

        dpx then draws them per sample (with the run's sampler), sets them in
        :attr:`sample_parameters` before each ``step()`` and stores them in the
        additional field ``parameters`` (see :mod:`dpx.core.space`).
        """
        from dpx.core.space import PARAMETERS_FIELD, ParameterSpace, ParameterValues

        space = ParameterSpace(_flatten(parameters))
        self._parameter_space = space
        self.sample_parameters = ParameterValues(space)
        self._add_fields([Field(PARAMETERS_FIELD, np.float64, (len(space),), training=False)])

    def draw_parameters(self) -> Any:
        """Draw this sample's parameters from :attr:`rng` (uniformly in each one's scale), outside a pipeline.

        In a pipeline dpx sets :attr:`sample_parameters` before each ``step()``;
        a simulation stepping itself (a ``runSofa`` scene, a unit test) calls
        this at the start of each sample instead.
        """
        from dpx.core.space import PARAMETERS_FIELD

        values = self.sample_parameters
        values.array = self.parameter_space.from_unit(self.rng.random((1, len(values.space))))[0]
        self.sample[PARAMETERS_FIELD] = values.array  # the sample's provenance, as a pipeline stores it
        return values

    @property
    def parameter_space(self) -> Any:
        """The declared :class:`~dpx.core.space.ParameterSpace` (empty when none is declared)."""
        space = getattr(self, "_parameter_space", None)
        if space is None:
            from dpx.core.space import ParameterSpace

            space = self._parameter_space = ParameterSpace()
        return space

    # -- requests --------------------------------------------------------------------

    def get_prediction(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Ask the network for a prediction on ``inputs`` (e.g. ``input=array``).

        Available in the Prediction pipeline, where the request travels to the
        process holding the network and back; in Training, where the network
        being trained answers with its weights of the moment (between two
        optimisation steps, in eval mode, with the training's normalisation);
        and outside pipelines through :meth:`connect_predictor`.
        """
        predictor = getattr(self, "_predictor", None)
        if predictor is None:
            raise RuntimeError(
                f"{type(self).__name__}.get_prediction() needs a network: "
                "it is available in the Prediction and Training pipelines (not in DataGeneration); "
                "outside a pipeline, connect one with connect_predictor(dpx.load_predictor(session))"
            )
        return predictor(inputs)

    def connect_predictor(
        self, predictor: Predictor | Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None
    ) -> None:
        """Answer :meth:`get_prediction` with ``predictor`` (``None`` disconnects), outside a pipeline.

        For simulators that run their own loop (a ``runSofa`` scene): load the
        network with :func:`dpx.load_predictor` and connect it here (any
        callable returning ``{"prediction": array}`` works too, unchecked). The
        fields the environment has declared are checked against the network's
        now, and fields declared later when they are: a mismatch is a
        :class:`~dpx.core.config.ConfigError` naming both shapes.
        """
        self._check_predictor(predictor)
        self._predictor = predictor

    @property
    def factory(self) -> VisualFactory:
        """Where :meth:`init_visualization` describes objects and ``step`` updates them."""
        try:
            return self._factory
        except AttributeError:
            from dpx.core.visual import VisualFactory

            self._factory = VisualFactory()
            return self._factory

    def update_visualisation(self) -> None:
        """Send the visual objects' changes to the viewer, if one is attached (never blocks)."""
        viewer = getattr(self, "_viewer", None)
        if viewer is not None:
            viewer(self.instance_id, self.factory.take_updates())

    # -- plumbing used by dpx -----------------------------------------------------------

    def _add_fields(self, new: Iterable[Field]) -> None:
        fields = self.fields
        for f in new:
            if f.name in fields and fields[f.name].training != f.training:
                raise FieldError(f"field {f.name!r} is declared both as a training and an additional field")
            fields[f.name] = f
        self._check_predictor(getattr(self, "_predictor", None))

    def _check_predictor(self, predictor: Any) -> None:
        """The declared fields' shapes against a :class:`~dpx.core.predictor.Predictor`'s network."""
        check_fields = getattr(predictor, "check_fields", None)
        if check_fields is not None:
            check_fields(type(self).__name__, {name: f.shape for name, f in self.fields.items()})

    def _set(self, arrays: dict[str, Any], training: bool) -> None:
        fields = self.fields
        sample = self.sample
        for name, value in arrays.items():
            f = fields.get(name)
            if f is None or f.training != training:
                raise FieldError(self._unknown_field_message(name, training))
            sample[name] = value

    def _unknown_field_message(self, name: str, training: bool) -> str:
        kind = "training" if training else "additional"
        declared = [n for n, f in self.fields.items() if f.training == training]
        call = "define_training_fields" if training else "define_additional_fields"
        return (
            f"{type(self).__name__} (instance {self.instance_id}) set {kind} field {name!r}, "
            f"which is not declared; {kind} fields are {declared}. Declare it with {call}() in init_database()."
        )

    def _attach(self, instance_id: int, instance_nb: int, rng: np.random.Generator) -> None:
        self.instance_id, self.instance_nb, self.rng = instance_id, instance_nb, rng

    def _connect(self, **hooks: Callable[..., Any] | None) -> None:
        """Attach what dpx routes requests to: ``predictor`` (for :meth:`get_prediction`)
        and ``viewer`` (for :meth:`update_visualisation`)."""
        for name, hook in hooks.items():
            if name not in ("predictor", "viewer"):
                raise TypeError(f"unknown environment hook {name!r}")
            setattr(self, f"_{name}", hook)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} instance {self.instance_id}/{self.instance_nb}>"


def _flatten(specs: tuple[Any, ...], fields: Any = None) -> list[Any]:
    """Accept ``define_training_fields(a, b)`` and DeepPhysX's ``define_training_fields([a, b])``
    and ``define_training_fields(fields=[a, b])`` (or ``fields=a``)."""
    if fields is not None:
        specs = (*specs, *(fields if isinstance(fields, list) else [fields]))
    if len(specs) == 1 and isinstance(specs[0], list):
        return list(specs[0])
    return list(specs)
