"""dpx-vedo: a vedo viewer for the visual objects environments describe.

This module is what the ``dpx`` entry point names, so dpx imports it whenever
it lists plugins: it imports only ``dpx``. The viewer (``dpx_vedo.viewer``)
and the vedo code (``dpx_vedo.render``, run in its own process) load only when
a pipeline asks for ``visualizer="vedo"``.
"""

import dpx


@dpx.hookimpl
def dpx_visualizers() -> dict[str, dpx.Component]:
    return {
        "vedo": dpx.Component(
            "dpx_vedo.viewer:VedoVisualizer",
            "vedo/VTK viewer in its own process: one sub-window per environment, PNG frames, optional video",
        ),
    }
