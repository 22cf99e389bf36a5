"""Finding SofaPython3, without importing it until a simulation is built.

``import Sofa`` loads the SOFA libraries and prints its start-up checks, so dpx
must not pay for it when it only lists plugins. :func:`sofa_installed` asks
the import system whether the package exists; :func:`import_sofa` imports it
when an environment is created.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from types import ModuleType

#: The reason shown in ``python -m dpx plugins`` when SofaPython3 is missing.
MISSING_SOFA = "SofaPython3 is not installed (import Sofa failed); see the dpx-sofa README to install SOFA"


def sofa_installed() -> bool:
    """Whether ``import Sofa`` would find a package, checked without importing it."""
    return importlib.util.find_spec("Sofa") is not None


def import_sofa() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(Sofa, SofaRuntime)``, with ``Sofa.Core`` and ``Sofa.Simulation`` loaded.

    Raises ``ModuleNotFoundError`` with :data:`MISSING_SOFA` (and the original
    error) when SofaPython3 cannot be imported, e.g. SOFA_ROOT unset or a
    build for another Python, and ``ImportError`` when it loaded a second
    Python into this one.
    """
    linked_before = _libpython_mapped()
    try:
        sofa = importlib.import_module("Sofa")
    except ImportError as exc:
        raise _missing(exc) from exc
    if linked_before == [] and (loaded := _libpython_mapped()):
        raise ImportError(
            f"SofaPython3 loaded a second copy of Python ({loaded[0]}) into {sys.executable}, whose Python is "
            "linked in statically; SOFA would crash or misbehave. Make the virtual environment with a Python "
            "built as a shared library (e.g. pyenv's), the one SofaPython3 was built for; see the dpx-sofa README"
        )
    try:
        importlib.import_module("Sofa.Core")
        importlib.import_module("Sofa.Simulation")
        runtime = importlib.import_module("SofaRuntime")
    except ImportError as exc:
        raise _missing(exc) from exc
    return sofa, runtime


def _missing(exc: ImportError) -> ModuleNotFoundError:
    """:data:`MISSING_SOFA` with the import's error, and the likely cause when the ``Sofa`` package exists."""
    hint = "" if getattr(exc, "name", None) == "Sofa" else (
        f"; this is Python {platform.python_version()}: SofaPython3 must be built for the same Python")
    return ModuleNotFoundError(f"{MISSING_SOFA} ({type(exc).__name__}: {exc}{hint})", name="Sofa")


def _libpython_mapped() -> list[str] | None:
    """The ``libpython*.so`` files this process has mapped (None where ``/proc/self/maps`` does not exist).

    SofaPython3 links to ``libpythonX.Y.so``: run by an interpreter that has
    Python linked in statically (Debian's ``/usr/bin/python3.11``), importing
    it maps a second Python, which imports but fails at the first scene.
    """
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "/libpython" in line})
    except OSError:
        return None
