"""Named parameters stored with a dataset: DeepPhysX's ``save_parameters`` / ``load_parameters``.

An environment saves named constants once (a mesh's rest positions, a
scene's constants) with :meth:`~dpx.Environment.save_parameters`; the pipeline
writing the dataset stores them, per ``instance_id``, and an environment of a
later pipeline (training, prediction, a worker on another machine) gets them
back from :meth:`~dpx.Environment.load_parameters`. They are constants of a
dataset, not the per-sample values a sampler draws from a parameter space.

Layout in the dataset folder::

    parameters/parameters.json   {"format": "dpx-parameters", "version": 1, "instances":
                                  {"0": {"young": {"value": 1000.0},
                                         "rest": {"dtype": "<f4", "shape": [10, 3]}}}}
    parameters/0.rest.npy        one .npy file per array, C order, no pickles

A Training that reads another session's dataset copies its parameters into
its own session, so a Prediction in the network's session finds them.

A shared dataset is untrusted input, so these files are checked as the
dataset's index is: names are identifiers, dtypes plain numeric or bool,
shapes and sizes checked against the files before anything is allocated, and
files are opened inside the dataset folder without following links. Workers
never read the folder: the runner hands each environment its parameters
(arrays as raw buffers, see :func:`pack`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.environment import FieldError, check_field_dtype, check_field_name
from dpx.core.storage import MAX_DIMENSIONS, CorruptDatasetError, StorageError, open_dir, open_file, read_json

log = logging.getLogger("dpx.parameters")

FOLDER = "parameters"
MANIFEST = "parameters.json"
FORMAT, VERSION = "dpx-parameters", 1
#: Bounds on what a manifest and an array file may declare.
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARRAY_BYTES = 1 << 34

#: Parameters by instance id, each a dict of arrays and JSON values by name.
Stored = dict[int, dict[str, Any]]


def check_parameters(values: Mapping[str, Any], who: str) -> dict[str, Any]:
    """``values`` as they are stored: arrays copied (numeric or bool), other values as JSON reads them back."""
    checked: dict[str, Any] = {}
    for name, value in values.items():
        try:
            check_field_name(name, "parameter")
            if isinstance(value, (np.ndarray, np.generic)):
                array = np.array(value)  # a copy: the environment may change its own array later
                check_field_dtype(name, array.dtype, "parameter")
                if array.ndim > MAX_DIMENSIONS or array.nbytes > MAX_ARRAY_BYTES:
                    raise FieldError(f"parameter {name!r}: arrays of at most {MAX_DIMENSIONS} dimensions and "
                                     f"{MAX_ARRAY_BYTES} bytes are stored")
                checked[name] = array
                continue
            try:
                checked[name] = json.loads(json.dumps(value, allow_nan=False))
            except (TypeError, ValueError):
                raise FieldError(
                    f"parameter {name!r}: {str(value)[:80]!r} is neither a numeric array nor a JSON value "
                    "(number, string, bool, None, list, dict)"
                ) from None
        except FieldError as exc:
            raise FieldError(f"{who}.save_parameters(): {exc}") from None
    return checked


def for_instance(stored: Stored, instance_id: int) -> dict[str, Any]:
    """What environment ``instance_id`` loads: its own set, else instance 0's."""
    return dict(stored.get(instance_id, stored.get(0, {})))


