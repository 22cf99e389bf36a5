"""The onnx backend: an exported network runs in Prediction and get_prediction, and torch is never imported.

The exported file is made here with dpx-torch (dpx export); the runs that
must do without torch happen in a subprocess where ``import torch`` fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.network import CheckpointError
from dpx.testing import HEAVY_MODULES, assert_light_import
from dpx_toy.spring import Spring

STEPS = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained spring network, its ONNX export, and what dpx's torch Prediction recorded with it."""
    folder = tmp_path_factory.mktemp("onnx")
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]})
    env = dpx.EnvironmentConfig("toy.spring", seed=0)
    dpx.DataGeneration(env, dpx.DatabaseConfig(normalize=True), session_dir=str(folder), session_name="trained",
                       batch_nb=2, batch_size=64, progress=False).execute()
    dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(folder / "trained"), normalize=True),
                 session_dir=str(folder), session_name="trained", new_session=False, epoch_nb=1, batch_size=32,
                 progress=False, seed=0).execute()
    export_dir = dpx.export(folder / "trained", "onnx")
    torch_network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [16, 16]}, network_dir=str(folder / "trained"))
    dpx.Prediction(torch_network, dpx.EnvironmentConfig("toy.spring", seed=1), session_dir=str(folder),
                   session_name="torch", step_nb=STEPS, record=True, progress=False).execute()
    return folder, export_dir


def recorded(session):
    with dpx.open_database(session) as database:
        return database.read("prediction")


def without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing torch (or dpx-torch's modules) raises ImportError."""
    prelude = "import sys\nsys.modules['torch'] = None\nsys.modules['dpx_torch.backend'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          check=False)


def test_prediction_and_get_prediction_run_the_export_without_torch(exported):
    folder, export_dir = exported
    sample = np.array([0.5, -0.2, 4.0, 1.0, 0.3], np.float32)
    result = without_torch(f"""
        import json
        import numpy as np
        import dpx
        from dpx_toy.spring import Spring
        network = dpx.NetworkConfig(backend="onnx", network_dir={str(export_dir)!r})
        print(dpx.Prediction(network, dpx.EnvironmentConfig("toy.spring", seed=1), session_dir={str(folder)!r},
                             session_name="onnx", step_nb={STEPS}, record=True, progress=False).execute())
        env = Spring()
        env.init_database()
        env.connect_predictor(dpx.load_predictor({str(export_dir)!r}, network))
        answer = env.get_prediction(input=np.array({sample.tolist()!r}, np.float32))["prediction"]
        print(json.dumps(answer.tolist()))
        print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "torch")))
    """)
    assert result.returncode == 0, result.stderr
    *_, answer, torch_modules = result.stdout.strip().splitlines()
    assert json.loads(torch_modules) == ["torch"]  # only the None placed there: nothing imported it
    onnx_run, torch_run = recorded(folder / "onnx"), recorded(folder / "torch")
    np.testing.assert_array_equal(onnx_run["input"][0], torch_run["input"][0])
    scale = np.abs(torch_run["prediction"]).max()
    assert np.abs(onnx_run["prediction"] - torch_run["prediction"]).max() <= 1e-5 * scale
    expected = dpx.load_predictor(folder / "trained")({"input": sample})["prediction"]
    np.testing.assert_allclose(np.array(json.loads(answer), np.float32), expected, rtol=1e-5, atol=1e-6)


def test_listing_plugins_imports_neither_onnxruntime_nor_torch():
    code = ("import sys\nfrom dpx.cli import main\nassert main(['plugins']) == 0\n"
            "print([m for m in ('onnxruntime', 'onnx', 'torch') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "network_backends: onnx" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert_light_import("dpx_onnx", (*HEAVY_MODULES, "onnxruntime", "onnx"))


def test_an_environment_with_other_shapes_is_refused_naming_both(exported, tmp_path):
    folder, export_dir = exported
    network = dpx.NetworkConfig(backend="onnx", network_dir=str(export_dir))
    with pytest.raises(ConfigError, match=r"'input' samples of shape \(5,\).*toy.mean makes them of shape \(30, 3\)"):
        dpx.Prediction(network, dpx.EnvironmentConfig("toy.mean"), session_dir=str(tmp_path), session_name="mean",
                       step_nb=2, progress=False).execute()
    assert not (tmp_path / "mean").exists()

    class WideSpring(Spring):
        def init_database(self):
            self.define_training_fields(("input", np.float32, (6,)), ("ground_truth", np.float32, (1,)))

    env = WideSpring()
    env.init_database()
    with pytest.raises(ConfigError, match=r"shape \(5,\).*shape \(6,\)"):
        env.connect_predictor(dpx.load_predictor(export_dir, network))


def rewrite(source, target, edit) -> None:
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))


def test_a_file_not_matching_its_metadata_or_unreadable_is_refused(exported, tmp_path):
    _, export_dir = exported
    source = export_dir / "network.onnx"
    network = dpx.NetworkConfig(backend="onnx", network_dir=str(tmp_path))

    def lying(model):
        entry = next(p for p in model.metadata_props if p.key == "dpx.json")
        metadata = json.loads(entry.value)
        metadata["inputs"][0]["shape"] = [6]
        entry.value = json.dumps(metadata)

    rewrite(source, tmp_path / "network.onnx", lying)
    with pytest.raises(CheckpointError, match=r"graph's input 'input' is float32 \(5,\).*metadata says float32 \(6,\)"):
        dpx.load_predictor(tmp_path, network)
    rewrite(source, tmp_path / "network.onnx", lambda model: model.ClearField("metadata_props"))
    with pytest.raises(CheckpointError, match="carries no dpx metadata"):
        dpx.load_predictor(tmp_path, network)
    (tmp_path / "network.onnx").write_bytes(source.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="is not an ONNX network onnxruntime can run"):
        dpx.load_predictor(tmp_path, network)
    (tmp_path / "network.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="holds no exported network 'network.onnx'"):
        dpx.load_predictor(tmp_path, network)


def test_the_onnx_backend_refuses_to_train_and_unknown_options(exported, tmp_path):
    folder, export_dir = exported
    with pytest.raises(ConfigError, match="cannot train"):
        dpx.Training(dpx.NetworkConfig(backend="onnx"), dpx.DatabaseConfig(existing_dir=str(folder / "trained")),
                     session_dir=str(tmp_path), session_name="t", epoch_nb=1, progress=False).execute()
    assert not (tmp_path / "t").exists()
    with pytest.raises(ConfigError, match=r"network_kwargs \['hidden'\] are not options of the onnx backend"):
        dpx.load_predictor(export_dir, dpx.NetworkConfig(backend="onnx", network_kwargs={"hidden": [16]}))
    with pytest.raises(ConfigError, match="an export folder holds one network"):
        dpx.load_predictor(export_dir, dpx.NetworkConfig(backend="onnx", which_network=3))
