"""``python -m dpx_tensorboard SESSION [--port N]``: serve a session's curves."""

from __future__ import annotations

import argparse
import threading

from tensorboard.program import TensorBoardServerException

from dpx_tensorboard.launch import launch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dpx_tensorboard",
        description="Serve TensorBoard on 127.0.0.1 for a dpx session (or its stats/ folder, or a folder of sessions).",
    )
    parser.add_argument("session", help="session folder, its stats/ folder, or a folder of sessions")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    args = parser.parse_args(argv)
    try:
        url = launch(args.session, port=args.port)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    except TensorBoardServerException as exc:
        parser.error(exc.msg)
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
