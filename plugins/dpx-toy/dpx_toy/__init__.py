"""dpx-toy: small simulators for trying dpx, and the example of a simulator plugin.

This module is what the ``dpx`` entry point of the distribution names, so dpx
imports it every time it lists plugins. It therefore imports nothing but
``dpx`` itself: the environments live in their own modules (``dpx_toy.mean``,
``dpx_toy.spring``, ``dpx_toy.heat``) and are imported only when a pipeline
asks for one by name. Copy this layout for your own plugin.
"""

import dpx


@dpx.hookimpl
def dpx_environments() -> dict[str, dpx.Component]:
    return {
        "toy.mean": dpx.Component(
            "dpx_toy.mean:Mean", "Random point cloud -> its mean point"
        ),
        "toy.spring": dpx.Component(
            "dpx_toy.spring:Spring", "Mass-spring-damper: state and parameters -> displacement after dt"
        ),
        "toy.heat": dpx.Component(
            "dpx_toy.heat:Heat", "2D heat diffusion on an n x n grid: field -> field some steps later"
        ),
        "toy.resonance": dpx.Component(
            "dpx_toy.resonance:Resonance", "Driven spring-damper: frequency and damping ratios -> amplitude (sharp ridge)"
        ),
    }
