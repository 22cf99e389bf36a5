"""The render process's side: vedo actors built from visual descriptions.

Only this module imports vedo (and VTK), and only the render process imports
it, so the simulation's process never pays for VTK. It receives the messages
:class:`dpx_vedo.viewer.VedoVisualizer` sends: scenes (every object of one
environment) and updates (changed fields by object id).
"""

from __future__ import annotations

import math
import queue
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import vedo

from dpx_vedo.viewer import NO_DISPLAY, ViewerError

#: Window classes VTK falls back to when it cannot reach a display.
HEADLESS_WINDOWS = ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow")
#: Fields a points or mesh actor takes in place; any other change rebuilds it.
IN_PLACE = {"positions", "color", "alpha", "scalars", "point_size", "wireframe"}
#: Boundary faces of volume cells by node count, in VTK's node order.
VOLUME_FACES = {
    4: ((0, 2, 1), (0, 1, 3), (1, 2, 3), (0, 3, 2)),
    8: ((0, 3, 2, 1), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)),
}
NO_OPENGL = (
    "VTK renders blank pictures here: no working OpenGL. Offscreen rendering needs EGL or OSMesa "
    "(Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri, or libosmesa6); "
    "or run without a viewer (visualizer=None)"
)


def probe(offscreen: bool) -> None:
    """Fail now, with a clear message, rather than draw nothing later."""
    plotter = vedo.Plotter(offscreen=offscreen, size=(64, 64))
    try:
        if not offscreen:
            if plotter.window.GetClassName() in HEADLESS_WINDOWS:
                raise ViewerError(NO_DISPLAY)
            return
        plotter.add(vedo.Sphere(c="red"))
        plotter.renderer.ResetCamera()
        plotter.render()
        image = plotter.screenshot(asarray=True)
        if len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) < 2:
            raise ViewerError(NO_OPENGL)
    finally:
        plotter.close()


def xyz(positions: Any) -> np.ndarray:
    """Points as (n, 3) floats: 2D simulations lie in the z = 0 plane."""
    points = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    return np.pad(points, ((0, 0), (0, 3 - points.shape[1]))) if points.shape[1] < 3 else points


def surface(positions: np.ndarray, cells: Any) -> np.ndarray:
    """Faces to draw: surface cells as given, the boundary of tetrahedra and hexahedra.

    Four-node cells are quads when they are flat, tetrahedra when they have volume.
    """
    cells = np.asarray(cells, dtype=np.int64)
    nodes = cells.shape[1]
    if nodes not in VOLUME_FACES or (nodes == 4 and not has_volume(positions, cells)):
        return cells
    faces = cells[:, VOLUME_FACES[nodes]].reshape(-1, len(VOLUME_FACES[nodes][0]))
    _, first, counts = np.unique(np.sort(faces, axis=1), axis=0, return_index=True, return_counts=True)
    return faces[first[counts == 1]]


def has_volume(positions: np.ndarray, cells: np.ndarray) -> bool:
    corners = positions[cells]
    edges = corners[:, 1:] - corners[:, :1]
    volume = np.abs(np.linalg.det(edges))
    scale = np.linalg.norm(edges, axis=2).mean(axis=1) ** 3
    return bool(np.median(volume / np.maximum(scale, 1e-300)) > 0.05)


def build(desc: dict[str, Any]) -> Any:
    """A vedo object showing one description."""
    kind = desc["kind"]
    if kind == "text":
        text = vedo.Text2D(str(desc["text"]), pos=desc.get("position") or "top-left", s=desc.get("size") or 1.0)
        if desc.get("color") is not None:
            text.color(desc["color"])
        return text
    positions = xyz(desc["positions"])
    if kind == "points":
        obj = vedo.Points(positions, r=desc.get("point_size") or 6)
    elif kind == "mesh":
        obj = vedo.Mesh([positions, surface(positions, desc["cells"])])
    elif kind == "arrows":
        scale = desc.get("scale")
        obj = vedo.Arrows(positions, positions + xyz(desc["vectors"]) * (1.0 if scale is None else scale))
    else:  # glyphs
        radii = 0.05 if desc.get("radii") is None else desc["radii"]
        obj = vedo.Spheres(positions, r=list(np.broadcast_to(np.asarray(radii, dtype=np.float64), len(positions))))
    style(obj, desc)
    return obj


def style(obj: Any, desc: dict[str, Any]) -> None:
    if desc.get("color") is not None:
        obj.color(desc["color"])
    if desc.get("alpha") is not None:
        obj.alpha(desc["alpha"])
    if desc.get("point_size") is not None:
        obj.point_size(desc["point_size"])
    if desc.get("wireframe") is not None:
        obj.wireframe(bool(desc["wireframe"]))
    if desc.get("scalars") is not None:
        obj.cmap("viridis", np.asarray(desc["scalars"], dtype=np.float64).ravel())


def change(obj: Any, desc: dict[str, Any], fields: dict[str, Any]) -> Any:
    """Apply ``fields`` (already merged into ``desc``) to ``obj``, in place when
    possible; return the object to show (a new one when it had to be rebuilt)."""
    kind = desc["kind"]
    if kind == "text":
        if "text" in fields:
            obj.text(str(desc["text"]))
        if "color" in fields:
            obj.color(desc["color"])
        if "size" in fields:
            obj.size(desc["size"])
        if "position" in fields:
            obj.pos(desc["position"])
        return obj
    if kind not in ("points", "mesh") or not set(fields) <= IN_PLACE:
        return build(desc)
    if "positions" in fields:
        positions = xyz(desc["positions"])
        if len(positions) != obj.npoints:
            return build(desc)
        obj.vertices = positions
    if set(fields) - {"positions"}:
        style(obj, desc)
    return obj


