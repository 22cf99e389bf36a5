"""Beams that break on purpose, for dpx-sofa's tests of SOFA in worker processes.

They live in the package (not in the tests) because a worker process imports
its environment by name.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from dpx_sofa.beam import SofaBeam


class KilledBeam(SofaBeam):
    """A beam whose process is SIGKILLed in the middle of a SOFA time step, once.

    The kill happens at the start of the second time step of the process's
    ``after``-th sample, when ``marker`` does not exist yet (it is created
    first, so the restarted worker goes on).
    """

    def __init__(self, marker: str, after: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker, self.after = Path(marker), after
        self.samples = self.substeps = 0

    def start_sample(self) -> None:
        self.samples += 1
        self.substeps = 0
        super().start_sample()

    def on_animate_begin(self, event: Any) -> None:
        self.substeps += 1
        if self.samples == self.after and self.substeps == 2 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().on_animate_begin(event)


class UnmeshedBeam(SofaBeam):
    """A beam whose FEM force field finds no topology: SOFA fails to initialise it."""

    def create_scene(self, root: Any) -> None:
        super().create_scene(root)
        root.beam.removeObject(root.beam.grid)
