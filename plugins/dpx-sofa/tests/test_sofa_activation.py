"""scripts/sofa_env.sh, which scripts/test.sh and scripts/sofa_demo.sh source to make SOFA importable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("DPX_SOFA_SHARED", ROOT.parent / "shared" / "sofa"))


def activate(env: dict[str, str], then: str = "true") -> subprocess.CompletedProcess:
    """Source sofa_env.sh as test.sh does (ROOT set, in the repository root), then run ``then``."""
    script = f'set -euo pipefail; ROOT={str(ROOT)!r}; cd "$ROOT"; source scripts/sofa_env.sh; {then}'
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)


def without_sofa(**extra: str) -> dict[str, str]:
    """The environment without any SOFA activation, as on a fresh machine."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOFA_ROOT", "SOFAPYTHON3_ROOT", "LD_LIBRARY_PATH", "DPX_SOFA_SHARED", "DPX_SOFA_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and not (Path(p) / "Sofa").is_dir())
    return {**env, **extra}


def test_without_a_sofa_build_it_says_so_and_changes_nothing(tmp_path: Path) -> None:
    result = activate(without_sofa(DPX_SOFA_SHARED=str(tmp_path / "none")), 'echo "SOFA_ROOT=${SOFA_ROOT:-}"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"dpx: no SOFA build in {tmp_path / 'none'}: dpx-sofa's SOFA tests are skipped", "SOFA_ROOT="]


@pytest.mark.skipif(not (SHARED / "activate.sh").is_file(), reason=f"no shared SOFA build in {SHARED}")
def test_the_shared_build_is_unpacked_outside_its_folder_and_importable(tmp_path: Path) -> None:
    """The shared folder may be read-only: the archive unpacks into DPX_SOFA_HOME (default ~/.cache/dpx-sofa)."""
    shared = tmp_path / "shared" / "sofa"
    shared.mkdir(parents=True)
    copied = sorted(["activate.sh", *(p.name for p in SHARED.glob("sofa-*.tar.xz"))])
    for name in copied:
        shutil.copy(SHARED / name, shared / name)
    shared.chmod(0o555)
    home = tmp_path / "home"
    result = activate(without_sofa(DPX_SOFA_SHARED=str(shared), HOME=str(home)),
                      '.venv/bin/python -c "import Sofa.Core, SofaRuntime; print(\'IMPORTED\')"')
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"dpx: SOFA activated from {shared} (SOFA_ROOT={home}/.cache/dpx-sofa/"), first
    assert "IMPORTED" in result.stdout
    assert sorted(p.name for p in shared.iterdir()) == copied, "nothing is written into the shared folder"
