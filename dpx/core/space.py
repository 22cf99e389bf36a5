"""Parameter spaces: the inputs a sample depends on, declared by an environment.

An environment that declares its parameters lets dpx choose them (a sampler
draws them, see :mod:`dpx.core.sampling`), hand them to ``step()`` in
``self.sample_parameters`` and store them with each sample in the additional
field ``parameters`` (provenance: which parameters made this sample)::

    class Spring(dpx.Environment):
        def __init__(self):
            self.define_parameters(
                dpx.Parameter("stiffness", 1.0, 100.0, scale="log"),
                dpx.Parameter("mass", 0.5, 2.0),
            )

        def step(self):
            k = self.sample_parameters["stiffness"]

Every sampler works in the unit cube ``[0, 1)^d``; :meth:`ParameterSpace.from_unit`
maps its points to values (log scale, integers, a truncated normal), so a new
sampler never deals with scales.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dpx.core.environment import check_field_name

#: The additional field holding each sample's parameter vector, in declaration order.
PARAMETERS_FIELD = "parameters"
#: Where a dataset's metadata keeps the space (the names of the columns of ``parameters``).
PARAMETER_SPACE_KEY = "parameter_space"
SCALES = ("linear", "log")
DISTRIBUTIONS = ("uniform", "normal")


class ParameterError(ValueError):
    """A parameter is declared wrongly, or a sampler proposed values outside its space."""


@dataclass(frozen=True)
class Parameter:
    """One input of a sample: ``name`` ranging over ``[low, high]``.

    ``scale="log"`` spreads draws evenly over orders of magnitude (``low > 0``);
    ``integer=True`` draws whole numbers in ``low..high`` inclusive;
    ``distribution="normal"`` draws from a normal of ``mean`` and ``std``
    (default: the middle, a sixth of the range) truncated to the bounds,
    instead of uniformly (linear scale only).
    """

    name: str
    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"
    integer: bool = False
    distribution: Literal["uniform", "normal"] = "uniform"
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        try:
            check_field_name(self.name, "parameter")
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        where = f"parameter {self.name!r}"
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                raise ParameterError(f"{where}: {bound}={value!r} must be a finite number")
            object.__setattr__(self, bound, float(value))
        if self.low > self.high:
            raise ParameterError(f"{where}: low={self.low:g} is above high={self.high:g}; the bounds are reversed")
        if self.scale not in SCALES:
            raise ParameterError(f"{where}: scale={self.scale!r} must be one of {', '.join(map(repr, SCALES))}")
        if self.scale == "log" and self.low <= 0:
            raise ParameterError(f"{where}: a log scale needs low > 0, got low={self.low:g}; "
                                 "shift the parameter or use scale='linear'")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ParameterError(f"{where}: an integer parameter needs whole bounds, got [{self.low:g}, {self.high:g}]")
        if self.distribution not in DISTRIBUTIONS:
            raise ParameterError(f"{where}: distribution={self.distribution!r} must be one of "
                                 f"{', '.join(map(repr, DISTRIBUTIONS))}")
        if self.distribution == "normal":
            if self.scale != "linear" or self.integer:
                raise ParameterError(f"{where}: distribution='normal' needs a real parameter on a linear scale")
            mean = (self.low + self.high) / 2 if self.mean is None else self.mean
            std = (self.high - self.low) / 6 if self.std is None else self.std
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0) or self.low == self.high:
                raise ParameterError(f"{where}: mean={mean!r} and std={std!r} must be finite, std > 0, low < high")
            object.__setattr__(self, "mean", float(mean))
            object.__setattr__(self, "std", float(std))
        elif self.mean is not None or self.std is not None:
            raise ParameterError(f"{where}: mean and std are for distribution='normal'")

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (stored in the dataset and the session); :meth:`ParameterSpace.from_description` reads it."""
        described: dict[str, Any] = {"name": self.name, "low": self.low, "high": self.high, "scale": self.scale}
        if self.integer:
            described["integer"] = True
        if self.distribution != "uniform":
            described.update(distribution=self.distribution, mean=self.mean, std=self.std)
        return described


