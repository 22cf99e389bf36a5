"""Export a session's trained network to a file that runs without dpx.

A surrogate often runs where Python and PyTorch cannot follow: a C++
simulator, a SOFA component, a light Python process. :func:`export` loads the
network as ``Prediction`` would, hands it to an exporter (a component of the
``dpx_exporters`` hook: ``onnx`` and ``pt2`` come with dpx-torch) and writes
the result in a new folder. The file alone maps raw inputs, as the
environment sets them, to de-normalised outputs, and carries what a consumer
needs to check it is fed right (see :func:`metadata`).

Everything a user can get wrong (no network, an unknown format, a folder that
exists, a backend the format cannot read) is refused before anything is
written; the exporter writes into a temporary folder renamed into place when
it succeeds, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dpx.core.config import ConfigError, NetworkConfig
from dpx.core.network import FieldSpecs, NoNetworkError, checkpoint_path, find_checkpoint
from dpx.core.prediction import _sha256
from dpx.core.predictor import load_network, saved_config

#: What ``which`` accepts besides an epoch number.
WHICH_NAMES = ("last", "best")
#: The ``format`` entry of the metadata: a consumer checks it before trusting the rest.
METADATA_FORMAT = "dpx-export/1"


class ExportError(ValueError):
    """A network cannot be exported: the format cannot express one of its operations, or the target is taken."""


def export(
    session: str | os.PathLike,
    format: str = "onnx",
    which: int | str = "last",
    out: str | os.PathLike | None = None,
    network_config: NetworkConfig | None = None,
    exporter_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Export the network ``which`` (``"last"``, ``"best"`` or an epoch number) of ``session``; return the folder.

    ``out`` is a folder that must not exist yet (default:
    ``SESSION/export/<network file>-<format>``). ``network_config`` is needed
    only for a network trained with an import-path class (a checkpoint never
    names code to import); ``exporter_kwargs`` go to the exporter (``pt2``:
    ``aoti=False`` skips the AOTInductor package).
    """
    from dpx.plugins import get_plugins

    session_path = Path(session)
    if not session_path.is_dir():
        raise ConfigError(f"session {str(session)!r} is not a folder")
    config = network_config or NetworkConfig()
    checkpoint = _checkpoint(session_path, config.network_name, which)
    if network_config is None:
        config = saved_config(config, checkpoint)
    plugins = get_plugins()
    exporter_info, _ = plugins.component("exporters", format)
    exporter_class = plugins.load("exporters", format)
    backends = getattr(exporter_class, "backends", None)
    if backends is not None and config.backend not in backends:
        raise ConfigError(
            f"format {format!r} exports networks of the {', '.join(backends)} backend(s); "
            f"{checkpoint} is a network of the {config.backend!r} backend"
        )
    target = Path(out) if out is not None else session_path / "export" / f"{checkpoint.stem}-{format}"
    if target.exists():
        raise ExportError(f"the target folder {target} exists; remove it or give another one (--out DIR)")
    try:
        exporter = exporter_class(**(exporter_kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"exporter_kwargs={exporter_kwargs!r} rejected by format {format!r}: {exc}") from None
    network, fields = load_network(dataclasses.replace(config, device="cpu"), checkpoint)
    backend_info, _ = plugins.component("network_backends", config.backend)
    epoch = plugins.load("network_backends", config.backend).read_extra(checkpoint).get("epoch")
    record = metadata(config, fields, checkpoint, session_path, network.nb_parameters, epoch,
                      {info.distribution or info.name: info.version for info in (backend_info, exporter_info)})
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        exporter.export(network, staging, record)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _checkpoint(session: Path, name: str, which: int | str) -> Path:
    """The checkpoint file ``which`` of ``session``, or a NoNetworkError saying what the session holds."""
    if isinstance(which, str) and which not in WHICH_NAMES:
        if not which.isdigit():
            raise ConfigError(f"which={which!r} must be 'last', 'best' or an epoch number")
        which = int(which)
    epoch = -1 if which == "last" else which
    try:
        return find_checkpoint(session, name, epoch, "session")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        if which == "best":  # every training keeps one; a session's files may have been pruned by hand
            raise NoNetworkError(
                f"session {str(session)!r} holds no best network ({checkpoint_path(Path(), name, 'best')}); "
                "export the last one (--which last) or an epoch (--which N)"
            ) from None
        raise NoNetworkError(f"no trained network to export: {exc}; train first (dpx train)") from None


def metadata(
    config: NetworkConfig, fields: FieldSpecs, checkpoint: Path, session: Path, parameters: int, epoch: int | None,
    plugins: dict[str, str | None],
) -> dict[str, Any]:
    """What an exported file says about itself: enough to feed it and to trace it back to its training.

    Inputs are the raw fields as the environment sets them; outputs are
    de-normalised, in the network's ``data_type``. Shapes are one sample's
    (the exported graph takes any batch size in front).
    """
    from dpx import __version__

    def field(name: str, dtype: str | None = None) -> dict[str, Any]:
        spec_dtype, shape = fields[name]
        return {"name": name, "dtype": dtype or str(spec_dtype), "shape": list(shape)}

    return {
        "format": METADATA_FORMAT,
        "inputs": [field(name) for name in config.input_fields],
        "outputs": [field(name, config.data_type) for name in config.target_fields],
        "batch_dimension": "dynamic, first axis",
        "normalization": "folded into the graph: raw inputs in, de-normalised outputs out",
        "network": {
            "name": config.network_name,
            "backend": config.backend,
            "architecture": config.network_class if isinstance(config.network_class, str) else
            f"{config.network_class.__module__}:{config.network_class.__qualname__}",
            "network_kwargs": config.network_kwargs,
            "data_type": config.data_type,
            "parameters": parameters,
            "checkpoint": checkpoint.name,
            "epoch": epoch,
            "checkpoint_sha256": _sha256(checkpoint),
        },
        "versions": {"dpx-core": __version__, **plugins},
        "session": str(session.resolve()),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

