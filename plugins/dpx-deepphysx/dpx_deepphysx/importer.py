"""``python -m dpx import deepphysx PATH``: a DeepPhysX session converted into a dpx session.

What is converted, and how it is checked:

* the dataset, read through :class:`~dpx_deepphysx.storage.DeepPhysXStorage`
  (so every row passes its checks), written to dpx's own storage and read
  back, sample by sample, against the source; DeepPhysX's normalisation is
  kept, broadcast per component;
* the facts of ``dataset.json`` and ``info.txt`` go into ``session.json``;
* each saved network whose architecture is DeepPhysX's FC (``linear.N.*``
  keys: Linear layers with a PReLU between them) becomes a dpx ``fc`` network
  with ``activation="prelu"``, saved with the dataset's normalisation, so
  ``dpx predict`` and :func:`dpx.load_predictor` run it; weights are read with
  ``torch.load(weights_only=True)``;
* TensorBoard files of ``stats/`` are copied.

Anything else is listed as not converted, never dropped silently.
Everything is read and checked before the new session is created.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import ConfigError, DatabaseConfig, NetworkConfig, as_record
from dpx.core.database import Database
from dpx.core.network import checkpoint_path
from dpx.core.session import Session, outcome_of
from dpx.core.storage import MemmapStorage, StorageError
from dpx_deepphysx.storage import INDEX, DeepPhysXStorage

#: DeepPhysX's fixed names of the network's input and target fields.
INPUT, TARGET = "input", "ground_truth"
#: The keys of DeepPhysX's FC: ``linear.0.weight``, ``linear.1.weight`` (a PReLU), ...
FC_KEY = re.compile(r"linear\.(\d+)\.(weight|bias)")
#: DeepPhysX names a saved network ``network.pth``, and ``network_3.pth`` for epoch 3.
EPOCH_FILE = re.compile(r"(.+)_(\d+)")
MAX_INFO_BYTES = 1 << 20
#: What a DeepPhysX session folder holds that the import knows.
KNOWN_ENTRIES = {"dataset", "network", "stats", "info.txt"}
CHUNK = 1024


@dataclass
class ImportReport:
    """The new session, what was and was not converted, and what the user should know of how."""

    session: Path
    converted: list[str] = field(default_factory=list)
    not_converted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"imported into {self.session}"]
        lines += [f"  note: {item}" for item in self.notes]
        lines += [f"  converted: {item}" for item in self.converted]
        lines += [f"  not converted: {item}" for item in self.not_converted]
        return "\n".join(lines)


class DeepPhysXImporter:
    """``python -m dpx import deepphysx PATH``: the ``dpx_importers`` component of this plugin."""

    def import_session(self, path: str | os.PathLike, out: str | os.PathLike | None = None,
                       dataset: str | os.PathLike | None = None) -> ImportReport:
        return import_session(path, out=out, dataset=dataset)


@dataclass
class _Network:
    """A DeepPhysX network ready to be saved the dpx way."""

    source: Path
    destination_name: str
    epoch: int | None
    dim_layers: list[int]
    state_dict: dict[str, Any]


def import_session(path: str | os.PathLike, out: str | os.PathLike | None = None,
                   dataset: str | os.PathLike | None = None) -> ImportReport:
    """Convert the DeepPhysX session (or dataset) ``path`` into a new dpx session ``out``.

    ``dataset`` names the dataset a training session's ``dataset`` link points
    at: dpx follows that link only to a dataset the user names. ``out``
    defaults to ``sessions/<name>``; an existing folder is never overwritten
    (``name_1``, ``name_2``... as for every dpx session).
    """
    source = Path(path)
    notes: list[str] = []
    session_dir, dataset_dir = _locate(source, None if dataset is None else Path(dataset), notes)
    not_converted: list[str] = []
    facts: dict[str, Any] = {"source": str(source.resolve())}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    metadata: dict[str, Any] = {}
    if dataset_dir is not None:
        with DeepPhysXStorage(dataset_dir) as storage:
            for mode in storage.modes:
                arrays[mode] = {name: storage.read(mode, name, np.arange(storage.count(mode))) for name in storage.layout(mode)}
            metadata = storage.metadata
            not_converted += [f"{dataset_dir / INDEX}: column {column}: dpx stores numbers and arrays only"
                              for column in storage.skipped]
        facts["dataset"] = {"path": str(dataset_dir.resolve()), **metadata["deepphysx"]}
    info = _read_info(session_dir) if session_dir is not None else None
    if info is not None:
        facts["info"] = info
    networks: list[_Network] = []
    if session_dir is not None:
        networks = _read_networks(session_dir, arrays.get("training"), info, not_converted)
        not_converted += [f"{session_dir / name}: not a part of a DeepPhysX session dpx knows"
                          for name in sorted(os.listdir(session_dir)) if name not in KNOWN_ENTRIES]

    name = (session_dir or (dataset_dir.parent if dataset_dir.name == "dataset" else dataset_dir)).resolve().name
    target = Path(out) if out is not None else Path("sessions") / name
    session = Session.start(target.parent, target.name, new_session=True)
    report = ImportReport(session.path, not_converted=not_converted, notes=notes)
    session.record_run("Import", {"import": {"format": "deepphysx", "path": str(source),
                                             "dataset": None if dataset is None else str(dataset)}}, deepphysx=facts)
    try:
        if arrays:
            report.converted.append(_write_dataset(session, arrays, metadata))
        for network in networks:
            report.converted.append(_write_network(session, network, arrays["training"], metadata, info))
        if session_dir is not None:
            copied = _copy_stats(session_dir / "stats", session.stats_dir, report.not_converted)
            if copied:
                report.converted.append(f"stats: {copied} file(s) of training curves copied to {session.stats_dir}")
    except BaseException as exc:
        session.finish_run(outcome_of(exc))
        raise
    session.finish_run("completed", converted=report.converted, not_converted=report.not_converted, notes=notes)
    return report


# -- finding the parts ---------------------------------------------------------------------


def _locate(source: Path, named: Path | None, notes: list[str]) -> tuple[Path | None, Path | None]:
    """``(session folder, dataset folder)`` of ``source``; a dataset link is followed only to ``named``.

    A link to a folder absent here (DeepPhysX writes absolute links: the
    session was made elsewhere) gives way to the dataset the user names,
    which ``notes`` records.
    """
    if not source.is_dir():
        raise ConfigError(f"{source}: no such folder; give a DeepPhysX session or dataset folder")
    if named is not None and not named.is_dir():
        raise ConfigError(f"--dataset {named}: no such folder")
    if (source / INDEX).exists():
        if named is not None:
            raise ConfigError(f"{source} is a dataset itself: --dataset is for a training session whose dataset is a link")
        return (source.parent if source.name == "dataset" and _is_session(source.parent) else None), source
    link = source / "dataset"
    if named is not None:
        named = named / "dataset" if (named / "dataset").is_dir() and not (named / INDEX).exists() else named
    if link.is_symlink():
        target = os.readlink(link)
        resolved = (source / target).resolve()
        if named is None:
            where = f"--dataset {resolved} if that is" if resolved.exists() else "--dataset PATH naming where it is now, if it is"
            raise ConfigError(
                f"{link} is a link to {target}{'' if resolved.exists() else ', which is not here'}: dpx follows it only "
                f"to a dataset you name; add {where} the dataset this session trained on"
            )
        if not resolved.exists():
            notes.append(f"{link} is a link to {target}, which is not here: the dataset you named ({named}) was read")
        elif not os.path.samefile(named, resolved):
            raise ConfigError(f"{link} is a link to {target}, not to the dataset you named ({named})")
        return source, named
    if link.is_dir():
        if named is not None and not os.path.samefile(named, link):
            raise ConfigError(f"{source} has its own dataset ({link}); --dataset is for a dataset link")
        return source, link
    if not _is_session(source):
        raise ConfigError(f"{source} holds neither a DeepPhysX dataset ({INDEX}) nor a session (dataset/, network/, info.txt)")
    return source, named


def _is_session(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("network", "info.txt"))


def _regular_files(folder: Path, suffix: str = "") -> list[Path]:
    """The regular files of ``folder`` (links and special files are never opened); none when it is not a folder."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.endswith(suffix) and stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            found.append(Path(entry.path))
    return found


