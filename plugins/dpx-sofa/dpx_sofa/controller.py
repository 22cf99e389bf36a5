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
    ``Sofa.Simulation.animate`` or the runSofa GUI), and ``environment.on_init_done``
    once SOFA has initialised the scene (SOFA calls a controller's own ``init``
    before the components below it are initialised).

    SOFA logs an exception raised in a handler and goes on simulating; the
    controller keeps the first one, stops forwarding events, and
    :meth:`raise_failure` raises it in the code that animates the scene.
    """

    def __init__(self, environment: SofaEnvironment, *args: Any, **kwargs: Any) -> None:
        Sofa.Core.Controller.__init__(self, *args, **kwargs)
        self.environment = environment
        #: The first exception a handler raised, until :meth:`raise_failure` raises it.
        self.failure: BaseException | None = None

    def onSimulationInitDoneEvent(self, event: Any) -> None:
        self._forward(self.environment.on_init_done, event)

    def onAnimateBeginEvent(self, event: Any) -> None:
        self._forward(self.environment.on_animate_begin, event)

    def onAnimateEndEvent(self, event: Any) -> None:
        self._forward(self.environment.on_animate_end, event)

    def _forward(self, handler: Any, event: Any) -> None:
        if self.failure is not None:
            return
        try:
            handler(event)
        except BaseException as exc:
            self.failure = exc
            raise  # SOFA logs it with the traceback

    def raise_failure(self) -> None:
        """Raise (once) the exception a handler raised since the last call."""
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure
