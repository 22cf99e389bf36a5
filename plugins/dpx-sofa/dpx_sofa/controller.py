"""The SOFA side of the bridge: a controller in the scene that forwards SOFA's
animation events to a dpx environment.

Importing this module imports SofaPython3 (the class derives from
``Sofa.Core.Controller``), so only :meth:`SofaEnvironment.build
<dpx_sofa.environment.SofaEnvironment.build>` imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import Sofa.Core

if TYPE_CHECKING:
    from dpx_sofa.environment import SofaEnvironment


class EnvironmentController(Sofa.Core.Controller):
    """Calls ``environment.on_animate_begin`` / ``on_animate_end`` at the start and
    end of every SOFA time step, whoever runs the loop (dpx's ``step()``,
    ``Sofa.Simulation.animate`` or the runSofa GUI)."""

    def __init__(self, environment: SofaEnvironment, *args: Any, **kwargs: Any) -> None:
        Sofa.Core.Controller.__init__(self, *args, **kwargs)
        self.environment = environment

    def onAnimateBeginEvent(self, event: Any) -> None:
        self.environment.on_animate_begin(event)

    def onAnimateEndEvent(self, event: Any) -> None:
        self.environment.on_animate_end(event)
