"""The viewer: the clouds and the predicted means, rendered while the network runs.

The vedo viewer runs in its own process and never blocks the simulation;
``offscreen=True`` writes PNG frames instead of opening a window (drop it to
watch on a screen).

    python examples/features/viewer.py [--quick]
"""

from pathlib import Path

import dpx
from common import NETWORK, arguments, environment, trained


def main(out: str = "sessions/features", quick: bool = False) -> list[Path]:
    session = trained(out, quick)
    frames = Path(out) / "frames"
    viewer = environment(visualizer="vedo", visualizer_kwargs={"offscreen": True, "frames_dir": str(frames)})
    summary = dpx.Prediction(NETWORK, viewer, session_dir=out, session_name=session.name,
                             step_nb=5 if quick else 100).execute()
    print(summary)
    written = sorted(frames.glob("*.png"))
    print(f"{len(written)} frames in {frames}")
    return written


if __name__ == "__main__":
    main(**arguments())
