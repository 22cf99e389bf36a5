"""Finding SofaPython3, without importing it until a simulation is built.

``import Sofa`` loads the SOFA libraries and prints its start-up checks, so dpx
must not pay for it when it only lists plugins. :func:`sofa_installed` asks
the import system whether the package exists; :func:`import_sofa` imports it
when an environment is created.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: The reason shown in ``python -m dpx plugins`` when SofaPython3 is missing.
MISSING_SOFA = "SofaPython3 is not installed (import Sofa failed); see the dpx-sofa README to install SOFA"


def sofa_installed() -> bool:
    """Whether ``import Sofa`` would find a package, checked without importing it."""
    return importlib.util.find_spec("Sofa") is not None


def import_sofa() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(Sofa, SofaRuntime)``, with ``Sofa.Core`` and ``Sofa.Simulation`` loaded.

    Raises ``ModuleNotFoundError`` with :data:`MISSING_SOFA` (and the original
    error) when SofaPython3 cannot be imported, e.g. SOFA_ROOT unset.
    """
    try:
        sofa = importlib.import_module("Sofa")
        importlib.import_module("Sofa.Core")
        importlib.import_module("Sofa.Simulation")
        runtime = importlib.import_module("SofaRuntime")
    except ImportError as exc:
        raise ModuleNotFoundError(f"{MISSING_SOFA} ({type(exc).__name__}: {exc})", name="Sofa") from exc
    return sofa, runtime
