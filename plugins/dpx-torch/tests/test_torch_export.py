"""dpx export: the files run in real consumers (onnxruntime, torch.export, AOTInductor) to dpx's own answers.

Each network is trained briefly on a normalised dataset (so that folding the
normalisation in matters), then run by ``Prediction`` with ``record=True``:
the recorded inputs and predictions are dpx's own outputs, one sample per
step. The exported files must give the same answers from the raw inputs, one
sample at a time and 64 at once, and on the stored validation samples.

The error is relative to the outputs' scale, ``max |a - b| / max |b|``: an
element-wise ratio is meaningless where an output crosses zero.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import dpx
from dpx.cli import main
from dpx.core.config import ConfigError
from dpx.core.export import ExportError, export
from dpx.core.prediction import replay
from dpx_torch.export import read_metadata
from dpx_torch.network import Network

TOLERANCE = 1e-5


class Blur3D(dpx.Environment):
    """A random 3D field and its 6-neighbour average: samples for a 3D UNet."""

    def init_database(self) -> None:
        self.define_training_fields(("input", np.float32, (1, 6, 6, 6)), ("ground_truth", np.float32, (1, 6, 6, 6)))

    def step(self) -> None:
        field = self.rng.normal(2.0, 3.0, (1, 6, 6, 6))
        blurred = sum(np.roll(field, shift, axis) for axis in (1, 2, 3) for shift in (-1, 1)) / 6
        self.set_training_data(input=field.astype(np.float32), ground_truth=blurred.astype(np.float32))


CASES = {
    "fc": ("toy.spring", {}, dpx.NetworkConfig("fc", network_kwargs={"hidden": [32, 32]}, save_each_epoch=True)),
    "unet2d": ("toy.heat", {"grid_size": 12}, dpx.NetworkConfig("unet", network_kwargs={"depth": 2, "first_channels": 4})),
    "unet3d": (Blur3D, {}, dpx.NetworkConfig("unet", network_kwargs={"depth": 1, "first_channels": 4})),
}


def make_session(folder, environment, env_kwargs, network, name="trained"):
    """A normalised dataset with a validation set, a network trained one epoch on it, and a recorded
    Prediction of 64 steps (batch 1) in session ``NAME_predicted``."""
    env = dpx.EnvironmentConfig(environment, seed=0, env_kwargs=env_kwargs)
    common = {"session_dir": str(folder), "session_name": name, "progress": False}
    dpx.DataGeneration(env, dpx.DatabaseConfig(normalize=True), batch_nb=2, batch_size=64, **common).execute()
    dpx.DataGeneration(env, dpx.DatabaseConfig(mode="validation"), new_session=False, batch_nb=1, batch_size=64,
                       **common).execute()
    dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(folder / name), normalize=True), new_session=False,
                 epoch_nb=1, batch_size=32, seed=0, **common).execute()
    predicting = dpx.NetworkConfig(network.network_class, network_kwargs=network.network_kwargs,
                                   network_dir=str(folder / name))
    dpx.Prediction(predicting, dpx.EnvironmentConfig(environment, seed=1, env_kwargs=env_kwargs),
                   session_dir=str(folder), session_name=f"{name}_predicted", step_nb=64, record=True,
                   progress=False).execute()
    return folder / name


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    environment, env_kwargs, network = CASES[request.param]
    session = make_session(tmp_path_factory.mktemp(request.param), environment, env_kwargs, network)
    with dpx.open_database(session.parent / f"{session.name}_predicted") as database:
        recorded = database.read("prediction", ["input", "prediction"])
    with dpx.open_database(session) as database:
        validation = database.read("validation", ["input"])["input"]
    validation_predictions, _ = replay(session, network, mode="validation", batch_size=64)
    return {"case": request.param, "session": session, "network": network, "recorded": recorded,
            "validation": (validation, validation_predictions)}


def relative_error(answer: np.ndarray, reference: np.ndarray) -> float:
    assert answer.shape == reference.shape and answer.dtype == reference.dtype
    return float(np.abs(answer - reference).max() / np.abs(reference).max())


def check_consumer(run, trained) -> None:
    """``run(inputs) -> outputs`` answers as dpx did: batch 1, batch 64, and the validation samples."""
    inputs, predictions = trained["recorded"]["input"], trained["recorded"]["prediction"]
    assert len(inputs) == 64
    one_by_one = np.concatenate([run(inputs[i:i + 1]) for i in range(len(inputs))])
    assert relative_error(one_by_one, predictions) <= TOLERANCE
    assert relative_error(run(inputs), predictions) <= TOLERANCE
    validation, expected = trained["validation"]
    assert relative_error(run(validation[:64]), expected[:64]) <= TOLERANCE
    assert np.abs(predictions).max() > 0


def test_onnxruntime_answers_as_dpx_from_raw_inputs(trained):
    folder = export(trained["session"], "onnx")
    assert folder == trained["session"] / "export" / "network-onnx"
    path = folder / "network.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_output.name) == ("input", "ground_truth")
    assert isinstance(graph_input.shape[0], str)  # the batch size is free
    check_consumer(lambda x: session.run(["ground_truth"], {"input": x})[0], trained)

    metadata = json.loads(session.get_modelmeta().custom_metadata_map["dpx.json"])
    shapes = {"fc": ([5], [1]), "unet2d": ([1, 12, 12], [1, 12, 12]), "unet3d": ([1, 6, 6, 6], [1, 6, 6, 6])}
    assert [(f["name"], f["dtype"], f["shape"]) for f in metadata["inputs"] + metadata["outputs"]] == [
        ("input", "float32", shapes[trained["case"]][0]), ("ground_truth", "float32", shapes[trained["case"]][1])]
    assert metadata["versions"]["dpx-core"] == dpx.__version__ and "dpx-torch" in metadata["versions"]
    assert (metadata["versions"]["torch"], metadata["versions"]["onnx"]) == (torch.__version__, onnx.__version__)
    assert metadata["session"] == str(trained["session"].resolve())
    assert metadata["network"]["architecture"] == trained["network"].network_class
    assert (metadata["network"]["checkpoint"], metadata["network"]["epoch"]) == ("network.pt", 0)
    assert metadata == read_metadata(path)
    onnx.checker.check_model(str(path))


def test_torch_export_load_answers_as_dpx(trained):
    folder = export(trained["session"], "pt2", out=trained["session"].parent / "pt2", exporter_kwargs={"aoti": False})
    assert sorted(p.name for p in folder.iterdir()) == ["network.pt2"]
    module = torch.export.load(folder / "network.pt2").module()
    with torch.no_grad():
        check_consumer(lambda x: module(torch.from_numpy(x)).numpy(), trained)
    assert read_metadata(folder / "network.pt2")["outputs"][0]["name"] == "ground_truth"


def test_aoti_package_answers_as_dpx(trained):
    """AOTInductor compiles for tens of seconds per network on two cores: the FC only here (the UNets were
    checked by hand, see docs/export.md)."""
    if trained["case"] != "fc":
        return
    folder = export(trained["session"], "pt2", out=trained["session"].parent / "aoti")
    assert sorted(p.name for p in folder.iterdir()) == ["network.pt2", "network_aoti.pt2"]
    from torch._inductor import aoti_load_package

    compiled = aoti_load_package(str(folder / "network_aoti.pt2"))
    check_consumer(lambda x: compiled(torch.from_numpy(x)).numpy(), trained)
    assert json.loads(compiled.get_metadata()["dpx.json"])["inputs"][0]["shape"] == [5]


# -- bad input -------------------------------------------------------------------------------


class DataDependent(Network):
    """Python control flow on a tensor's value: torch.export cannot capture both branches."""

    def __init__(self, input_shape=(), output_shape=()):
        super().__init__(input_shape, output_shape)
        self.linear = torch.nn.Linear(5, 1)

    def forward(self, input):
        output = self.linear(input)
        return output if output.sum() > 0 else -output