def pack(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they travel to and from workers: arrays as raw buffers, the rest as one JSON text
    (so no value can pass for a transport placeholder)."""
    arrays = {name: value for name, value in parameters.items() if isinstance(value, np.ndarray)}
    values = {name: value for name, value in parameters.items() if name not in arrays}
    return {"arrays": arrays, "json": json.dumps(values)}


def unpack(packed: Any, who: str) -> dict[str, Any]:
    """The parameters a peer sent with :func:`pack` (``None``: none), checked; ``ValueError`` otherwise.

    ``who`` names the environment in the errors of :func:`check_parameters`.
    """
    if packed is None:
        return {}
    try:
        arrays, values = packed["arrays"], json.loads(packed["json"])
        if not isinstance(arrays, dict) or not isinstance(values, dict) or set(arrays) & set(values):
            raise ValueError("malformed")
        if not all(isinstance(a, np.ndarray) for a in arrays.values()):
            raise ValueError("an array is not one")
        return check_parameters({**arrays, **values}, who)
    except (FieldError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"malformed parameters ({str(exc)[:200]})") from None


def give(runner: Any, dataset: str | os.PathLike | None) -> None:
    """Hand ``runner`` the parameters stored in ``dataset`` (none when it is None), before it starts."""
    runner.stored_parameters = read_parameters(dataset) if dataset is not None else {}


def keep(runner: Any, dataset: str | os.PathLike | None) -> None:
    """Store what the runner's environments saved in ``dataset``, once they started.

    With no dataset to write (``None``: the run only reads one, or records
    nothing), saved values that differ from the stored ones are dropped: said
    at the info level, as such runs are usual (a prediction without ``record``).
    """
    saved = getattr(runner, "saved_parameters", {})
    if dataset is not None:
        added = write_parameters(dataset, saved)
        if added:
            log.info("dpx: stored parameters %s in %s", ", ".join(added), dataset)
        return
    stored = getattr(runner, "stored_parameters", {})
    dropped = [f"{instance}.{name}" for instance, values in saved.items() for name, value in values.items()
               if name not in stored.get(instance, {}) or not _same(stored[instance][name], value)]
    if dropped:
        log.info("dpx: parameters %s saved by the environments are not stored: this run writes no dataset",
                 ", ".join(sorted(dropped)))


# -- on disk ---------------------------------------------------------------------------


def read_parameters(dataset: str | os.PathLike) -> Stored:
    """Every instance's stored parameters (``{}`` when none); :class:`CorruptDatasetError` on anything malformed."""
    root = Path(dataset)
    manifest = _read_manifest(root)
    stored: Stored = {}
    for instance, entries in manifest["instances"].items():
        values = stored[int(instance)] = {}
        for name, entry in entries.items():
            values[name] = entry["value"] if "value" in entry else _read_array(root, int(instance), name, entry)
    return stored


def write_parameters(dataset: str | os.PathLike, saved: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """Add the parameters environments ``saved`` to the dataset; returns the names added, as ``instance.name``.

    A name stored before with the same value is left as it is; with another
    value it is refused (``StorageError``): the stored samples were made with
    the first one. Array files are written first, the manifest last and
    atomically, so an interrupted write leaves the previous parameters intact.
    """
    root = Path(dataset)
    if not any(saved.values()):
        return []
    manifest = _read_manifest(root)
    stored = read_parameters(root)
    added = []
    for instance, values in saved.items():
        entries = manifest["instances"].setdefault(str(instance), {})
        for name, value in values.items():
            if name in entries:
                if not _same(stored[instance][name], value):
                    raise StorageError(
                        f"{root}: parameter {name!r} of environment {instance} is stored with another value, and "
                        "the stored samples were made with it; keep the value, or write to a new session"
                    )
                continue
            if isinstance(value, np.ndarray):
                _write_file(root, f"{instance}.{name}.npy",
                            lambda file, array=value: np.save(file, array, allow_pickle=False))
                entries[name] = {"dtype": value.dtype.str, "shape": list(value.shape)}
            else:
                entries[name] = {"value": value}
            added.append(f"{instance}.{name}")
    if added:
        text = json.dumps(manifest, indent=1).encode()
        _write_file(root, MANIFEST, lambda file: file.write(text))
    return added


def describe(dataset: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``{instance: {name: "float32 (10, 3)" or the JSON value}}``, for ``dpx info``."""
    manifest = _read_manifest(Path(dataset))
    def shown(entry: dict[str, Any]) -> str:
        return f"{np.dtype(entry['dtype'])} {tuple(entry['shape'])}" if "dtype" in entry else json.dumps(entry["value"])[:60]

    return {instance: {name: shown(entry) for name, entry in entries.items()}
            for instance, entries in manifest["instances"].items()}


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / FOLDER / MANIFEST
    try:
        fd = open_file(root, (FOLDER, MANIFEST), os.O_RDONLY)
    except FileNotFoundError:
        return {"format": FORMAT, "version": VERSION, "instances": {}}
    try:
        manifest = read_json(fd, MAX_MANIFEST_BYTES)
        _check_manifest(manifest)
    except (ValueError, RecursionError, FieldError) as exc:
        raise CorruptDatasetError(f"{path} is unreadable: {str(exc)[:300]}") from None
    return manifest


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} version {VERSION} manifest")
    instances = manifest.get("instances")
    if not isinstance(instances, dict):
        raise ValueError("'instances' must be an object")
    for instance, entries in instances.items():
        if not (instance.isdigit() and str(int(instance)) == instance) or not isinstance(entries, dict):
            raise ValueError(f"instance {instance[:20]!r} must be a number holding an object of parameters")
        for name, entry in entries.items():
            check_field_name(name, "parameter")
            if not isinstance(entry, dict) or not (set(entry) == {"value"} or set(entry) == {"dtype", "shape"}):
                raise ValueError(f"parameter {name!r}: expected {{'value': ...}} or {{'dtype': ..., 'shape': ...}}")
            if "dtype" in entry:
                _check_array_entry(name, entry["dtype"], entry["shape"])


def _check_array_entry(name: str, dtype: Any, shape: Any) -> None:
    """A manifest's array: a storable dtype, at most ``MAX_DIMENSIONS`` sizes, at most ``MAX_ARRAY_BYTES``."""
    if not isinstance(dtype, str):
        raise ValueError(f"parameter {name!r}: dtype {str(dtype)[:20]} is not a dtype name")
    itemsize = check_field_dtype(name, dtype, "parameter").itemsize
    sizes = isinstance(shape, list) and len(shape) <= MAX_DIMENSIONS and all(type(n) is int and n >= 0 for n in shape)
    if not sizes or itemsize * math.prod(shape) > MAX_ARRAY_BYTES:
        raise ValueError(f"parameter {name!r}: dtype {dtype[:20]} and shape {str(shape)[:80]} are not a storable array")


def _read_array(root: Path, instance: int, name: str, entry: dict[str, Any]) -> np.ndarray:
    """The array file of ``name``, checked against the manifest before its data is allocated."""
    filename = f"{instance}.{name}.npy"
    path = root / FOLDER / filename
    dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
    try:
        fd = open_file(root, (FOLDER, filename), os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptDatasetError(f"{path} is missing; {FOLDER}/{MANIFEST} lists it") from None
    with open(fd, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"format version {version} is not one dpx writes")
            header = read_header[version](file, max_header_size=10_000)
        except (ValueError, SyntaxError, TypeError, OSError) as exc:
            raise CorruptDatasetError(f"{path} is not a .npy file: {str(exc)[:200]}") from None
        if header != (shape, False, dtype):
            order = " (Fortran order)" if header[1] else ""
            raise CorruptDatasetError(f"{path} holds {header[2]} {header[0]}{order}, "
                                      f"where {MANIFEST} says {dtype} {shape}")
        left = os.fstat(file.fileno()).st_size - file.tell()
        array = np.empty(shape, dtype)
        if left != array.nbytes:
            raise CorruptDatasetError(f"{path} holds {left} bytes of data where {dtype} {shape} needs {array.nbytes}")
        if array.nbytes:
            file.readinto(memoryview(array).cast("B"))
    return array


def _write_file(root: Path, filename: str, write: Any) -> None:
    """Write ``filename`` in the parameters folder through a fresh temporary file replaced atomically."""
    folder = open_dir(root, (FOLDER,), create=True)
    try:
        temporary = f".{filename}.tmp"
        try:
            os.unlink(temporary, dir_fd=folder)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644, dir_fd=folder)
        try:
            with open(fd, "wb") as file:
                write(file)
            os.replace(temporary, filename, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def _same(stored: Any, value: Any) -> bool:
    if isinstance(stored, np.ndarray) or isinstance(value, np.ndarray):
        return (isinstance(stored, np.ndarray) and isinstance(value, np.ndarray) and stored.dtype == value.dtype
                and np.array_equal(stored, value, equal_nan=stored.dtype.kind in "fc"))
    return stored == value
