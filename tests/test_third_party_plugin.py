"""A third-party plugin appears once pip-installed, with no other step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dpx-pendulum"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """pip-install the example into its own folder, and the environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(EXAMPLE)],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def test_example_plugin_is_listed_after_pip_install(installed):
    out = subprocess.run([sys.executable, "-m", "dpx", "plugins", "--json"], env=installed,
                         capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    pendulum = rows["pendulum"]
    assert (pendulum["status"], pendulum["distribution"], pendulum["version"]) == ("ok", "dpx-pendulum", "0.1.0")
    assert "pendulum.damped" in pendulum["provides"]["environments"]


def test_example_environment_is_created_by_name(installed):
    code = (
        "from dpx.testing import check_environment\n"
        "batch = check_environment('pendulum.damped', {'dt': 0.05}, samples=8)\n"
        "print(batch['input'].shape, batch['ground_truth'].shape, batch['input'].dtype)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=installed, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(8, 3) (8, 1) float32"


def test_example_plugin_is_not_visible_without_install():
    out = subprocess.run([sys.executable, "-m", "dpx", "plugins", "--json"], capture_output=True, text=True, check=True)
    assert "pendulum" not in {row["name"] for row in json.loads(out.stdout)}


def test_example_plugin_takes_part_in_runs_through_a_lifecycle_hook(installed, tmp_path):
    code = (
        "import dpx\n"
        "config = dpx.EnvironmentConfig('pendulum.damped', seed=0)\n"
        f"dpx.DataGeneration(config, session_dir={str(tmp_path)!r}, session_name='swing', batch_nb=1, batch_size=4,\n"
        "                   progress=False).execute()\n"
        f"dpx.DataGeneration(dpx.EnvironmentConfig('toy.mean'), session_dir={str(tmp_path)!r}, session_name='mean',\n"
        "                   batch_nb=1, batch_size=4, progress=False).execute()\n"
    )
    subprocess.run([sys.executable, "-c", code], env={**installed, "DPX_DISABLE_PLUGINS": "mlflow"}, check=True)
    assert "angular velocity (rad/s)" in (tmp_path / "swing" / "FIELDS.txt").read_text()
    assert not (tmp_path / "mean" / "FIELDS.txt").exists(), "only pendulum sessions"
    record = json.loads((tmp_path / "swing" / "session.json").read_text())
    assert "pendulum" in record["runs"][-1]["joined_plugins"]
