"""The ``onnx`` network backend: a network exported by ``dpx export --format onnx``, run with onnxruntime.

``NetworkConfig(backend="onnx", network_dir=EXPORT_FOLDER)`` makes
``Prediction``, ``load_predictor`` and ``Environment.get_prediction`` run the
exported file instead of a torch checkpoint. The file carries its fields,
shapes and dtypes (the ``dpx.json`` metadata entry) and its normalisation, so
this backend needs neither torch nor the training session. It cannot train.

An ONNX file is untrusted input like a checkpoint: one that onnxruntime cannot
read, whose metadata is missing or unreadable, or whose graph does not take
and give what its metadata says, is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from dpx.core.config import ConfigError, NetworkConfig
from dpx.core.export import METADATA_FORMAT
from dpx.core.network import CheckpointError, saved_fields

SUFFIX = ".onnx"
METADATA_KEY = "dpx.json"
#: ``network_kwargs`` this backend takes: onnxruntime's session options.
OPTIONS = {"threads": "threads of one operation (onnxruntime's intra_op_num_threads; 0: its default)"}
#: onnxruntime's element types -> NumPy's.
ELEMENT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(bool)": "bool",
}
INFERENCE_ONLY = (
    "the onnx backend runs exported networks and cannot train: train with the torch backend, "
    "then export (dpx export SESSION --format onnx)"
)


def _open(path: Path, threads: int = 0) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for every kind of bad file
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(f"{path} is not an ONNX network onnxruntime can run: {first}") from None


def read_metadata(session: onnxruntime.InferenceSession, path: Path) -> dict[str, Any]:
    """The ``dpx.json`` metadata of an exported file, checked enough to be used."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{path} carries no dpx metadata ({METADATA_KEY!r}): export it with dpx export")
    try:
        metadata = json.loads(text)
        if metadata["format"] != METADATA_FORMAT:
            raise ValueError(f"format {metadata['format']!r}, not {METADATA_FORMAT!r}")
        for role in ("inputs", "outputs"):
            if not metadata[role] or not all(isinstance(field["name"], str) for field in metadata[role]):
                raise ValueError(f"no {role}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its dpx metadata is unreadable ({exc!r})") from None
    return metadata


class OnnxBackend:
    """Run one exported ONNX network: raw inputs in, de-normalised outputs out."""

    def __init__(
        self,
        config: NetworkConfig,
        fields: dict[str, tuple[np.dtype, tuple[int, ...]]],
        normalization: dict[str, tuple[np.ndarray, np.ndarray]],
        seed: int | None = None,
    ) -> None:
        if config.require_training_stuff:
            raise ConfigError(INFERENCE_ONLY)
        unknown = sorted(set(config.network_kwargs) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"NetworkConfig: network_kwargs {unknown} are not options of the onnx backend (the network's "
                f"architecture is in the exported file); options: {', '.join(f'{k} ({v})' for k, v in OPTIONS.items())}"
            )
        missing = [name for name in config.input_fields + config.target_fields if name not in fields]
        if missing:
            raise ConfigError(f"NetworkConfig names field(s) {missing} that the exported network does not have; "
                              f"its fields are {sorted(fields)}")
        self.config, self.fields = config, fields
        self.threads = config.network_kwargs.get("threads", 0)
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ConfigError(f"NetworkConfig: network_kwargs threads={self.threads!r} must be an integer >= 0")
        self.session: onnxruntime.InferenceSession | None = None
        self.nb_parameters = 0

    @classmethod
    def check(cls, config: NetworkConfig, fields: Any = None) -> None:
        """Called before a training only: this backend cannot train."""
        raise ConfigError(INFERENCE_ONLY)

    @classmethod
    def find_checkpoint(cls, location: str | Path, name: str, which: int = -1, label: str = "network_dir") -> Path:
        """``NAME.onnx`` in an export folder (``dpx export --out``), or the file itself."""
        location = Path(location)
        if which != -1:
            raise ConfigError(
                f"NetworkConfig: which_network={which} picks a checkpoint of a training; an export folder holds "
                f"one network: export the one you want (dpx export SESSION --which {which} --format onnx)"
            )
        path = location if location.suffix == SUFFIX else location / f"{name}{SUFFIX}"
        if not path.is_file():
            held = sorted(p.name for p in location.glob(f"*{SUFFIX}")) if location.is_dir() else []
            raise FileNotFoundError(
                f"{label}={str(location)!r} holds no exported network {path.name!r} (ONNX files there: "
                f"{held or 'none'}); export one with dpx export SESSION --format onnx --out FOLDER"
            )
        return path

    @classmethod
    def read_extra(cls, path: Path) -> dict[str, Any]:
        """The exported file's fields and field roles, as a checkpoint's ``extra`` gives them."""
        metadata = read_metadata(_open(path), path)
        return {
            "fields": {f["name"]: {"dtype": f["dtype"], "shape": f["shape"]} for f in metadata["inputs"] + metadata["outputs"]},
            "normalization": {},  # folded into the graph
            "network_config": {"input_fields": [f["name"] for f in metadata["inputs"]],
                               "target_fields": [f["name"] for f in metadata["outputs"]]},
            "epoch": None,
            "metadata": metadata,
        }

    def load(self, path: Path, training: bool) -> dict[str, Any]:
        if training:
            raise ConfigError(INFERENCE_ONLY)
        session = _open(path, self.threads)
        metadata = read_metadata(session, path)
        specs = saved_fields({"fields": {f["name"]: f for f in metadata["inputs"] + metadata["outputs"]}}, path)
        graph = {"input": session.get_inputs(), "output": session.get_outputs()}
        for role, nodes in graph.items():
            declared = [f["name"] for f in metadata[f"{role}s"]]
            if [node.name for node in nodes] != declared:
                raise CheckpointError(f"{path}: its graph's {role}s are {[n.name for n in nodes]}, "
                                      f"its metadata says {declared}")
            for node in nodes:
                dtype, shape = specs[node.name]
                graph_dtype, graph_shape = ELEMENT_TYPES.get(node.type, node.type), tuple(node.shape[1:])
                if graph_dtype != dtype.name or graph_shape != shape:
                    raise CheckpointError(
                        f"{path}: its graph's {role} {node.name!r} is {graph_dtype} {graph_shape} per sample, "
                        f"its metadata says {dtype.name} {shape}"
                    )
        self.session, self.nb_parameters = session, int(metadata["network"].get("parameters", 0))
        self._inputs = [(name, specs[name][0]) for name in self.config.input_fields]
        self._outputs = list(self.config.target_fields)
        return {"metadata": metadata}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype) for name, dtype in self._inputs}
        return dict(zip(self._outputs, self.session.run(self._outputs, feed)))

    def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        raise ConfigError(INFERENCE_ONLY)

    def validation_loss(self, batch: dict[str, np.ndarray]) -> float:
        raise ConfigError(INFERENCE_ONLY)

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        raise ConfigError(INFERENCE_ONLY)

    @property
    def learning_rate(self) -> None:
        return None

    def parameter_histograms(self) -> dict[str, np.ndarray]:
        return {}
