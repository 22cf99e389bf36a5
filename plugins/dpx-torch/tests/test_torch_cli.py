"""`python -m dpx train` and `predict` from the example TOML files, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def dpx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpx", *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_generate_train_predict_from_the_examples(tmp_path):
    assert dpx_cli("generate", str(EXAMPLES / "spring_generate.toml"), "pipeline.batch_nb=40", cwd=tmp_path).returncode == 0
    trained = dpx_cli("train", str(EXAMPLES / "spring_train.toml"), "pipeline.epoch_nb=3",
                      'pipeline.stats=["csv", "tensorboard"]', cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "3 epochs, 120 steps" in trained.stdout
    assert (tmp_path / "sessions/spring_fc/network/network.pt").exists()
    assert list((tmp_path / "sessions/spring_fc/stats/tensorboard").glob("events.out.tfevents.*"))
    predicted = dpx_cli("predict", str(EXAMPLES / "spring_predict.toml"), "pipeline.step_nb=20", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert "20 prediction steps; error against the simulator: MSE" in predicted.stdout
    info = json.loads(dpx_cli("info", "sessions/spring_fc", "--json", cwd=tmp_path).stdout)
    assert info["networks"] == ["network.pt", "network_best.pt"] and info["dataset"]["prediction"]["count"] == 20


def test_train_dry_run_and_errors(tmp_path):
    for options in (("--dry-run",), ()):  # the dry run refuses what the run refuses
        missing = dpx_cli("train", str(EXAMPLES / "spring_train.toml"), *options, cwd=tmp_path)
        assert missing.returncode == 2 and "[database] existing_dir='sessions/spring': no such folder" in missing.stderr
    assert not (tmp_path / "sessions").exists(), "a failed start must not leave a session behind"
    typo = dpx_cli("train", str(EXAMPLES / "spring_train.toml"), "network.optimiser='sgd'", cwd=tmp_path)
    assert typo.returncode == 2 and "unknown parameter 'optimiser'; did you mean 'optimizer'?" in typo.stderr
    assert dpx_cli("generate", str(EXAMPLES / "spring_generate.toml"), "pipeline.batch_nb=2", cwd=tmp_path).returncode == 0
    dry = dpx_cli("train", str(EXAMPLES / "spring_train.toml"), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "network fc on backend torch" in dry.stdout
    assert [p.name for p in (tmp_path / "sessions").iterdir()] == ["spring"], "a dry run writes nothing"
