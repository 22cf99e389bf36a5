"""The distributions as an installer sees them: every plugin's wheel resolves to this core.

The core's wheel and every plugin's are built from this tree once per module,
then ``pip install --dry-run --no-index`` resolves each plugin in an empty
virtual environment, offline, from those wheels only. Third-party requirements
(numpy, torch, ...) are satisfied by empty stand-in wheels carrying only a name
and a version, so the resolution needs no index; what is checked is that the
core a plugin asks for is the wheel built here and that nothing besides the
plugin, the core and the requirements they declare would be installed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import dpx
from dpx.plugins import CORE_DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FOLDERS = [*sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists()),
                  ROOT / "examples" / "dpx-pendulum"]
#: Names held on the package index by unrelated projects: a requirement on one
#: of them installs that project (``dpx`` 0.3.1 there is "A small example package").
TAKEN_ON_INDEX = {"dpx"}


def offline_pip() -> dict[str, str]:
    """An environment where pip reads no configuration: no index, no local wheel folders, no constraints."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") and key != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def metadata(wheel: Path) -> tuple[str, str, list[Requirement]]:
    """Name, version and requirements (without extras) of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    requirements = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return message["Name"], message["Version"], [r for r in requirements if not r.marker]


def stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel named ``name`` at ``version``: enough for pip to resolve a requirement offline."""
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    files = {
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: dpx-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{stem}.dist-info/RECORD,,")
    files[f"{stem}.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The core's and every plugin's wheel, built from this tree, by canonical name."""
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(folder), str(ROOT), *map(str, PLUGIN_FOLDERS)],
        check=True, env=offline_pip(), cwd=folder,
    )
    return {canonicalize_name(metadata(wheel)[0]): wheel for wheel in folder.glob("*.whl")}


@pytest.fixture(scope="module")
def stand_ins(built, tmp_path_factory) -> Path:
    """Stand-ins for every third-party requirement, at the version installed here (which satisfies it)."""
    folder = tmp_path_factory.mktemp("stand-ins")
    third_party = {canonicalize_name(r.name) for wheel in built.values() for r in metadata(wheel)[2]} - set(built)
    for name in sorted(third_party):
        stand_in_wheel(folder, name, Version(importlib.metadata.version(name)).public)
    return folder


@pytest.fixture(scope="module")
def empty_python(tmp_path_factory) -> Path:
    """The interpreter of a fresh virtual environment with nothing installed (not even pip)."""
    folder = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=False).create(folder)
    return folder / "bin" / "python"


def resolve(wheel: Path, wheels: Path, stand_ins: Path, python: Path, report: Path) -> dict[str, str]:
    """What ``pip install wheel`` would install into ``python``'s environment: {name: where it comes from}."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet", "--no-index",
         "--find-links", str(wheels), "--find-links", str(stand_ins), "--report", str(report), str(wheel)],
        capture_output=True, text=True, env=offline_pip(), check=False,
    )
    assert result.returncode == 0, f"{wheel.name} does not resolve offline:\n{result.stderr}"
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["download_info"]["url"] for item in installs}


def test_every_distribution_is_built(built):
    expected = {CORE_DISTRIBUTION, "dpx-pendulum", *(p.name for p in PLUGIN_FOLDERS)}
    assert set(built) == expected
    assert metadata(built[CORE_DISTRIBUTION])[1] == dpx.__version__, "the core's version comes from dpx.__version__"


@pytest.mark.parametrize("plugin", [p.name for p in PLUGIN_FOLDERS])
def test_plugin_requires_this_core_under_a_free_name_with_a_version_range(built, plugin):
    name, _, requirements = metadata(built[plugin])
    names = {canonicalize_name(r.name) for r in requirements}
    assert not names & TAKEN_ON_INDEX, f"{name} requires {sorted(names & TAKEN_ON_INDEX)}, an unrelated project on the index"
    core = next((r for r in requirements if canonicalize_name(r.name) == CORE_DISTRIBUTION), None)
    assert core is not None, f"{name} does not require {CORE_DISTRIBUTION}"
    assert core.specifier.contains(dpx.__version__), f"{name} requires {core}, which excludes this core {dpx.__version__}"
    major, minor = Version(dpx.__version__).release[:2]
    assert not core.specifier.contains(f"{major}.{minor + 1}.0") and not core.specifier.contains(f"{major + 1}.0.0"), (
        f"{name} requires {core}: pin below the next minor release (the plugin API may change there)"
    )


@pytest.mark.parametrize("plugin", [p.name for p in PLUGIN_FOLDERS])
def test_plugin_wheel_resolves_to_this_core_and_nothing_unrelated(built, stand_ins, empty_python, tmp_path, plugin):
    wheels = built[plugin].parent
    resolved = resolve(built[plugin], wheels, stand_ins, empty_python, tmp_path / "report.json")
    assert resolved.get(CORE_DISTRIBUTION) == built[CORE_DISTRIBUTION].as_uri(), resolved
    assert resolved[plugin] == built[plugin].as_uri()
    declared = {canonicalize_name(r.name) for wheel in (built[plugin], built[CORE_DISTRIBUTION])
                for r in metadata(wheel)[2]}
    assert set(resolved) == declared | {plugin, CORE_DISTRIBUTION}, (
        f"installing {plugin} would also install {sorted(set(resolved) - declared - {plugin, CORE_DISTRIBUTION})}"
    )
    dpx_distributions = {name for name, url in resolved.items() if url.startswith(wheels.as_uri())}
    assert dpx_distributions == {plugin, CORE_DISTRIBUTION}
