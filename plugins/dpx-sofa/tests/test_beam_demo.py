"""The SOFA beam demo's quick run, end to end, against the real SOFA build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dpx_sofa._sofa import sofa_installed

DEMO = Path(__file__).resolve().parents[1] / "examples" / "beam_demo.py"


@pytest.mark.skipif(not sofa_installed(), reason="no SOFA build on PYTHONPATH (scripts/test.sh activates ../shared/sofa)")
def test_quick_demo_trains_runs_the_networks_in_sofa_and_in_sofas_own_loop_and_renders_both_beams(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(DEMO), "--quick", "--steps", "5", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"fc: 256 training samples from SOFA in 2 worker processes, \d+ samples/s", out), out
    for row in ("relative RMS error", "SOFA, per step (ms)", "network, per step (ms)", "speed-up over SOFA",
                "in SOFA's loop: error", "in SOFA's loop: step (ms)", "  of which network (ms)"):
        (line,) = [line for line in out.splitlines() if line.startswith(row)]
        assert len(line.split()) >= len(row.split()) + 2, line  # one figure per network: fc and unet
    for name in ("fc", "unet"):  # SOFA's own animate loop ran the network through the scene's controller
        assert re.search(rf"{name}: in SOFA's own loop, 5 loads: relative RMS error \d+\.\d+ %, per step "
                         r"\d+\.\d+ ms \(network \d+\.\d+ ms\)", out), out
    frames = sorted(tmp_path.glob("*/frames_*/frame_*.png"))
    assert {frame.parent.name for frame in frames} == {"frames_fc", "frames_unet"}  # checked for both beams by the demo
