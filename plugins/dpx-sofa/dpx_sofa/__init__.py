"""dpx-sofa: SOFA simulations as dpx environments.

dpx imports this module whenever it lists plugins, so it imports neither SOFA
nor the environments: it only checks that SofaPython3 could be imported
(without importing it) and returns import paths. When SofaPython3 is missing
the registry hook raises ``dpx.PluginUnavailable``, and ``python -m dpx
plugins`` lists this plugin as unavailable with the reason (no warning, and
strict mode does not fail on it) while every other plugin keeps working.
"""

import dpx
from dpx_sofa._sofa import MISSING_SOFA, sofa_installed


@dpx.hookimpl
def dpx_environments() -> dict[str, dpx.Component]:
    if not sofa_installed():
        raise dpx.PluginUnavailable(MISSING_SOFA)
    return {
        "sofa.beam": dpx.Component(
            "dpx_sofa.beam:SofaBeam", "Clamped hexahedral FEM beam: forces on its free end -> displacement"
        ),
    }
