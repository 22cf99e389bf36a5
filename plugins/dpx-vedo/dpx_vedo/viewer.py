"""The ``vedo`` visualizer: environments' visual objects drawn by vedo in a process of its own.

The :class:`VedoVisualizer` object lives in the pipeline's process and never
imports vedo. It starts a render process (``spawn`` context) and feeds it
through a bounded queue with plain messages, dicts of NumPy arrays and
strings. ``update`` never waits: when the render process is behind and the
queue is full, the frame is dropped (and counted), and its changes are merged
into the next frame, so a slow viewer costs frames, never simulation time,
and never loses a change.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import queue
import sys
import warnings
from typing import Any

from dpx.core.config import ConfigError

#: Seconds to wait for the render process to start (it imports VTK), and to finish at close.
START_TIMEOUT = 120.0
CLOSE_TIMEOUT = 120.0
NO_DISPLAY = (
    "vedo cannot open a window here (no display); use visualizer_kwargs={'offscreen': True}, "
    "or run the pipeline without a viewer (visualizer=None)"
)


class ViewerError(RuntimeError):
    """vedo cannot draw here (not installed, no display, no OpenGL); the message says what to do."""


class VedoVisualizer:
    """Draw each environment's scene in its own sub-window, in a separate process.

    ``offscreen`` renders without a window (headless machines, CI); ``frames_dir``
    receives a PNG per rendered frame; ``video`` (``.gif``, or ``.mp4``/``.webm``
    with ``imageio[ffmpeg]`` installed) is written from the frames at ``fps`` when
    the viewer closes; ``size`` is each sub-window's (width, height) in pixels;
    ``every`` draws one update in N per environment; ``queue_size`` is how many
    frames may wait for the render process before new ones are dropped.
    """

    def __init__(
        self,
        offscreen: bool = False,
        frames_dir: str | os.PathLike[str] | None = None,
        video: str | os.PathLike[str] | None = None,
        size: tuple[int, int] = (480, 360),
        every: int = 1,
        queue_size: int = 4,
        fps: float = 10.0,
    ) -> None:
        size = _check_options(offscreen, video, size, every, queue_size, fps)
        if importlib.util.find_spec("vedo") is None:
            raise ViewerError("the vedo viewer needs vedo: pip install vedo (or run without a viewer: visualizer=None)")
        if not offscreen and _no_display():
            raise ViewerError(NO_DISPLAY)
        self.every = every
        #: Frames handed to the render process, and frames dropped because it was behind.
        self.frames_sent = self.frames_dropped = 0
        self._objects: dict[int, set[int]] = {}
        self._pending: dict[int, dict[int, dict[str, Any]]] = {}
        self._counts: dict[int, int] = {}
        self._reported: set[tuple[int, int]] = set()
        self._closed = False
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue(maxsize=queue_size)
        receiver, sender = context.Pipe(duplex=False)
        settings = {
            "offscreen": bool(offscreen),
            "size": size,
            "frames_dir": None if frames_dir is None else os.fspath(frames_dir),
            "video": None if video is None else os.fspath(video),
            "fps": float(fps),
        }
        self.process = context.Process(
            target=_serve, args=(self._queue, sender, settings), name="dpx-vedo", daemon=True
        )
        self.process.start()
        sender.close()
        self._wait_ready(receiver)

    def add_scene(self, instance_id: int, objects: dict[int, dict[str, Any]]) -> None:
        """Show an environment's objects in a sub-window of its own (the layout follows the count)."""
        self._objects[instance_id] = set(objects)
        self._send(("scene", instance_id, objects))

    def update(self, instance_id: int, updates: dict[int, dict[str, Any]]) -> None:
        """Queue the changes for drawing without ever waiting; drop the frame if the viewer is behind."""
        known = self._objects.get(instance_id, ())
        pending = self._pending.setdefault(instance_id, {})
        for object_id, fields in updates.items():
            if object_id in known:
                pending.setdefault(object_id, {}).update(fields)
            elif (instance_id, object_id) not in self._reported:
                self._reported.add((instance_id, object_id))
                warnings.warn(
                    f"dpx-vedo: environment {instance_id} has no visual object {object_id!r}; its updates are ignored",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._counts[instance_id] = count = self._counts.get(instance_id, 0) + 1
        if count % self.every or not pending:
            return
        try:
            self._queue.put_nowait(("update", instance_id, pending))
        except queue.Full:
            self.frames_dropped += 1
            return
        self._pending[instance_id] = {}  # the queued dict now belongs to the queue: never touch it again
        self.frames_sent += 1

    def close(self) -> None:
        """Draw the last changes, let the render process write its video, and stop it."""
        if self._closed:
            return
        self._closed = True
        for instance_id, pending in self._pending.items():
            if pending:
                self._send(("update", instance_id, pending))
        self._send(("close",))
        self.process.join(CLOSE_TIMEOUT)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
            self._queue.cancel_join_thread()  # what is left in the pipe has no reader any more
            warnings.warn(f"dpx-vedo: the render process did not finish within {CLOSE_TIMEOUT:.0f} s; stopped it",
                          RuntimeWarning, stacklevel=2)
        self._queue.close()
        self._queue.join_thread()

    def _send(self, message: tuple[Any, ...]) -> None:
        """Queue a message that must not be dropped (scenes, last changes, close)."""
        if self.process.is_alive():
            try:
                self._queue.put(message, timeout=CLOSE_TIMEOUT)
            except queue.Full:
                warnings.warn(f"dpx-vedo: the render process is stuck; {message[0]} not drawn", RuntimeWarning,
                              stacklevel=3)

    def _wait_ready(self, receiver: Any) -> None:
        """Raise here, in the constructor, if the render process cannot draw: the pipeline then fails fast."""
        try:
            if not receiver.poll(START_TIMEOUT):
                raise ViewerError(f"the vedo render process did not start within {START_TIMEOUT:.0f} s")
            error = receiver.recv()
        except EOFError:
            self.process.join(5)
            raise ViewerError(
                f"the vedo render process died while starting (exit code {self.process.exitcode}); "
                "VTK could not create a render window here. Try visualizer_kwargs={'offscreen': True}, "
                "or run without a viewer (visualizer=None)"
            ) from None
        except ViewerError:
            self.process.terminate()
            raise
        finally:
            receiver.close()
        if error is not None:
            self.process.join(5)
            raise ViewerError(error)


def _serve(messages: Any, ready: Any, settings: dict[str, Any]) -> None:
    """The render process: report whether drawing works, then draw messages until closed."""
    if settings["offscreen"] and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # skip VTK's X attempt and warning
    try:
        from dpx_vedo.render import SceneRenderer

        renderer = SceneRenderer(**settings)
    except ViewerError as exc:
        ready.send(str(exc))
        return
    except Exception as exc:  # whatever stops vedo, the constructor in the pipeline's process reports it
        ready.send(f"the vedo render process cannot start: {type(exc).__name__}: {exc}")
        return
    ready.send(None)
    ready.close()
    renderer.run(messages)


def _no_display() -> bool:
    """Linux and BSD need an X or Wayland server for a window; macOS and Windows always have one."""
    return os.name == "posix" and sys.platform != "darwin" and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _check_options(
    offscreen: Any, video: Any, size: Any, every: Any, queue_size: Any, fps: Any
) -> tuple[int, int]:
    def require(condition: bool, name: str, value: Any, message: str) -> None:
        if not condition:
            raise ConfigError(f"VedoVisualizer: {name}={value!r}: {message}")

    require(isinstance(offscreen, bool), "offscreen", offscreen, "must be True or False")
    require(
        isinstance(size, (tuple, list)) and len(size) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size),
        "size", size, "must be (width, height) in pixels, two positive integers",
    )
    for name, value in (("every", every), ("queue_size", queue_size)):
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value,
                "must be a positive integer")
    require(isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0, "fps", fps,
            "must be a positive number")
    if video is not None:
        suffix = os.path.splitext(os.fspath(video))[1].lower()
        require(suffix in (".gif", ".mp4", ".webm", ".avi", ".mov"), "video", video,
                "must end in .gif, .mp4, .webm, .avi or .mov")
        require(suffix == ".gif" or importlib.util.find_spec("imageio") is not None, "video", video,
                "needs imageio for this format (pip install 'imageio[ffmpeg]'), or use a .gif")
    return int(size[0]), int(size[1])
