"""`python -m dpx import deepphysx` on DeepPhysX-format sessions written by the tests (every machine)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dpx
from dpx.cli import main
from dpx.core.storage import MemmapStorage

torch = pytest.importorskip("torch")


def deepphysx_fc_prediction(state: dict, inputs: np.ndarray, normalization: dict) -> np.ndarray:
    """What DeepPhysX's FC answers: normalise with the input's scalars, Linear/PReLU..., de-normalise."""
    layers = []
    for number in range(0, len(state) // 2 + 1, 2):
        linear = torch.nn.Linear(*state[f"linear.{number}.weight"].shape[::-1])
        linear.load_state_dict({"weight": state[f"linear.{number}.weight"], "bias": state[f"linear.{number}.bias"]})
        layers.append(linear)
        if f"linear.{number + 1}.weight" in state:
            prelu = torch.nn.PReLU(len(state[f"linear.{number + 1}.weight"]))
            prelu.load_state_dict({"weight": state[f"linear.{number + 1}.weight"]})
            layers.append(prelu)
    mean, std = normalization["input"]
    x = torch.as_tensor((inputs - mean) / std, dtype=torch.float32).flatten(1)
    with torch.no_grad():
        y = torch.nn.Sequential(*layers)(x).numpy()
    mean, std = normalization["ground_truth"]
    return y * std + mean


def test_import_converts_dataset_facts_and_fc_network(tiny_dataset, fc_writer, tmp_path, capsys):
    session, written = tiny_dataset
    state = fc_writer(session, [12, 8, 3])
    out = tmp_path / "sessions" / "mine"
    assert main(["import", "deepphysx", str(session), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"imported into {out}" in report and "not converted" not in report
    assert "dataset: training: 8, validation: 4 samples" in report and "each checked against the source" in report
    with MemmapStorage(out / "dataset") as stored:
        for mode, fields in written.items():
            for name, values in fields.items():
                np.testing.assert_array_equal(stored.read(mode, name, np.arange(len(values))), values)
    run = json.loads((out / "session.json").read_text())["runs"][0]
    source_index = json.loads((session / "dataset" / "dataset.json").read_text())
    assert run["pipeline"] == "Import" and run["outcome"] == "completed"
    assert run["deepphysx"]["dataset"]["nb_samples"] == source_index["nb_samples"]
    assert run["deepphysx"]["info"]["components"]["FC"]["Layers dimensions"] == "[12, 8, 3]"
    normalization = source_index["normalization"]
    predictor = dpx.load_predictor(out)
    inputs = written["validation"]["input"]
    got = np.stack([predictor({"input": x})["prediction"] for x in inputs])
    np.testing.assert_allclose(got, deepphysx_fc_prediction(state, inputs, normalization), rtol=1e-5, atol=1e-5)
    checkpoint = torch.load(out / "network" / "network.pt", weights_only=True)
    assert checkpoint["network_kwargs"] == {"dim_layers": [12, 8, 3], "activation": "prelu"}
    assert checkpoint["extra"]["epoch"] == 2, "info.txt's 3 epochs: the last saved is epoch 2"


def test_a_custom_network_is_reported_not_converted_and_the_rest_is(tiny_dataset, tmp_path, capsys):
    session, _ = tiny_dataset
    (session / "network").mkdir()
    torch.save({"conv.0.weight": torch.zeros(2, 2)}, session / "network" / "network.pth")
    (session / "notes.md").write_text("mine")
    out = tmp_path / "out"
    assert main(["import", "deepphysx", str(session), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"not converted: {session / 'network' / 'network.pth'}: key 'conv.0.weight' is not one of DeepPhysX's FC" in report
    assert f"not converted: {session / 'notes.md'}" in report
    assert "converted: dataset: training: 8" in report
    assert not list((out / "network").iterdir())
    assert json.loads((out / "session.json").read_text())["runs"][0]["not_converted"][0].startswith(str(session))


def test_a_dataset_link_is_followed_only_to_the_dataset_named(tiny_dataset, fc_writer, tmp_path, capsys):
    data_session, _ = tiny_dataset
    training = tmp_path / "tiny_fc"
    training.mkdir()
    (training / "dataset").symlink_to((data_session / "dataset").resolve())  # DeepPhysX writes an absolute link
    fc_writer(training, [12, 4, 3])
    out = tmp_path / "out"
    assert main(["import", "deepphysx", str(training), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"dpx import: error: {training / 'dataset'} is a link to {(data_session / 'dataset').resolve()}: dpx follows " \
           f"it only to a dataset you name; add --dataset" in error
    assert error.count("\n") == 1 and not out.exists(), "refused before anything is written"
    other = tmp_path / "other"
    other.mkdir()
    assert main(["import", "deepphysx", str(training), "--dataset", str(other), "--out", str(out)]) == 2
    assert "not to the dataset you named" in capsys.readouterr().err and not out.exists()
    assert main(["import", "deepphysx", str(training), "--dataset", str(data_session), "--out", str(out)]) == 0
    assert "converted: network: network.pth (DeepPhysX FC [12, 4, 3], PReLU)" in capsys.readouterr().out


def test_a_damaged_dataset_is_one_error_line_and_no_session(tiny_dataset, tmp_path, capsys):
    session, _ = tiny_dataset
    index = json.loads((session / "dataset" / "dataset.json").read_text())
    index["nb_samples"]["validation"] = [40]
    (session / "dataset" / "dataset.json").write_text(json.dumps(index))
    assert main(["import", "deepphysx", str(session), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dpx import: error: ") and "tiny_validation_0.db: table 'training' holds 4 rows" in error
    assert not (tmp_path / "out").exists()


def test_a_text_column_is_reported_not_converted(tiny_dataset, tmp_path, capsys):
    import sqlite3

    session, _ = tiny_dataset
    dataset = session / "dataset"
    for partition in dataset.glob("*.db"):
        with sqlite3.connect(partition) as connection:
            connection.execute('ALTER TABLE training ADD COLUMN "note" TEXT')
    index = json.loads((dataset / "dataset.json").read_text())
    index["architecture"]["Training"].append("note (STR)")
    (dataset / "dataset.json").write_text(json.dumps(index))
    assert main(["import", "deepphysx", str(session), "--out", str(tmp_path / "out")]) == 0
    report = capsys.readouterr().out
    assert f"not converted: {dataset / 'dataset.json'}: column training.note (STR): dpx stores numbers and arrays only" in report
    assert "converted: dataset: training: 8, validation: 4 samples" in report


def test_a_link_made_on_another_machine_gives_way_to_the_dataset_named(tiny_dataset, fc_writer, tmp_path, capsys):
    data_session, _ = tiny_dataset
    training = tmp_path / "tiny_fc"
    training.mkdir()
    (training / "dataset").symlink_to("/home/someone/DeepPhysX/sessions/tiny/dataset")  # absent here
    fc_writer(training, [12, 4, 3])
    out = tmp_path / "out"
    assert main(["import", "deepphysx", str(training), "--out", str(out)]) == 2
    assert "which is not here: dpx follows it only to a dataset you name; add --dataset PATH" in capsys.readouterr().err
    assert main(["import", "deepphysx", str(training), "--dataset", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"--dataset {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err and not out.exists()
    assert main(["import", "deepphysx", str(training), "--dataset", str(data_session), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"note: {training / 'dataset'} is a link to /home/someone/DeepPhysX/sessions/tiny/dataset, which is not here: " \
           f"the dataset you named ({data_session / 'dataset'}) was read" in report
    assert "converted: network: network.pth" in report
