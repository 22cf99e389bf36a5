"""What the per-step savings must not change: error statistics and the progress line's figures."""

from __future__ import annotations

import math

import numpy as np

from dpx.core.prediction import ErrorStats
from dpx.core.progress import Progress


def reference_error(predictions: np.ndarray, truths: np.ndarray) -> tuple[int, float, float]:
    rows = np.isfinite(truths.reshape(len(truths), -1)).all(axis=1)
    error = (predictions[rows] - truths[rows]).reshape(rows.sum(), -1).astype(np.float64)
    truth = truths[rows].reshape(rows.sum(), -1).astype(np.float64)
    return int(rows.sum()), float((error**2).mean(axis=1).sum()), float((truth**2).mean(axis=1).sum())


def test_error_stats_are_the_same_step_by_step_or_by_batch_with_rows_lacking_a_truth():
    rng = np.random.default_rng(3)
    truths = rng.normal(size=(40, 5, 3)).astype(np.float32)
    truths[[3, 17]] = np.nan  # environments that did not set the ground truth that step
    truths[25, 1, 2] = np.inf
    predictions = truths + rng.normal(scale=0.1, size=truths.shape).astype(np.float32)
    predictions[[3, 17, 25]] = 0
    count, squared, truth_squared = reference_error(predictions, truths)
    step_by_step, by_batch = ErrorStats(), ErrorStats()
    for row in range(len(truths)):
        step_by_step.add(predictions[row:row + 1], truths[row:row + 1])
    for first in range(0, 40, 16):
        by_batch.add(predictions[first:first + 16], truths[first:first + 16])
    for stats in (step_by_step, by_batch):
        assert stats.count == count == 37
        assert math.isclose(stats.squared, squared, rel_tol=1e-9)
        assert math.isclose(stats.truth_squared, truth_squared, rel_tol=1e-9)


def test_a_nan_prediction_against_a_finite_truth_shows_in_the_error():
    stats = ErrorStats()
    stats.add(np.array([[np.nan, 0.0]], np.float32), np.array([[1.0, 2.0]], np.float32))
    assert stats.count == 1 and math.isnan(stats.mse)


def test_progress_figures_are_computed_only_when_shown(capsys):
    calls = []

    def figures():
        calls.append(1)
        return {"mse": "0.5"}

    progress = Progress(1000, desc="predict", unit="step", enabled=False, postfix=figures)
    for _ in range(1000):
        progress.update(1)
    assert calls == []
    shown = Progress(10, desc="predict", unit="step", enabled=None, log_every=0.0, postfix=figures)
    shown.update(1)
    assert calls == [1] and "mse=0.5" in capsys.readouterr().err
