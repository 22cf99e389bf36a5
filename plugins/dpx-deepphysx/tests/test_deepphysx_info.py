"""`python -m dpx info` on a DeepPhysX session: with --storage deepphysx, and the hint without it."""

from __future__ import annotations

import json

import numpy as np

from dpx.cli import main


def test_info_describes_a_deepphysx_session_with_its_storage(tiny_dataset, capsys):
    session, written = tiny_dataset
    assert main(["info", str(session), "--storage", "deepphysx", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["storage"] == "deepphysx" and described["runs"] == [] and described["networks"] == []
    assert {mode: entry["count"] for mode, entry in described["dataset"].items()} == {"training": 8, "validation": 4}
    fields = described["dataset"]["training"]["fields"]
    assert {name: (f["dtype"], f["shape"]) for name, f in fields.items()} == {
        "env_id": ("int64", []), "input": ("float64", [4, 3]), "ground_truth": ("float64", [3]),
        "sample_index": ("int64", [1])}
    np.testing.assert_allclose(fields["input"]["mean"], [written["training"]["input"].mean()] * 3)
    assert main(["info", str(session / "dataset"), "--storage", "deepphysx"]) == 0
    text = capsys.readouterr().out
    assert "(storage deepphysx)" in text and "training: 8 samples" in text and "validation: 4 samples" in text
    assert "input            float64  (4, 3)  mean [" in text


def test_info_without_storage_on_a_deepphysx_session_says_to_give_it(tiny_dataset, capsys):
    session, _ = tiny_dataset
    assert main(["info", str(session)]) == 2
    assert capsys.readouterr().err == (
        f"dpx info: error: {session / 'dataset'} holds a DeepPhysX dataset (dataset.json lists SQLite partitions), "
        f"not a dpx one: python -m dpx info {session} --storage deepphysx (with the dpx-deepphysx plugin)\n")
    for partition in (session / "dataset").glob("*.db"):
        partition.unlink()
    assert main(["info", str(session)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dpx info: error: ") and "DeepPhysX" not in error, "no partitions: no DeepPhysX hint"
