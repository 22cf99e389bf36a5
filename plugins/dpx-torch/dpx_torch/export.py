"""Exporters of torch networks (the ``dpx_exporters`` hook): ONNX and ``torch.export`` (pt2).

Both export the same module, :class:`ExportedNetwork`: the torch backend's
whole prediction path (cast to the network's dtype, normalisation, the data
transformation, the network, its inverse normalisation), so the file alone
maps raw inputs to de-normalised outputs, for any batch size.

Both go through ``torch.export``. When it cannot capture a network (Python
control flow on tensor values, an operation without a rule), the export is
refused with the operation and the reason: the older tracing exporter would
instead bake one branch into the file and answer wrongly for other inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dpx.core.export import ExportError
from dpx_torch.backend import TorchBackend

#: The pt2 file's extra file (``torch.export.load(path, extra_files={EXTRA_FILE: ""})``) and the
#: AOTInductor package's metadata key holding the export's metadata as JSON.
EXTRA_FILE = METADATA_KEY = "dpx.json"


class ExportedNetwork(torch.nn.Module):
    """Raw input -> de-normalised prediction: what ``TorchBackend.predict`` computes, as one module."""

    def __init__(self, backend: TorchBackend) -> None:
        super().__init__()
        self.network, self.transformation, self.dtype = backend.network, backend.transformation, backend.dtype
        self.input_normalized = backend.input_field in backend.normalization
        self.target_normalized = backend.target_field in backend.normalization
        for role, field in (("input", backend.input_field), ("target", backend.target_field)):
            mean, std = backend.normalization.get(field, (torch.zeros(()), torch.ones(())))
            self.register_buffer(f"{role}_mean", mean.detach().to("cpu", self.dtype).clone())
            self.register_buffer(f"{role}_std", std.detach().to("cpu", self.dtype).clone())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input.to(self.dtype)
        if self.input_normalized:
            x = (x - self.input_mean) / self.input_std
        x = self.transformation.transform_before_apply(self.network(self.transformation.transform_before_prediction(x)))
        if self.target_normalized:
            x = x * self.target_std + self.target_mean
        return x


def export_program(backend: TorchBackend, metadata: dict[str, Any]) -> torch.export.ExportedProgram:
    """The backend's prediction path as a ``torch.export`` program whose batch size is free."""
    module = ExportedNetwork(backend).to("cpu").eval()
    (field,) = metadata["inputs"]
    example = torch.zeros((2, *field["shape"]), dtype=getattr(torch, field["dtype"]))  # 2: 0 and 1 specialise
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ExportError(f"{_architecture(metadata)} does not export with torch.export: {_why(exc)}") from exc


def _with_versions(metadata: dict[str, Any], **versions: str) -> dict[str, Any]:
    """``metadata`` with the versions of the libraries that wrote the file (a pt2 file needs the same torch)."""
    return {**metadata, "versions": {**metadata["versions"], "torch": torch.__version__, **versions}}


def _architecture(metadata: dict[str, Any]) -> str:
    return f"network {metadata['network']['architecture']} ({metadata['network']['checkpoint']})"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep torch's export logs (graph dumps, optional packages it skips) and deprecation warnings off the
    user's terminal: a failure is reported once, as an ExportError. A filter, as torch sets its loggers' levels."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx._internal.exporter._registration",
                                                    "torch.fx.experimental.symbolic_shapes", "torch._export")]
    for logger in loggers:
        logger.addFilter(_below_error)
    try:
        # torch.export prints the partial graph of a failed capture straight to stderr
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(_below_error)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


#: Plain words for the failures torch reports most, keyed by its exception's name.
EXPLANATIONS = {
    "GuardOnDataDependentSymNode": "the network branches on a tensor's value in Python, which one graph cannot "
                                   "hold (compute both branches and pick with torch.where, or use torch.cond)",
    "DispatchError": "this operation has no ONNX translation (export to pt2 instead, or replace the operation)",
}