class Eigenvalues(Network):
    """``eigvalsh`` has no ONNX translation."""

    def __init__(self, input_shape=(), output_shape=()):
        super().__init__(input_shape, output_shape)
        self.linear = torch.nn.Linear(5, 1)

    def forward(self, input):
        return self.linear(torch.linalg.eigvalsh(input[:, :, None] * input[:, None, :]))


@pytest.fixture(scope="module")
def spring(tmp_path_factory):
    """A spring dataset with an FC network and the two networks that do not export."""
    folder = tmp_path_factory.mktemp("bad")
    session = make_session(folder, "toy.spring", {}, CASES["fc"][2], name="spring")
    for network_class in (DataDependent, Eigenvalues):
        dpx.Training(dpx.NetworkConfig(network_class), dpx.DatabaseConfig(existing_dir=str(session), normalize=True),
                     session_dir=str(folder), session_name=network_class.__name__, epoch_nb=1, batch_size=64,
                     progress=False, seed=0).execute()
    return session


def test_a_network_that_does_not_export_is_refused_naming_the_operation_and_why(spring):
    folder = spring.parent / "DataDependent"
    with pytest.raises(ExportError, match=r"does not export with torch.export: .*data-dependent.* at "
                       r"test_torch_export.py:\d+ in forward: return output if output.sum\(\) > 0 else -output; "
                       r"the network branches on a tensor's value"):
        export(folder, "onnx", network_config=dpx.NetworkConfig(DataDependent))
    with pytest.raises(ExportError, match=r"does not export with torch.export"):
        export(folder, "pt2", network_config=dpx.NetworkConfig(DataDependent), exporter_kwargs={"aoti": False})
    with pytest.raises(ExportError, match=r"does not convert to ONNX: .*aten\._linalg_eigh.*no ONNX translation"):
        export(spring.parent / "Eigenvalues", "onnx", network_config=dpx.NetworkConfig(Eigenvalues))
    assert not (folder / "export").exists() or not any((folder / "export").iterdir())


