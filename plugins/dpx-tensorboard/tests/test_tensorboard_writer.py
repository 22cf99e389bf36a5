"""Tests of the TensorBoard stats writer, read back with tensorboard's own reader."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import dpx.plugins
from dpx.core.session import Session
from dpx.core.stats import Stats, read_csv_curves
from dpx.testing import assert_light_import
from dpx_tensorboard.launch import logdir_for
from dpx_tensorboard.writer import BINS, TensorBoardWriter


def read_events(logdir: Path) -> event_accumulator.EventAccumulator:
    """Every scalar and histogram event of ``logdir``, as TensorBoard loads them."""
    accumulator = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0}
    )
    accumulator.Reload()
    return accumulator


def scalars(accumulator: event_accumulator.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def f32(value: float) -> float:
    return float(np.float32(value))


# -- the writer alone --------------------------------------------------------------


def test_scalars_and_histogram_read_back(tmp_path: Path) -> None:
    writer = TensorBoardWriter(tmp_path)
    losses = [1.0, 0.1, 1 / 3]
    for step, loss in enumerate(losses):
        writer.scalar("loss/batch", loss, step)
    writer.scalar("learning_rate", 0.01, 7)
    values = np.random.default_rng(0).normal(size=(40, 25)).astype(np.float32)
    writer.histogram("weights/layer.0", values, 3)
    writer.close()

    events = read_events(tmp_path / "tensorboard")
    tags = events.Tags()
    assert sorted(tags["scalars"]) == ["learning_rate", "loss/batch"]
    assert tags["histograms"] == ["weights/layer.0"]
    assert scalars(events, "loss/batch") == [(step, f32(loss)) for step, loss in enumerate(losses)]
    assert scalars(events, "learning_rate") == [(7, f32(0.01))]

    (event,) = events.Histograms("weights/layer.0")
    histogram = event.histogram_value
    flat = values.astype(np.float64).ravel()
    assert event.step == 3
    assert histogram.num == flat.size
    assert histogram.min == flat.min() and histogram.max == flat.max()
    assert histogram.sum == pytest.approx(flat.sum(), rel=1e-12, abs=1e-9)
    assert histogram.sum_squares == pytest.approx(flat @ flat, rel=1e-12)
    assert len(histogram.bucket) == len(histogram.bucket_limit) == BINS + 1
    assert sum(histogram.bucket) == flat.size
    counts, edges = np.histogram(flat, bins=BINS)
    assert histogram.bucket == [0.0, *counts.tolist()]
    assert histogram.bucket_limit == edges.tolist()


def test_histogram_leaves_out_non_finite_values(tmp_path: Path) -> None:
    writer = TensorBoardWriter(tmp_path)
    writer.histogram("weights/a", np.array([1.0, np.nan, 3.0, np.inf]), 0)
    writer.histogram("weights/b", np.array([np.nan, -np.inf]), 0)
    writer.histogram("weights/c", np.zeros(0), 0)
    writer.close()

    events = read_events(tmp_path / "tensorboard")
    assert events.Tags()["histograms"] == ["weights/a"]
    histogram = events.Histograms("weights/a")[0].histogram_value
    assert (histogram.num, histogram.min, histogram.max, histogram.sum) == (2, 1.0, 3.0, 4.0)


def test_flush_makes_events_readable_before_close(tmp_path: Path) -> None:
    writer = TensorBoardWriter(tmp_path)
    writer.scalar("loss/epoch", 0.25, 0)
    writer.flush()
    assert scalars(read_events(tmp_path / "tensorboard"), "loss/epoch") == [(0, 0.25)]
    writer.close()


def test_a_resumed_run_adds_a_file_to_the_same_run(tmp_path: Path) -> None:
    for step in (0, 1):
        writer = TensorBoardWriter(tmp_path)
        writer.scalar("loss/epoch", step + 0.5, step)
        writer.close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert scalars(read_events(tmp_path / "tensorboard"), "loss/epoch") == [(0, 0.5), (1, 1.5)]


def test_a_resumed_run_hides_the_steps_written_after_its_checkpoint(tmp_path: Path) -> None:
    killed = TensorBoardWriter(tmp_path)
    for step in range(1, 7):
        killed.scalar("loss/batch", step, step)
    killed.close()
    resumed = TensorBoardWriter(tmp_path)
    resumed.drop_after(4, 0)
    for step in range(5, 9):
        resumed.scalar("loss/batch", 10 * step, step)
    resumed.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0)]
    assert scalars(read_events(tmp_path / "tensorboard"), "loss/batch") == expected


# -- as a dpx plugin ---------------------------------------------------------------


def test_registered_by_its_entry_point() -> None:
    assert dpx.plugins.get_plugins().load("stats_writers", "tensorboard") is TensorBoardWriter


def test_entry_point_module_is_light() -> None:
    assert_light_import("dpx_tensorboard", heavy=["tensorboard", "torch"])


def test_core_stats_agree_with_csv(tmp_path: Path) -> None:
    stats = Stats(tmp_path, writers=["csv", "tensorboard"], histograms=True)
    losses = [0.9, 0.7, 0.8, 0.4]
    for step, loss in enumerate(losses):
        stats.batch(step, loss, {"grad_norm": 1.5}, lr=0.01)
    stats.epoch(0, 0.5, 0.4)
    stats.parameters(0, {"weights/w": np.arange(12.0).reshape(3, 4)})
    stats.close()

    csv = read_csv_curves(tmp_path)
    events = read_events(tmp_path / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == sorted(csv) == [
        "extra/grad_norm",
        "learning_rate",
        "loss/batch",
        "loss/batch_mean50",
        "loss/batch_var50",
        "loss/epoch",
        "loss/validation",
    ]
    for tag, curve in csv.items():
        assert scalars(events, tag) == [(step, f32(value)) for step, value in curve], tag
    assert csv["loss/batch_mean50"][-1] == (3, pytest.approx(np.mean(losses)))
    assert csv["loss/epoch"] == [(0, 0.5)] and csv["loss/validation"] == [(0, 0.4)]
    histogram = events.Histograms("weights/w")[0].histogram_value
    assert (histogram.num, histogram.min, histogram.max, histogram.sum) == (12, 0.0, 11.0, 66.0)


# -- serving -----------------------------------------------------------------------


def test_logdir_is_the_sessions_stats_folder(tmp_path: Path) -> None:
    session = Session.start(tmp_path, "run")
    assert logdir_for(session) == session.stats_dir
    assert logdir_for(session.path) == session.stats_dir
    assert logdir_for(str(session.stats_dir)) == session.stats_dir
    assert logdir_for(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="no session"):
        logdir_for(tmp_path / "missing")


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_serves_a_session_on_loopback(tmp_path: Path) -> None:
    session = Session.start(tmp_path, "run")
    writer = TensorBoardWriter(session.stats_dir)
    writer.scalar("loss/epoch", 0.5, 0)
    writer.close()

    # launch() serves from a daemon thread that has no stop: run it in a process of its own.
    server = subprocess.Popen(
        [sys.executable, "-m", "dpx_tensorboard", str(session.path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        assert urlparse(url).hostname == "127.0.0.1", url
        assert urlparse(url).port
        assert get_json(url + "data/logdir") == {"logdir": str(session.stats_dir)}
        deadline = time.monotonic() + 60
        while "tensorboard" not in get_json(url + "data/runs"):
            assert time.monotonic() < deadline, "TensorBoard never listed the run"
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def test_passes_the_stats_writer_kit(tmp_path: Path) -> None:
    def read_back(stats_dir: Path) -> dict[str, list[tuple[int, float]]]:
        accumulator = read_events(stats_dir / "tensorboard")
        return {tag: scalars(accumulator, tag) for tag in accumulator.Tags()["scalars"]}

    stats = dpx.testing.check_stats_writer("tensorboard", tmp_path, read_back)
    assert len(list((stats / "tensorboard").iterdir())) == 2, "each run adds its own event file"