def _why(exc: BaseException) -> str:
    """The operation that failed and why, in a line: the ONNX exporter's exception summary, else the first
    line of torch's (long) message with the line of the network's code it points at."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = re.search(r"## Exception summary\s*\n\s*<class '([\w.]+)'>: (.+)", text)
    if summary:
        kind, reason = summary.group(1).rpartition(".")[2], summary.group(2).strip()
    else:
        kind = type(exc).__name__
        reason = next((line.strip() for line in text.splitlines() if line.strip()), kind)
        where = [w for w in re.findall(r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)', text)
                 if "/torch/" not in w[0]]
        if where:
            file, line, function, code = where[-1]
            reason += f" at {Path(file).name}:{line} in {function}: {code.strip()}"
    explanation = EXPLANATIONS.get(kind)
    return f"{kind}: {reason}" + (f"; {explanation}" if explanation else "")


class OnnxExporter:
    """ONNX through ``torch.onnx.export``'s dynamo exporter, weights inside the file, batch size dynamic.

    The metadata is the model's ``metadata_props`` entry ``dpx.json``; the
    graph's input and output names are the field names.
    """

    backends = ("torch",)

    def __init__(self, opset_version: int | None = None) -> None:
        self.opset_version = opset_version

    def export(self, network: TorchBackend, folder: Path, metadata: dict[str, Any]) -> list[Path]:
        try:
            import onnx
            import onnxscript  # the dynamo exporter's translation rules
        except ImportError:
            raise ExportError("exporting to ONNX needs the onnx and onnxscript packages: "
                              "pip install 'dpx-torch[export]'") from None
        program = export_program(network, metadata)
        try:
            with _quiet():
                onnx_program = torch.onnx.export(
                    program, (), dynamo=True, opset_version=self.opset_version, verbose=False,
                    input_names=[f["name"] for f in metadata["inputs"]],
                    output_names=[f["name"] for f in metadata["outputs"]],
                )
        except Exception as exc:
            raise ExportError(f"{_architecture(metadata)} does not convert to ONNX: {_why(exc)}") from exc
        metadata = _with_versions(metadata, onnx=onnx.__version__, onnxscript=onnxscript.__version__)
        onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
        onnx_program.model.producer_name = "dpx"
        path = folder / f"{metadata['network']['name']}.onnx"
        onnx_program.save(path, external_data=False)
        return [path]


class Pt2Exporter:
    """``torch.export`` programs: ``NAME.pt2`` for ``torch.export.load``, and ``NAME_aoti.pt2``, compiled by
    AOTInductor for ``torch._inductor.aoti_load_package`` and C++'s ``AOTIModelPackageLoader``.

    ``aoti=None`` compiles when a C++ compiler is found (compiling takes tens
    of seconds per network); ``aoti=False`` skips it, ``aoti=True`` requires it.
    """

    backends = ("torch",)

    def __init__(self, aoti: bool | None = None) -> None:
        if aoti is not None and not isinstance(aoti, bool):
            raise ExportError(f"pt2: aoti={aoti!r} must be true, false or left out (compile when a C++ compiler is found)")
        self.aoti = aoti

    def export(self, network: TorchBackend, folder: Path, metadata: dict[str, Any]) -> list[Path]:
        compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if self.aoti and compiler is None:
            raise ExportError("pt2: aoti=True needs a C++ compiler (c++, g++ or clang++ on PATH); none was found")
        program = export_program(network, metadata)
        name = metadata["network"]["name"]
        text = json.dumps(_with_versions(metadata))
        paths = [folder / f"{name}.pt2"]
        torch.export.save(program, paths[0], extra_files={EXTRA_FILE: text})
        if self.aoti is not False and compiler is not None:
            from torch._inductor import aoti_compile_and_package

            paths.append(folder / f"{name}_aoti.pt2")
            try:
                with _quiet():
                    aoti_compile_and_package(program, package_path=str(paths[1]),
                                             inductor_configs={"aot_inductor.metadata": {METADATA_KEY: text}})
            except Exception as exc:
                raise ExportError(f"{_architecture(metadata)} does not compile with AOTInductor: {_why(exc)}") from exc
        return paths


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The dpx metadata of an exported ``.pt2`` (either kind) or ``.onnx`` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    if path.stem.endswith("_aoti"):
        from torch._inductor import aoti_load_package

        return json.loads(aoti_load_package(str(path)).get_metadata()[METADATA_KEY])
    extra = {EXTRA_FILE: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[EXTRA_FILE])
