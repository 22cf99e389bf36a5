"""Serve TensorBoard for a session, on this machine only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpx.core.session import Session

#: Loopback only: training curves and paths are not for the network to see.
HOST = "127.0.0.1"


def logdir_for(session_or_stats_dir: Session | str | os.PathLike[str]) -> Path:
    """The folder TensorBoard reads: a session's ``stats/``, or the folder itself.

    Any other folder (a session's ``stats/``, or a folder of sessions, to
    compare them) is read as is: TensorBoard finds event files in subfolders.
    """
    stats_dir = getattr(session_or_stats_dir, "stats_dir", None)
    if stats_dir is not None:
        return Path(stats_dir)
    path = Path(session_or_stats_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"no session or stats folder at {path}")
    return path / "stats" if (path / "stats").is_dir() else path


def launch(session_or_stats_dir: Session | str | os.PathLike[str], port: int = 0) -> str:
    """Start TensorBoard on 127.0.0.1 in a background thread and return its URL.

    ``port=0`` picks a free port. No browser is opened. The server is a daemon
    thread: it stops when the calling process ends.
    """
    from tensorboard import program

    logdir = logdir_for(session_or_stats_dir)
    board = program.TensorBoard()
    board.configure(argv=["tensorboard", "--logdir", str(logdir), "--host", HOST, "--port", str(port)])
    return board.launch()
