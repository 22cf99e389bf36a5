"""The three tiers of examples (tutorial, features, demos), each run in its quick variant.

Each example's ``main(out, quick)`` is what ``python examples/.../file.py --quick``
runs; the tests call it in this process (torch is imported once) with the
example's folder on ``sys.path``, as running the file puts it there.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    """One sessions folder per tier: later examples reuse what earlier ones made, as from the command line."""
    return tmp_path_factory.mktemp("examples")


def run(tier: str, name: str, out: Path):
    folder = str(EXAMPLES / tier)
    sys.path.insert(0, folder)  # kept for the tier's later examples, and for worker processes importing its modules
    return runpy.run_path(f"{folder}/{name}.py")["main"](out=str(out), quick=True)


@pytest.fixture(scope="module", autouse=True)
def restore_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    for module in ("common", "mean_environment", "t1_environment", "t2_configuration"):
        sys.modules.pop(module, None)


def test_tutorial_from_an_empty_folder_to_a_network_inside_its_simulation(sessions):
    out = sessions / "tutorial"
    samples = run("tutorial", "t1_environment", out)
    assert samples["input"].shape == (4, 2) and samples["ground_truth"].shape == (4, 1)
    assert not out.exists(), "checking the environment writes nothing"
    checked = run("tutorial", "t2_configuration", out)
    assert any("environment" in line for line in checked) and not out.exists(), "a dry run writes nothing"
    assert run("tutorial", "t3_data_generation", out).total == 256
    assert run("tutorial", "t3_data_generation", out).produced == 0  # running it again resumes: nothing is missing
    assert run("tutorial", "t4_offline_training", out).epochs == 3
    assert run("tutorial", "t5_online_training", out).samples == 3 * 256
    prediction = run("tutorial", "t6_prediction", out)
    assert prediction.steps == 50 and prediction.error.count == 50
    assert prediction.error.relative_error < 1.0  # the network beats predicting zero


def test_features_generation_single_and_multiprocess(sessions):
    out = sessions / "features"
    assert run("features", "generation_single", out).total == 128
    assert run("features", "generation_multi", out) is True


def test_features_offline_online_and_validation(sessions):
    out = sessions / "features"
    assert run("features", "offline_training", out).epochs == 2
    assert run("features", "online_training", out).samples == 2 * 128
    curve = run("features", "validation", out)
    assert [epoch for epoch, _ in curve] == [0, 1, 2] and all(np.isfinite(loss) for _, loss in curve)


def test_features_prediction_record_replay_and_get_prediction(sessions):
    out = sessions / "features"
    summary, replayed = run("features", "prediction", out)
    assert summary.recorded == 20 and replayed.count == 20
    assert np.isclose(replayed.relative_error, summary.error.relative_error, rtol=1e-4)
    alone, in_training = run("features", "get_prediction", out)
    assert alone < 1.0 and 0 < in_training < 0.3


def test_features_load_samples_parameters_and_resume(sessions):
    out = sessions / "features"
    replayed, fed = run("features", "load_samples", out)
    assert replayed.steps == 32 and replayed.error.count == 32  # the validation set, once
    assert fed.steps == 2 * 128 // 64
    stored = run("features", "parameters", out)
    assert stored[0]["n_points"] == 30 and stored[0]["origin"].shape == (3,)
    interrupted, total = run("features", "resume", out)
    assert 0 < interrupted < 100 and total == 128


def test_features_viewer_writes_frames(sessions):
    frames = run("features", "viewer", sessions / "features")
    assert frames and all(frame.stat().st_size > 0 for frame in frames)


def test_demo_fem_beam_reports_error_and_speed_against_the_solver_with_a_picture(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "demos" / "fem_beam.py"), "--quick", "--networks", "fc",
                             "--steps", "5", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    for row in ("relative RMS error", "one prediction (ms)", "batched, per sample (ms)"):
        assert re.search(r"\d+\.\d+", rows[row].removeprefix(row)), rows[row]
    (picture,) = re.findall(r"fc: picture of the last load \(FEM green, network red\): (\S+\.png)", result.stdout)
    assert Path(picture).parent.name == "frames_fc" and Path(picture).stat().st_size > 1000
