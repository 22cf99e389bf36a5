"""Tests of the vedo viewer: real offscreen pictures, side by side, never slowing the simulation."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # pillow comes with vedo (through matplotlib)

import dpx
from dpx.core.config import ConfigError
from dpx.core.visual import VisualFactory
from dpx_vedo.viewer import VedoVisualizer, ViewerError

SIZE = (160, 120)  # each sub-window's (width, height)
OFFSCREEN = {"offscreen": True, "size": SIZE}


def frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("frame_*.png"))]


def drawn(image: np.ndarray) -> int:
    """Pixels that are not the white background (nor the grey line vedo draws between sub-windows)."""
    return int((image.min(axis=-1) < 200).sum())


def cell(image: np.ndarray, index: int, cols: int) -> np.ndarray:
    """Sub-window ``index`` of a grid with ``cols`` columns, filled row by row, without its border."""
    width, height = SIZE
    row, col = divmod(index, cols)
    return image[row * height + 2 : (row + 1) * height - 2, col * width + 2 : (col + 1) * width - 2]


def test_entry_point_module_is_light() -> None:
    dpx.testing.assert_light_import("dpx_vedo", heavy=["vedo", "vtk"])
    dpx.testing.assert_light_import("dpx_vedo.viewer", heavy=["vedo", "vtk"])  # the pipeline's side


def test_plugin_offers_the_viewer() -> None:
    from dpx.plugins import get_plugins

    assert get_plugins().load("visualizers", "vedo") is VedoVisualizer


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": (0, 100)}, "size=.*two positive integers"),
        ({"size": 300}, "size=300"),
        ({"every": 0}, "every=0: must be a positive integer"),
        ({"queue_size": 1.5}, "queue_size=1.5"),
        ({"offscreen": "yes"}, "offscreen='yes': must be True or False"),
        ({"video": "run.txt"}, r"video='run.txt': must end in \.gif"),
        ({"fps": 0}, "fps=0"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VedoVisualizer(**{"offscreen": True, **options})


def test_no_display_or_no_vedo_fails_fast_with_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        with pytest.raises(ViewerError, match=r"no display\); use visualizer_kwargs=\{'offscreen': True\}"):
            VedoVisualizer()
        config = dpx.EnvironmentConfig(Swarm, visualizer="vedo")  # the pipeline fails at start, not midway
        with pytest.raises(ViewerError, match="no display"):
            dpx.DataGeneration(config, session_dir=str(tmp_path), progress=False).execute()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vedo" else find_spec(name, *a))
    with pytest.raises(ViewerError, match="needs vedo: pip install vedo"):
        VedoVisualizer(offscreen=True)


def test_a_render_process_that_cannot_start_fails_the_constructor(tmp_path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ViewerError, match="render process cannot start: FileExistsError"):
        VedoVisualizer(offscreen=True, frames_dir=tmp_path / "taken")


def test_mesh_surfaces_of_volume_cells() -> None:
    from dpx_vedo.render import surface

    tets = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)
    assert len(surface(tets, [[0, 1, 2, 3], [1, 2, 3, 4]])) == 6  # the shared face is inside
    quads = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    np.testing.assert_array_equal(surface(quads, [[0, 1, 2, 3]]), [[0, 1, 2, 3]])  # flat: a quad, kept
    cubes = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1, 2)], float)
    hexa = [[0, 1, 4, 3, 6, 7, 10, 9], [1, 2, 5, 4, 7, 8, 11, 10]]
    assert surface(cubes, hexa).shape == (10, 4)


def kind_scenes() -> list[tuple[VisualFactory, dict]]:
    """One scene per kind of object (and of mesh cell), with a change that moves or rewrites it."""
    rng = np.random.default_rng(0)
    scenes = []

    def scene(add, **change):
        factory = VisualFactory()
        scenes.append((factory, {add(factory): change}))

    points = rng.random((40, 3))
    scene(lambda f: f.add_points(points, color="red", point_size=8), positions=points * [1, 0.5, 1])
    grid = np.array([[x, y] for y in range(3) for x in range(3)], float)
    quads = np.array([[0, 1, 4, 3], [1, 2, 5, 4], [3, 4, 7, 6], [4, 5, 8, 7]])
    scene(lambda f: f.add_mesh(grid, quads, scalars=grid[:, 0]), positions=grid * [1, 0.4])
    tets = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)
    scene(lambda f: f.add_mesh(tets, np.array([[0, 1, 2, 3], [1, 2, 3, 4]]), color="gold"), positions=tets * 0.5)
    starts = rng.random((6, 3))
    scene(lambda f: f.add_arrows(starts, np.full((6, 3), 0.3), color="blue"), vectors=np.full((6, 3), -0.3))
    scene(lambda f: f.add_glyphs(starts, radii=0.1, color="green"), radii=np.linspace(0.02, 0.3, 6))
    scene(lambda f: f.add_text("step 0", color="black", size=2), text="step 1 of many")
    cube = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1)], float)
    hexa = np.array([[0, 1, 3, 2, 4, 5, 7, 6]])
    scene(lambda f: f.add_mesh(cube, hexa, wireframe=True), positions=cube * [1, 0.3, 1])
    return scenes


def test_every_kind_is_drawn_in_its_sub_window_and_updates_change_the_picture(tmp_path) -> None:
    scenes = kind_scenes()
    viewer = VedoVisualizer(**OFFSCREEN, frames_dir=tmp_path, queue_size=32)
    for instance_id, (factory, _) in enumerate(scenes):
        viewer.add_scene(instance_id, factory.scene())
    for instance_id, (factory, changes) in enumerate(scenes):  # round 1: draw as added
        viewer.update(instance_id, {object_id: {} for object_id in changes})
    for instance_id, (factory, changes) in enumerate(scenes):  # round 2: every object changes
        for object_id, fields in changes.items():
            factory.update(object_id, **fields)
        viewer.update(instance_id, factory.take_updates())
    viewer.close()
    assert not viewer.process.is_alive() and viewer.frames_dropped == 0

    pictures = frames(tmp_path)
    assert len(pictures) == 2 * len(scenes)
    before, after = pictures[len(scenes) - 1], pictures[-1]
    assert after.shape == (3 * SIZE[1], 3 * SIZE[0], 3)  # 7 scenes: a 3 x 3 grid
    for index in range(len(scenes)):
        assert drawn(cell(before, index, 3)) > 30, f"scene {index} is blank"
        assert not np.array_equal(cell(before, index, 3), cell(after, index, 3)), f"scene {index} did not change"
    assert drawn(cell(after, 7, 3)) == drawn(cell(after, 8, 3)) == 0  # no scene there


class Swarm(dpx.Environment):
    """Points drifting in a colour of their own, with a caption."""

    def __init__(self, color: str = "red"):
        self.color = color
        self.cloud: int | None = None  # set only when a viewer is configured

    def init_visualization(self) -> None:
        self.positions = np.zeros((30, 3))
        self.cloud = self.factory.add_points(self.positions, color=self.color, point_size=10)
        self.caption = self.factory.add_text("sample 0")

    def step(self) -> None:
        self.positions = self.rng.random((30, 3))
        if self.cloud is not None:
            self.factory.update(self.cloud, positions=self.positions)
            self.factory.update(self.caption, text=f"mean {self.positions.mean():.3f}")
            self.update_visualisation()
        self.set_training_data(input=self.positions, ground_truth=self.positions.mean(axis=0))


def coloured(image: np.ndarray, channel: int) -> int:
    """Pixels where one RGB channel clearly dominates."""
    others = np.delete(image.astype(int), channel, axis=-1)
    return int(((image[..., channel] > 150) & (others.max(axis=-1) < 100)).sum())


def test_two_environments_side_by_side_and_a_video(tmp_path) -> None:
    viewer = VedoVisualizer(**OFFSCREEN, frames_dir=tmp_path / "frames", video=tmp_path / "run.gif", queue_size=16)
    rng = np.random.default_rng(1)
    factories = []
    for instance_id, color in enumerate(("red", "blue")):
        factory = VisualFactory()
        cloud = factory.add_points(rng.random((30, 3)), color=color, point_size=10)
        viewer.add_scene(instance_id, factory.scene())
        factories.append((factory, cloud))
    for _ in range(3):
        for instance_id, (factory, cloud) in enumerate(factories):
            factory.update(cloud, positions=rng.random((30, 3)))
            viewer.update(instance_id, factory.take_updates())
    viewer.close()

    pictures = frames(tmp_path / "frames")
    assert len(pictures) == 6 and pictures[-1].shape == (SIZE[1], 2 * SIZE[0], 3)
    left, right = pictures[-1][:, : SIZE[0]], pictures[-1][:, SIZE[0] :]
    assert coloured(left, 0) > 50 and coloured(left, 2) == 0  # environment 0, red, on the left
    assert coloured(right, 2) > 50 and coloured(right, 0) == 0  # environment 1, blue, on the right
    assert not np.array_equal(pictures[-2], pictures[-1])
    with Image.open(tmp_path / "run.gif") as video:
        assert video.n_frames == 6


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="pauses the render process with SIGSTOP")
def test_a_stalled_viewer_drops_frames_instead_of_slowing_the_simulation(tmp_path) -> None:
    viewer = VedoVisualizer(**OFFSCREEN, frames_dir=tmp_path, queue_size=1)
    factory = VisualFactory()
    cloud = factory.add_points(np.zeros((1000, 3)))
    viewer.add_scene(0, factory.scene())
    with pytest.warns(RuntimeWarning, match="environment 0 has no visual object 99; its updates are ignored"):
        viewer.update(0, {99: {"positions": np.zeros((1, 3))}})  # reported, and nothing is sent
    deadline = time.monotonic() + 20
    while viewer.frames_sent == 0 and time.monotonic() < deadline:  # the scene may still fill the queue
        factory.update(cloud, positions=np.ones((1000, 3)))
        viewer.update(0, factory.take_updates())
        time.sleep(0.01)
    while not list(tmp_path.glob("frame_*.png")) and time.monotonic() < deadline:  # drawn: the queue is empty
        time.sleep(0.01)
    sent, dropped = viewer.frames_sent, viewer.frames_dropped
    os.kill(viewer.process.pid, signal.SIGSTOP)
    try:
        durations = []
        for step in range(50):
            factory.update(cloud, positions=np.full((1000, 3), float(step)))
            start = time.perf_counter()
            viewer.update(0, factory.take_updates())
            durations.append(time.perf_counter() - start)
    finally:
        os.kill(viewer.process.pid, signal.SIGCONT)
    assert max(durations) < 0.05, f"an update waited {max(durations):.3f} s for the viewer"
    assert (viewer.frames_sent - sent, viewer.frames_dropped - dropped) == (1, 49)  # one fits in the queue
    viewer.close()
    assert len(frames(tmp_path)) == 3  # the first, the queued one, and the last changes at close


def test_a_pipeline_with_the_vedo_viewer_writes_frames(tmp_path) -> None:
    config = dpx.EnvironmentConfig(
        Swarm, seed=0, visualizer="vedo",
        visualizer_kwargs={**OFFSCREEN, "frames_dir": str(tmp_path / "frames"), "queue_size": 16, "every": 2},
    )
    session = str(tmp_path / "session")
    dpx.DataGeneration(config, session_dir=session, batch_nb=2, batch_size=3, progress=False).execute()
    pictures = frames(tmp_path / "frames")
    assert len(pictures) == 3  # 6 samples, one drawn in 2
    assert all(coloured(picture, 0) > 50 for picture in pictures)
    assert not np.array_equal(pictures[0], pictures[-1])


def test_passes_the_visualizer_kit(tmp_path) -> None:
    with pytest.warns(RuntimeWarning, match="environment 0 has no visual object 999"):
        viewer = dpx.testing.check_visualizer("vedo", {**OFFSCREEN, "frames_dir": str(tmp_path), "queue_size": 16})
    assert viewer.frames_sent + viewer.frames_dropped == 10
    assert len(frames(tmp_path)) == viewer.frames_sent > 0