def _read_regular(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"{path} is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise StorageError(f"{path} is larger than {limit} bytes")
    return data


def _read_info(session_dir: Path) -> dict[str, Any] | None:
    """``info.txt`` as text and as ``{component: {parameter: value}}``."""
    path = session_dir / "info.txt"
    if not path.exists() and not path.is_symlink():
        return None
    text = _read_regular(path, MAX_INFO_BYTES).decode("utf-8", errors="replace")
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("session", {})
    for line in text.splitlines():
        heading = re.fullmatch(r"#+ (.+?)(?: #+)?", line.strip()) if line.startswith("#") else None
        component = re.fullmatch(r"  (\w+)", line)
        if heading or component:
            current = sections.setdefault((heading or component).group(1).strip(), {})
            continue
        key, sep, value = line.strip().partition(": ")
        if sep and key and key[0].isalpha():
            current[key] = value.strip()
    return {"text": text, "components": {name: entries for name, entries in sections.items() if entries}}


def _info_value(info: dict[str, Any] | None, key: str) -> str | None:
    for entries in (info or {}).get("components", {}).values():
        if key in entries:
            return entries[key]
    return None


# -- networks ------------------------------------------------------------------------------


def _read_networks(session_dir: Path, training: dict[str, np.ndarray] | None, info: dict[str, Any] | None,
                   not_converted: list[str]) -> list[_Network]:
    """The session's saved networks that are DeepPhysX FCs, checked; the others are listed in ``not_converted``."""
    files = _regular_files(session_dir / "network", ".pth")
    others = [p for p in _regular_files(session_dir / "network") if p.suffix != ".pth"]
    not_converted += [f"{p}: not a saved network (.pth)" for p in others]
    if not files:
        return []
    network_type = _info_value(info, "Type")
    if network_type is not None and network_type != "FC":
        not_converted += [f"{p}: a {network_type} network; dpx converts DeepPhysX's FC only (Linear and PReLU "
                          "layers); rebuild the class in dpx and load these weights into it" for p in files]
        return []
    if training is None or INPUT not in training or TARGET not in training:
        not_converted += [f"{p}: its dataset (for the fields {INPUT!r}, {TARGET!r} and their normalisation) is "
                          "not part of the import" for p in files]
        return []
    try:
        import torch
    except ImportError:
        not_converted += [f"{p}: converting a network needs PyTorch and dpx-torch (pip install dpx-torch)" for p in files]
        return []
    networks = []
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            dim_layers, state_dict = _fc_state(state)
        except Exception as exc:  # an unreadable file or another architecture: reported, the rest goes on
            not_converted.append(f"{path}: {_first_line(exc)}")
            continue
        n_in, n_out = math.prod(training[INPUT].shape[1:]), math.prod(training[TARGET].shape[1:])
        if (dim_layers[0], dim_layers[-1]) != (n_in, n_out):
            not_converted.append(f"{path}: layers {dim_layers} do not fit fields {INPUT!r} ({n_in} values) and "
                                 f"{TARGET!r} ({n_out} values) of the dataset")
            continue
        match = EPOCH_FILE.fullmatch(path.stem)
        name, epoch = (match.group(1), int(match.group(2))) if match else (path.stem, None)
        networks.append(_Network(path, name, epoch, dim_layers, state_dict))
    return networks


def _fc_state(state: Any) -> tuple[list[int], dict[str, Any]]:
    """``dim_layers`` and the state dict of dpx's ``fc`` for DeepPhysX FC weights; ValueError otherwise."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict of tensors")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = FC_KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise ValueError(f"key {key!r} is not one of DeepPhysX's FC (linear.N.weight, linear.N.bias): a custom "
                             "network, which dpx does not convert; rebuild its class in dpx and load these weights")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if sorted(layers) != list(range(len(layers))) or len(layers) % 2 == 0:
        raise ValueError(f"layers {sorted(layers)} are not DeepPhysX's FC (Linear, PReLU, ..., Linear)")
    converted: dict[str, torch.Tensor] = {}
    dim_layers: list[int] = []
    for number in range(0, len(layers), 2):
        weight = layers[number].get("weight")
        if weight is None or weight.ndim != 2 or (dim_layers and weight.shape[1] != dim_layers[-1]):
            raise ValueError(f"linear.{number}.weight is not a Linear layer following the previous one")
        dim_layers = dim_layers or [weight.shape[1]]
        dim_layers.append(weight.shape[0])
        bias = layers[number].get("bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear.{number}.bias has shape {tuple(bias.shape)}, not ({weight.shape[0]},)")
        converted[f"layers.{number}.weight"], converted[f"layers.{number}.bias"] = weight, bias
        if number + 1 < len(layers):
            slope = layers[number + 1].get("weight")
            if slope is None or set(layers[number + 1]) != {"weight"} or slope.shape not in ((1,), (weight.shape[0],)):
                raise ValueError(f"linear.{number + 1} is not a PReLU of {weight.shape[0]} units")
            converted[f"layers.{number + 1}.weight"] = slope.expand(weight.shape[0]).clone()
    return [int(n) for n in dim_layers], converted


def _write_network(session: Session, network: _Network, training: dict[str, np.ndarray], metadata: dict[str, Any],
                   info: dict[str, Any] | None) -> str:
    """Save ``network`` as a dpx-torch checkpoint of ``fc`` with the dataset's normalisation."""
    from dpx_torch.backend import TorchBackend

    config = NetworkConfig(network_class="fc", network_kwargs={"dim_layers": network.dim_layers, "activation": "prelu"},
                           input_fields=[INPUT], target_fields=[TARGET], require_training_stuff=False)
    specs = {name: (training[name].dtype, training[name].shape[1:]) for name in (INPUT, TARGET)}
    normalization = {
        name: {"mean": stats["mean"], "std": stats["std"]}
        for name, stats in metadata.get("normalization", {}).items() if name in specs
    }
    backend = TorchBackend(config, specs, {n: (np.asarray(v["mean"]), np.asarray(v["std"])) for n, v in normalization.items()})
    backend.network.load_state_dict(network.state_dict)
    epochs = _info_value(info, "Number of epochs")
    epoch = network.epoch if network.epoch is not None else (int(epochs) - 1 if epochs and epochs.isdigit() else 0)
    extra = {
        "epoch": epoch,
        "step": 0,
        "next_sample": len(training[INPUT]),
        "shuffle_rng": np.random.default_rng(0).bit_generator.state,
        "normalization": normalization,
        "fields": {name: {"dtype": str(dtype), "shape": list(shape)} for name, (dtype, shape) in specs.items()},
        "network_config": {key: value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)
                           for key, value in as_record(config).items()},
        "last_good": False,
        "stats": None,
        "deepphysx": {"source": str(network.source.resolve())},
    }
    path = checkpoint_path(session.network_dir, network.destination_name, network.epoch)
    backend.save(path, extra)
    return (f"network: {network.source.name} (DeepPhysX FC {network.dim_layers}, PReLU) as fc with "
            f"activation='prelu' in {path}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# -- dataset and stats ---------------------------------------------------------------------


def _write_dataset(session: Session, arrays: dict[str, dict[str, np.ndarray]], metadata: dict[str, Any]) -> str:
    """Store the samples in dpx's storage, then read every one back and compare it with the source."""
    with Database(session.dataset_dir, DatabaseConfig()) as database:
        for mode, fields in arrays.items():
            database.prepare(mode, {name: (values.dtype, values.shape[1:]) for name, values in fields.items()})
            count = len(next(iter(fields.values())))
            for start in range(0, count, CHUNK):
                database.append(mode, {name: values[start : start + CHUNK] for name, values in fields.items()})
        database.storage.commit(force=True, metadata=metadata)
    counts = []
    with MemmapStorage(session.dataset_dir) as stored:
        for mode, fields in arrays.items():
            for name, values in fields.items():
                copy = stored.read(mode, name, np.arange(stored.count(mode)))
                same = (copy == values) | ((copy != copy) & (values != values))
                differing = np.flatnonzero(~same.reshape(len(values), -1).all(axis=1)) if len(values) else []
                if len(copy) != len(values) or len(differing):
                    raise StorageError(f"{session.dataset_dir}: sample {differing[0] if len(differing) else len(copy)} "
                                       f"of mode {mode!r} field {name!r} differs from the DeepPhysX dataset after conversion")
            counts.append(f"{mode}: {stored.count(mode)}")
    fields = ", ".join(f"{name} {values.dtype} {values.shape[1:]}" for name, values in next(iter(arrays.values())).items())
    return f"dataset: {', '.join(counts)} samples ({fields}), each checked against the source, in {session.dataset_dir}"


def _copy_stats(source: Path, destination: Path, not_converted: list[str]) -> int:
    """Copy the regular files of DeepPhysX's ``stats/`` (TensorBoard events); links are not followed."""
    if source.is_symlink():
        not_converted.append(f"{source}: a link, not followed")
        return 0
    copied = 0
    for path in _regular_files(source):
        shutil.copyfile(path, destination / path.name, follow_symlinks=False)
        copied += 1
    return copied
