"""dpx-sofa's plugin listing and parameters: what needs no SOFA, or needs SOFA's absence.

A SOFA build is made importable by putting its SofaPython3 site-packages on
PYTHONPATH (``scripts/test.sh`` does it when ``../shared/sofa`` is there); the
missing-SOFA tests run dpx in a subprocess with those entries removed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dpx.testing
from dpx_sofa._sofa import MISSING_SOFA, sofa_installed
from dpx_sofa.beam import SofaBeam


def without_sofa() -> dict[str, str]:
    """This interpreter's environment without DPX_ variables and without SOFA's Python packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPX_")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "Sofa").is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_dpx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True, timeout=300)


def test_plugin_module_imports_nothing_heavy() -> None:
    dpx.testing.assert_light_import("dpx_sofa")


def test_entry_point_is_installed() -> None:
    distribution = importlib.metadata.distribution("dpx-sofa")
    assert distribution.version == "0.1.0"
    assert [(ep.name, ep.value) for ep in distribution.entry_points if ep.group == "dpx"] == [("sofa", "dpx_sofa")]


def test_listed_as_unavailable_with_the_reason_when_sofa_is_missing() -> None:
    rows = {row["name"]: row for row in json.loads(run_dpx("-m", "dpx", "plugins", "--json", env=without_sofa()).stdout)}
    sofa = rows["sofa"]
    assert (sofa["status"], sofa["distribution"]) == ("unavailable", "dpx-sofa")
    assert sofa["error"] == MISSING_SOFA
    assert rows["dpx"]["status"] == "ok", "a missing SOFA must not break the other plugins"
    listing = run_dpx("-m", "dpx", "plugins", env=without_sofa())
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith("sofa ")]
    assert "unavailable: " + MISSING_SOFA in line
    assert "sofa" not in listing.stderr, "a missing optional simulator is not worth a warning"


def test_without_sofa_strict_mode_lists_it_unavailable_and_creating_raises_the_install_hint() -> None:
    code = (
        "import dpx.plugins\n"
        "from dpx.testing import prepare_environment\n"
        "from dpx_sofa.beam import SofaBeam\n"
        "for strict in (False, True):\n"
        "    info = dpx.plugins.Plugins(entry_points=False, strict=strict, dev_modules=['dpx_sofa']).plugins['dpx_sofa']\n"
        "    print(info.status, info.error)\n"
        "try:\n"
        "    prepare_environment(SofaBeam(grid_resolution=(4, 2, 2)))\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    lines = run_dpx("-c", code, env=without_sofa()).stdout.splitlines()
    assert lines[:2] == [f"unavailable {MISSING_SOFA}"] * 2
    assert lines[2].startswith(MISSING_SOFA + " (ModuleNotFoundError: No module named 'Sofa')")


@pytest.mark.skipif(not sofa_installed(), reason="no SOFA build on PYTHONPATH (scripts/test.sh activates ../shared/sofa)")
def test_listed_ok_with_its_environments_when_sofa_is_importable() -> None:
    rows = {row["name"]: row for row in json.loads(run_dpx("-m", "dpx", "plugins", "--json").stdout)}
    assert rows["sofa"]["status"] == "ok", rows["sofa"]["error"]
    assert rows["sofa"]["provides"]["environments"]["sofa.beam"]["path"] == "dpx_sofa.beam:SofaBeam"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"grid_resolution": (1, 2, 2)}, "grid_resolution"),
        ({"grid_resolution": (4, 2)}, "grid_resolution"),
        ({"grid_resolution": (4.0, 2, 2)}, "grid_resolution"),
        ({"size": (4.0, 0.0, 1.0)}, "size"),
        ({"young_modulus": -1.0}, "young_modulus"),
        ({"poisson_ratio": 0.5}, "poisson_ratio"),
        ({"total_mass": 0}, "total_mass"),
        ({"force_range": (2.0, 1.0)}, "force_range"),
        ({"force_range": (-1.0, 1.0)}, "force_range"),
        ({"rayleigh_mass": -0.1}, "rayleigh_mass"),
        ({"cg_iterations": 0}, "cg_iterations"),
        ({"cg_tolerance": 0.0}, "cg_tolerance"),
        ({"dt": float("nan")}, "dt"),
        ({"animate_steps": 0}, "animate_steps"),
    ],
)
def test_parameters_are_validated(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SofaBeam(**kwargs)


STATIC_PYTHON = Path("/usr/bin/python3.11")


def other_python() -> str | None:
    """A CPython other than 3.11 that runs here: on PATH, or beside this one (pyenv's versions folder)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (12, 13, 10)]
    candidates += sorted(str(p) for p in Path(sys.base_prefix).parent.glob("3.1[023].*/bin/python3.1[023]"))
    for candidate in filter(None, candidates):
        run = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] != (3, 11))"],
                             capture_output=True, text=True, check=False)
        if run.returncode == 0 and run.stdout.strip() == "True":
            return candidate
    return None


OTHER_PYTHON = other_python()


def import_sofa_with(python: str) -> str:
    """What ``import_sofa`` raises when run by ``python`` (dpx_sofa/_sofa.py needs only the standard library)."""
    import numpy  # SofaPython3 needs it: lend this venv's (the same CPython 3.11 ABI for the static one)

    module = Path(__file__).resolve().parents[1] / "dpx_sofa" / "_sofa.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sofa_finder', {str(module)!r})\n"
        "finder = importlib.util.module_from_spec(spec); spec.loader.exec_module(finder)\n"
        "try:\n"
        "    finder.import_sofa()\n"
        "except ImportError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""),
                                                        str(Path(numpy.__file__).parents[1])])}
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=env)
    refusal = [line for line in result.stdout.splitlines() if line.startswith("REFUSED")]
    assert refusal, result.stdout[-2000:] + result.stderr[-2000:]
    return refusal[0]


@pytest.mark.skipif(not sofa_installed() or not STATIC_PYTHON.exists(),
                    reason="needs a SOFA build and Debian's /usr/bin/python3.11 (Python linked in statically)")
def test_a_python_that_would_load_a_second_python_is_refused_with_the_reason() -> None:
    """The most common SOFA install failure: SofaPython3 run by another Python than the one it was built for."""
    refusal = import_sofa_with(str(STATIC_PYTHON))
    assert "SofaPython3 loaded a second copy of Python" in refusal and "libpython3.11.so" in refusal
    assert "linked in statically" in refusal


@pytest.mark.skipif(not sofa_installed() or OTHER_PYTHON is None,
                    reason="needs a SOFA build for Python 3.11 and another CPython 3 to run it with")
def test_a_sofapython3_built_for_another_python_says_so() -> None:
    refusal = import_sofa_with(OTHER_PYTHON)
    assert refusal.startswith(f"REFUSED {MISSING_SOFA} (ModuleNotFoundError: No module named 'Sofa.")
    assert "; this is Python 3.1" in refusal and "SofaPython3 must be built for the same Python" in refusal