class SceneRenderer:
    """Every environment's scene in one window, one sub-window each, drawn on demand."""

    def __init__(self, offscreen: bool, size: tuple[int, int], frames_dir: str | None, video: str | None, fps: float):
        self.offscreen, self.size, self.video, self.fps = offscreen, size, video, fps
        self._tmp = tempfile.TemporaryDirectory(prefix="dpx-vedo-") if video and not frames_dir else None
        self.frames_dir = Path(frames_dir or self._tmp.name) if (frames_dir or video) else None
        if self.frames_dir is not None:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.frames: list[Path] = []
        self.scenes: dict[int, dict[int, dict[str, Any]]] = {}
        self.actors: dict[int, dict[int, Any]] = {}
        self.seen: dict[int, np.ndarray] = {}  # bounds shown so far, per scene
        self.plotter: Any = None
        self.dirty = False  # scenes added since the window was laid out
        if offscreen:
            vedo.settings.multi_samples = 0  # multisampling makes software OpenGL 3x slower
        probe(offscreen)

    def run(self, messages: Any) -> None:
        """Handle messages until ``("close",)``; keep an on-screen window responsive meanwhile."""
        while True:
            try:
                message = messages.get(timeout=None if self.offscreen else 0.05)
            except queue.Empty:
                if self.dirty:
                    self.layout()
                    self.plotter.render()
                if self.plotter is not None:
                    self.plotter.process_events()
                continue
            if message[0] == "close":
                break
            try:
                if message[0] == "scene":
                    self.add_scene(message[1], message[2])
                else:
                    self.update(message[1], message[2])
            except Exception:  # a bad object must not kill the viewer of a running simulation
                print(f"dpx-vedo: cannot draw {message[0]} of environment {message[1]}:", file=sys.stderr)
                traceback.print_exc()
        self.close()

    def add_scene(self, instance_id: int, objects: dict[int, dict[str, Any]]) -> None:
        """Build the scene's actors; the window is laid out again before the next drawing."""
        self.scenes[instance_id] = {object_id: dict(desc) for object_id, desc in objects.items()}
        self.actors[instance_id] = {object_id: build(desc) for object_id, desc in self.scenes[instance_id].items()}
        self.dirty = True

    def update(self, instance_id: int, updates: dict[int, dict[str, Any]]) -> None:
        scene, actors = self.scenes.get(instance_id), self.actors.get(instance_id)
        if scene is None:
            return
        if self.dirty:
            self.layout()
        at = self.slot(instance_id)
        for object_id, fields in updates.items():
            if object_id not in scene:
                continue
            scene[object_id].update(fields)
            old = actors[object_id]
            new = change(old, scene[object_id], fields)
            if new is not old:
                self.plotter.remove(old, at=at)
                self.plotter.add(new, at=at)
                actors[object_id] = new
        self.frame_camera(instance_id)
        self.render()

    def slot(self, instance_id: int) -> int:
        return sorted(self.scenes).index(instance_id)

    def layout(self) -> None:
        """One sub-window per scene, in a grid as square as the count allows (one row up to three)."""
        count = len(self.scenes)
        cols = count if count <= 3 else math.ceil(math.sqrt(count))
        rows = math.ceil(count / cols)
        if self.plotter is not None:
            self.plotter.close()
        width, height = self.size
        self.plotter = vedo.Plotter(
            shape=(rows, cols), size=(cols * width, rows * height), sharecam=False, offscreen=self.offscreen,
            title="dpx", bg="white",
        )
        self.seen.clear()  # fresh cameras
        self.dirty = False
        for instance_id in self.scenes:
            self.plotter.add(*self.actors[instance_id].values(), at=self.slot(instance_id))
            self.frame_camera(instance_id)

    def frame_camera(self, instance_id: int) -> None:
        """Reframe a sub-window when its objects leave what was shown; otherwise keep the camera still."""
        actors = self.actors[instance_id]
        boxes = [actors[oid].bounds() for oid, desc in self.scenes[instance_id].items() if desc["kind"] != "text"]
        if not boxes:
            return
        boxes = np.asarray(boxes)
        bounds = np.empty(6)
        bounds[0::2], bounds[1::2] = boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)
        seen = self.seen.get(instance_id)
        if seen is not None and np.all(bounds[0::2] >= seen[0::2]) and np.all(bounds[1::2] <= seen[1::2]):
            return
        if seen is not None:
            bounds[0::2], bounds[1::2] = np.minimum(bounds[0::2], seen[0::2]), np.maximum(bounds[1::2], seen[1::2])
        self.seen[instance_id] = bounds
        self.plotter.renderers[self.slot(instance_id)].ResetCamera(*bounds)

    def render(self) -> None:
        """Draw, and save the picture as the next frame."""
        self.plotter.render()
        if self.frames_dir is not None:
            path = self.frames_dir / f"frame_{len(self.frames):06d}.png"
            self.plotter.screenshot(str(path))
            self.frames.append(path)

    def close(self) -> None:
        if self.video and self.frames:
            write_video(self.frames, self.video, self.fps)
        if self.plotter is not None:
            self.plotter.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def write_video(frames: list[Path], path: str, fps: float) -> None:
    """A GIF with Pillow (always there with vedo), other formats with imageio."""
    from PIL import Image

    images = [Image.open(frame).convert("RGB") for frame in frames]
    size = images[0].size  # a scene added mid-run changes the window size
    images = [image if image.size == size else image.resize(size) for image in images]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.lower().endswith(".gif"):
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
        return
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps) as writer:
        for image in images:
            writer.append_data(np.asarray(image))