def test_command_line_export_and_its_mistakes(spring, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(spring), "--format", "onnx", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    written = (out / "network.onnx").read_bytes()

    def refused(*args) -> str:
        assert main(["export", *args]) == 2
        error = capsys.readouterr().err
        assert error.startswith("dpx export: error: ") and error.count("\n") == 1, error
        return error

    assert "exists" in refused(str(spring), "--format", "onnx", "--out", str(out))
    assert (out / "network.onnx").read_bytes() == written  # what was there is untouched
    assert "epoch 7" in refused(str(spring), "--which", "7", "--format", "onnx", "--out", str(tmp_path / "e7"))
    assert main(["export", str(spring), "--which", "best", "--format", "onnx", "--out", str(tmp_path / "b")]) == 0
    assert read_metadata(tmp_path / "b" / "network.onnx")["network"]["checkpoint"] == "network_best.pt"
    pruned = shutil.copytree(spring, tmp_path / "pruned", symlinks=True)
    (pruned / "network" / "network_best.pt").unlink()
    assert "no best network" in refused(str(pruned), "--which", "best", "--format", "onnx", "--out", str(tmp_path / "b2"))
    assert "unknown exporter 'tflite'" in refused(str(spring), "--format", "tflite", "--out", str(tmp_path / "t"))
    empty = tmp_path / "empty"
    dpx.DataGeneration(dpx.EnvironmentConfig("toy.spring", seed=0), dpx.DatabaseConfig(), session_dir=str(tmp_path),
                       session_name="empty", batch_nb=1, batch_size=8, progress=False).execute()
    assert "no trained network" in refused(str(empty), "--format", "onnx")
    assert not (empty / "export").exists() and not (tmp_path / "e7").exists() and not (tmp_path / "b2").exists()
    # a class the checkpoint names by import path is not imported from it
    assert "import path" in refused(str(spring.parent / "DataDependent"), "--format", "onnx", "--out", str(tmp_path / "dd"))
    assert not (tmp_path / "dd").exists()


def test_an_epoch_is_exported_by_number(spring, tmp_path):
    assert main(["export", str(spring), "--which", "0", "--format", "pt2", "--no-aoti", "--out", str(tmp_path / "e0")]) == 0
    assert read_metadata(tmp_path / "e0" / "network.pt2")["network"]["checkpoint"] == "network_000.pt"
    folder = export(spring, "onnx", which=0, out=tmp_path / "onnx0")
    assert read_metadata(folder / "network.onnx")["network"]["checkpoint"] == "network_000.pt"


def test_python_export_mistakes(spring, tmp_path):
    with pytest.raises(ConfigError, match="which='first' must be 'last', 'best' or an epoch number"):
        export(spring, "onnx", which="first")
    with pytest.raises(ExportError, match="aoti='yes' must be true, false"):
        export(spring, "pt2", out=tmp_path / "x", exporter_kwargs={"aoti": "yes"})
    with pytest.raises(ConfigError, match="exporter_kwargs=.'aot': False. rejected by format 'pt2'"):
        export(spring, "pt2", out=tmp_path / "x", exporter_kwargs={"aot": False})
    assert not (tmp_path / "x").exists()
