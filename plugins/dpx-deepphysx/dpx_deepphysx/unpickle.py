"""Read the pickled NumPy arrays of DeepPhysX files, running no code from them.

DeepPhysX's SimulationSimpleDatabase stores each array as a pickle: loading
one with ``pickle.loads`` runs whatever callable the file names. This
unpickler resolves only the names a pickled plain numeric array refers to
(NumPy 1.x writes ``numpy.core.multiarray._reconstruct``, NumPy 2
``numpy._core.multiarray``; protocol 2 adds ``_codecs.encode`` and ``bytes`` for raw data,
protocol 5 ``numpy.core.numeric._frombuffer``) and hands out stand-ins for
them, never NumPy's own reconstruction: the stand-ins check the dtype (plain
numeric or bool), the shape and that the raw bytes are exactly as long as
they say before an array is made with :func:`numpy.frombuffer`. Nothing is
allocated from a declared size, and an object array has no way in.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from dpx.core.environment import FieldError, check_field_dtype
from dpx.core.storage import MAX_DIMENSIONS


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that is not a plain numeric NumPy array."""


class _Sealed:
    """What a pickle gets for an allowed name: no opcode can change it (BUILD calls ``__setstate__``)."""

    __slots__ = ("_function",)

    def __init__(self, function: Any = None) -> None:
        self._function = function

    def __call__(self, *args: Any) -> Any:
        if self._function is None:
            raise RefusedPickle("numpy.ndarray is not called, only named")
        return self._function(*args)

    def __setstate__(self, state: object) -> None:
        raise RefusedPickle("it changes the state of an allowed function")


#: What ``numpy.ndarray`` resolves to: a marker, not the class, so no opcode can build an array from it.
_NDARRAY = _Sealed()


class _DType:
    """``numpy.dtype(code, align, copy)`` as a pickle rebuilds it, checked before a real dtype is made."""

    code: str | None = None
    byteorder = "="

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not isinstance(code, str):
            raise RefusedPickle(f"dtype {code!r} is not a type code")
        try:
            check_field_dtype("array", code)
        except FieldError:
            raise RefusedPickle(f"dtype {code!r} is not a plain numeric or bool type") from None
        self.code = code

    def __setstate__(self, state: object) -> None:
        # (version, byte order, subarray, names, fields, element size, alignment, flags): only a plain type
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)):
            raise RefusedPickle(f"dtype state {state!r} is not that of a plain numeric type")
        self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        if self.code is None:
            raise RefusedPickle("a dtype was built without its type code")
        parsed = np.dtype(self.code)
        return parsed if self.byteorder in ("|", "=") else parsed.newbyteorder(self.byteorder)


class _Array:
    """An array as ``_reconstruct`` + ``__setstate__`` rebuild it; :attr:`value` once its state is read."""

    value: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, fortran order, raw data)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise RefusedPickle("the array state is not (shape, dtype, order, data)")
        shape, dtype, fortran, data = state
        self.value = _array(data, dtype, shape, "F" if fortran is True else "C")


def _array(data: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """The array ``data`` holds, once dtype, shape, order and length are checked."""
    if not isinstance(dtype, _DType):
        raise RefusedPickle("the array's dtype is not a plain numeric dtype")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMENSIONS
            and all(type(n) is int and n >= 0 for n in shape)):
        raise RefusedPickle(f"the array's shape {shape!r} is not a tuple of non-negative integers")
    if order not in ("C", "F"):
        raise RefusedPickle(f"the array's order {order!r} is neither C nor F")
    if isinstance(data, pickle.PickleBuffer):
        data = data.raw()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RefusedPickle(f"the array's data is a {type(data).__name__}, not raw bytes")
    parsed = dtype.dtype()
    expected = parsed.itemsize * math.prod(shape)
    if len(data) != expected:
        raise RefusedPickle(f"the array's data holds {len(data)} bytes where shape {shape} of {parsed} needs {expected}")
    return np.frombuffer(data, parsed).reshape(shape, order=order)


def _reconstruct(subtype: object, shape: object, code: object) -> _Array:
    """NumPy's ``_reconstruct(ndarray, (0,), b'b')``: the empty array a pickle then fills with its state."""
    if subtype is not _NDARRAY or shape != (0,) or code != b"b":
        raise RefusedPickle("only plain numpy.ndarray objects are rebuilt")
    return _Array()


def _frombuffer(data: object, dtype: object, shape: object, order: object) -> _Array:
    """NumPy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``."""
    array = _Array()
    array.value = _array(data, dtype, shape, order)
    return array


def _latin1(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how a protocol-2 pickle carries bytes; no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"only latin1 text is decoded to bytes, not {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()``: how a protocol-2 pickle carries the data of an empty array."""
    if args:
        raise RefusedPickle("bytes are built only empty")
    return b""


#: (module, name) -> what a pickle gets when it names it; everything else is refused.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _Sealed(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Sealed(_reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _Sealed(_frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _Sealed(_frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _Sealed(_latin1),
    ("__builtin__", "bytes"): _Sealed(_empty_bytes),
    ("builtins", "bytes"): _Sealed(_empty_bytes),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise RefusedPickle(f"it names {module}.{name}, and only NumPy's array reconstruction is allowed")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("it refers to a persistent object")


def load_array(blob: bytes) -> np.ndarray:
    """The plain numeric array pickled in ``blob``; :class:`RefusedPickle` for anything else.

    Damaged pickles raise what the unpickler raises (``UnpicklingError``,
    ``EOFError``, ``ValueError``...): callers name the row and report them.
    """
    result = _ArrayUnpickler(io.BytesIO(blob)).load()
    if not isinstance(result, _Array) or result.value is None:
        raise RefusedPickle(f"it holds a {type(result).__name__}, not a NumPy array")
    return result.value
