"""dpx-fem: finite-element simulators for dpx, built on scikit-fem.

dpx imports this module whenever it lists plugins, so it imports nothing but
``dpx``: scikit-fem and SciPy are imported by ``dpx_fem.beam`` only when a
pipeline uses ``fem.beam``.
"""

import dpx


@dpx.hookimpl
def dpx_environments() -> dict[str, dpx.Component]:
    return {
        "fem.beam": dpx.Component(
            "dpx_fem.beam:Beam", "3D linear-elastic cantilever (scikit-fem): nodal forces -> nodal displacements"
        ),
    }