class ParameterSpace(Sequence[Parameter]):
    """The parameters of an environment, in declaration order (the columns of ``parameters``)."""

    def __init__(self, parameters: Sequence[Parameter] = ()) -> None:
        self.parameters = tuple(parameters)
        for parameter in self.parameters:
            if not isinstance(parameter, Parameter):
                raise ParameterError(f"{parameter!r} is not a dpx.Parameter")
        names = [p.name for p in self.parameters]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ParameterError(f"parameter(s) {duplicated} declared twice")
        self.names = tuple(names)
        self.index = {name: column for column, name in enumerate(names)}
        self.low = np.array([p.low for p in self.parameters])
        self.high = np.array([p.high for p in self.parameters])
        linear = np.array([p.scale == "linear" and not p.integer and p.distribution == "uniform" for p in self.parameters])
        self._span = self.high - self.low
        self._width = np.where(self._span > 0, self._span, 1.0)  # a pinned parameter (low == high) sits at 0
        #: Columns needing more than ``low + u * span``: log scale, integers, normal draws.
        self._special = [(column, p) for column, p in enumerate(self.parameters) if not linear[column]]

    def __len__(self) -> int:
        return len(self.parameters)

    def __getitem__(self, index: Any) -> Any:
        return self.parameters[index]

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParameterSpace) and self.parameters == other.parameters

    def __repr__(self) -> str:
        return f"ParameterSpace({', '.join(self.names)})"

    # -- mapping the unit cube ------------------------------------------------------------

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Values ``(n, d)`` (float64) of points ``(n, d)`` of the unit cube, per each parameter's scale and distribution."""
        unit = np.asarray(unit, dtype=np.float64)
        values = self.low + unit * self._span
        for column, p in self._special:
            u = unit[:, column]
            if p.distribution == "normal":
                values[:, column] = _truncated_normal(u, p)
            elif p.integer:
                if p.scale == "log":
                    drawn = np.floor(np.exp(math.log(p.low) + u * (math.log(p.high + 1) - math.log(p.low))))
                else:
                    drawn = np.floor(p.low + u * (p.high - p.low + 1))
                values[:, column] = np.clip(drawn, p.low, p.high)
            else:
                values[:, column] = np.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
        return values

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Where values ``(n, d)`` lie in the unit cube (the inverse of :meth:`from_unit`, up to integers'
        rounding): the coordinates samplers and diversity terms measure distances in."""
        values = np.asarray(values, dtype=np.float64)
        unit = (values - self.low) / self._width
        for column, p in self._special:
            v = values[:, column]
            if p.distribution == "normal":
                unit[:, column] = _normal_position(v, p)
            elif p.integer:
                if p.scale == "log":
                    unit[:, column] = (np.log(v + 0.5) - math.log(p.low)) / (math.log(p.high + 1) - math.log(p.low))
                else:
                    unit[:, column] = (v - p.low + 0.5) / (p.high - p.low + 1)
            elif p.high > p.low:
                unit[:, column] = (np.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
        return np.clip(unit, 0.0, 1.0)

    # -- checking what a sampler proposes ------------------------------------------------------

    def as_values(self, proposed: Any, count: int | None = None, who: str = "sampler") -> np.ndarray:
        """A sampler's proposal as a checked ``(n, d)`` float64 array.

        Accepts an ``(n, d)`` array in declaration order or ``{name: (n,) values}``;
        refuses unknown or missing names, wrong shapes, non-finite values,
        values outside the bounds and non-integers for integer parameters.
        """
        if isinstance(proposed, Mapping):
            unknown = sorted(set(proposed) - set(self.names))
            if unknown:
                raise ParameterError(f"{who} proposed unknown parameter(s) {unknown}; the space has {list(self.names)}")
            missing = [n for n in self.names if n not in proposed]
            if missing:
                raise ParameterError(f"{who} proposed no values for parameter(s) {missing}")
            columns = [np.asarray(proposed[name], dtype=np.float64).reshape(-1) for name in self.names]
            if len({len(c) for c in columns}) > 1:
                raise ParameterError(f"{who} proposed different numbers of values per parameter")
            values = np.stack(columns, axis=1) if columns else np.empty((0, 0))
        else:
            try:
                values = np.array(proposed, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ParameterError(f"{who} proposed {type(proposed).__name__} values that are not numbers: {exc}") from None
            if values.ndim != 2 or values.shape[1] != len(self):
                raise ParameterError(f"{who} proposed an array of shape {values.shape}; expected (n, {len(self)}) "
                                     f"for the parameters {list(self.names)}")
        if count is not None and len(values) != count:
            raise ParameterError(f"{who} proposed {len(values)} parameter vectors; {count} were asked for")
        if not np.isfinite(values).all():
            raise ParameterError(f"{who} proposed NaN or infinite parameter values")
        outside = (values < self.low) | (values > self.high)
        if outside.any():
            row, column = map(int, np.argwhere(outside)[0])
            p = self.parameters[column]
            raise ParameterError(f"{who} proposed {p.name}={values[row, column]:g}, outside [{p.low:g}, {p.high:g}]")
        for column, p in self._special:
            if p.integer and not np.array_equal(values[:, column], np.round(values[:, column])):
                raise ParameterError(f"{who} proposed non-integer values for integer parameter {p.name!r}")
        return values

    # -- records ---------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.parameters]

    @classmethod
    def from_description(cls, described: Any) -> ParameterSpace:
        """The space :meth:`describe` wrote (read from a dataset: untrusted, so checked)."""
        if not isinstance(described, list) or not all(isinstance(d, dict) for d in described):
            raise ParameterError(f"a parameter space is a list of parameter descriptions, not {type(described).__name__}")
        allowed = {"name", "low", "high", "scale", "integer", "distribution", "mean", "std"}
        parameters = []
        for d in described:
            extra = sorted(set(d) - allowed)
            if extra:
                raise ParameterError(f"unknown key(s) {extra} in the description of a parameter")
            try:
                parameters.append(Parameter(**d))
            except TypeError as exc:
                raise ParameterError(f"unreadable parameter description {d!r}: {exc}") from None
        return cls(parameters)


class ParameterValues(Mapping[str, float]):
    """The parameters of the sample being made, handed to the environment as ``self.sample_parameters``.

    ``values["stiffness"]`` is a float, ``values.array`` the whole vector in
    declaration order. dpx moves it from sample to sample without allocating:
    copy what must outlive ``step()``.
    """

    __slots__ = ("space", "_array")

    def __init__(self, space: ParameterSpace, array: np.ndarray | None = None) -> None:
        self.space = space
        self._array = array

    @property
    def array(self) -> np.ndarray:
        """The vector (float64, declaration order); a RuntimeError until a pipeline or
        :meth:`dpx.Environment.draw_parameters` sets it."""
        if self._array is None:
            raise RuntimeError("no parameters were drawn for this sample: a pipeline sets them before step(); "
                               "outside one, call draw_parameters() first (dpx.testing.prepare_environment does)")
        return self._array

    @array.setter
    def array(self, values: np.ndarray) -> None:
        self._array = values

    def __getitem__(self, name: str) -> float:
        return float(self.array[self.space.index[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self.space.names)

    def __len__(self) -> int:
        return len(self.space)

    def __repr__(self) -> str:
        if self._array is None:
            return "{not drawn}"
        return "{" + ", ".join(f"{n}: {v:g}" for n, v in zip(self.space.names, self.array.tolist())) + "}"


def direction_parameters() -> tuple[Parameter, Parameter]:
    """A direction as two parameters, ``direction_z`` in [-1, 1] and ``direction_azimuth`` in [0, 2 pi]:
    drawn uniformly, the direction is uniform on the sphere (Archimedes' hat-box theorem)."""
    return Parameter("direction_z", -1.0, 1.0), Parameter("direction_azimuth", 0.0, 2.0 * math.pi)


def unit_vector(z: float, azimuth: float) -> np.ndarray:
    """The unit vector of :func:`direction_parameters` ``(z, azimuth)``."""
    radius = math.sqrt(max(0.0, 1.0 - z * z))
    return np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), z])


def _truncated_normal(unit: np.ndarray, p: Parameter) -> np.ndarray:
    """The ``unit`` quantiles of a normal (``p.mean``, ``p.std``) truncated to ``[p.low, p.high]``."""
    from scipy.special import ndtr, ndtri

    a, b = ndtr((p.low - p.mean) / p.std), ndtr((p.high - p.mean) / p.std)
    return np.clip(p.mean + p.std * ndtri(a + unit * (b - a)), p.low, p.high)


def _normal_position(values: np.ndarray, p: Parameter) -> np.ndarray:
    from scipy.special import ndtr

    a, b = ndtr((p.low - p.mean) / p.std), ndtr((p.high - p.mean) / p.std)
    return (ndtr((values - p.mean) / p.std) - a) / (b - a)
