"""Training curves: the pipeline reports values, stats writers store them.

:class:`Stats` receives every value the training reports (batch loss, epoch
loss, validation loss, learning rate, extra values from the loss transform),
adds the mean and variance of the batch loss over a sliding window, and hands
them to each configured writer. The core's ``csv`` writer needs no dependency;
``tensorboard`` comes with the dpx-tensorboard plugin.

A writer is a class built as ``cls(stats_dir)`` with ``scalar(tag, value,
step)``, ``histogram(tag, values, step)`` (may ignore it) and ``close()``;
an optional ``scalars({tag: value}, step)`` takes a step's values at once,
which saves a call per value on the training's hot path.
A writer that keeps earlier runs' values also has ``drop_after(step,
epoch)``: a resumed training calls it before writing, so the values written
after the checkpoint it resumes from (batch values past ``step``, epoch
values past ``epoch``) do not appear twice.
"""

from __future__ import annotations

import csv
import math
import os
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 50
#: Tags whose step is an epoch number; every other tag counts optimisation steps.
EPOCH_TAGS = frozenset({"loss/epoch", "loss/validation"})


#: Rows a CSV writer holds before writing them (it writes at every epoch's end too).
CSV_BUFFER_ROWS = 4096


class CsvStatsWriter:
    """``stats/curves.csv``: one ``tag,step,value`` row per reported value.

    Rows are kept in memory and written at the end of every epoch (``flush``)
    or every :data:`CSV_BUFFER_ROWS` rows: formatting and writing a row per
    value cost more than a small batch's optimisation step. A killed run loses
    at most the rows since the last write, which a resumed run drops anyway
    (they come after the checkpoint it resumes from).
    """

    def __init__(self, stats_dir: Path) -> None:
        stats_dir.mkdir(parents=True, exist_ok=True)
        self.path = stats_dir / "curves.csv"
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        self._rows: list[tuple[str, int, float]] = []
        if new:
            self._writer.writerow(["tag", "step", "value"])

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._rows.append((tag, step, value))
        if len(self._rows) >= CSV_BUFFER_ROWS:
            self._write_rows()

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        rows = self._rows
        for tag, value in values.items():
            rows.append((tag, step, value))
        if len(rows) >= CSV_BUFFER_ROWS:
            self._write_rows()

    def _write_rows(self) -> None:
        self._writer.writerows((tag, step, repr(float(value))) for tag, step, value in self._rows)
        self._rows.clear()

    def drop_after(self, step: int, epoch: int) -> None:
        """Keep the rows up to ``step`` (``epoch`` for epoch values); a row a killed run cut short goes too."""
        self._write_rows()
        self._file.close()
        with open(self.path, newline="") as file:
            rows = list(csv.reader(file))
        kept = [row for row in rows[1:] if _keep(row, step, epoch)]
        if len(kept) < len(rows) - 1:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as file:
                csv.writer(file).writerows([["tag", "step", "value"], *kept])
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """A CSV holds no histograms; see the tensorboard writer."""

    def flush(self) -> None:
        self._write_rows()
        self._file.flush()

    def close(self) -> None:
        self._write_rows()
        self._file.close()


def _keep(row: list[str], step: int, epoch: int) -> bool:
    try:
        tag, at, value = row
        float(value)
        return int(at) <= (epoch if tag in EPOCH_TAGS else step)
    except ValueError:
        return False


def _one_by_one(writer: Any):
    """A bulk ``scalars`` for a writer that has only ``scalar``."""

    def scalars(values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            writer.scalar(tag, value, step)

    return scalars


def read_csv_curves(stats_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The curves of ``stats/curves.csv`` by tag, as ``(step, value)`` pairs."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(Path(stats_dir) / "curves.csv", newline="") as file:
        for row in csv.DictReader(file):
            curves.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return curves


class Stats:
    """Fan training values out to the writers named in ``writers``."""

    def __init__(self, stats_dir: Path, writers: Iterable[str] = ("csv",), histograms: bool = False) -> None:
        from dpx.plugins import get_plugins

        plugins = get_plugins()
        self.writers = [plugins.load("stats_writers", name)(Path(stats_dir)) for name in writers]
        # a writer's bulk ``scalars``, else one ``scalar`` call per value
        self._writes = [getattr(writer, "scalars", None) or _one_by_one(writer) for writer in self.writers]
        self.histograms = histograms
        self._window: deque[float] = deque()
        self._sum = self._squares = 0.0

    def state(self) -> dict[str, Any]:
        """The sliding window, for a checkpoint: a resumed run then reports the same window values."""
        return {"window": list(self._window), "sum": self._sum, "squares": self._squares}

    def resume(self, step: int, epoch: int, state: Mapping[str, Any] | None = None) -> None:
        """Forget the values written after optimisation step ``step`` and epoch ``epoch``
        (0 and -1 when a run starts over) and restore the window of :meth:`state`."""
        if state:
            self._window = deque(float(v) for v in state["window"])
            self._sum, self._squares = float(state["sum"]), float(state["squares"])
        for writer in self.writers:
            drop_after = getattr(writer, "drop_after", None)
            if drop_after is not None:
                drop_after(step, epoch)

    def batch(self, step: int, loss: float, extra: Mapping[str, float] | None = None,
              lr: float | None = None) -> dict[str, float]:
        """Log a step's values; returns them (``{tag: value}``) for the lifecycle hooks."""
        if math.isfinite(loss):  # a sliding window kept as running sums: O(1) a step
            self._window.append(loss)
            self._sum += loss
            self._squares += loss * loss
            if len(self._window) > WINDOW:
                old = self._window.popleft()
                self._sum -= old
                self._squares -= old * old
        values = {"loss/batch": loss}
        n = len(self._window)
        if n:
            mean = self._sum / n
            values[f"loss/batch_mean{WINDOW}"] = mean
            values[f"loss/batch_var{WINDOW}"] = max(self._squares / n - mean * mean, 0.0)
        if lr is not None:
            values["learning_rate"] = lr
        if extra:
            for name, value in extra.items():
                values[f"extra/{name}"] = value
        self._write(values, step)
        return values

    def epoch(self, epoch: int, loss: float, validation_loss: float | None = None) -> dict[str, float]:
        """Log an epoch's values and flush the writers; returns the values."""
        values = {"loss/epoch": loss}
        if validation_loss is not None:
            values["loss/validation"] = validation_loss
        self._write(values, epoch)
        for writer in self.writers:
            getattr(writer, "flush", lambda: None)()
        return values

    def parameters(self, step: int, histograms: Mapping[str, np.ndarray]) -> None:
        for writer in self.writers:
            for tag, values in histograms.items():
                writer.histogram(tag, values, step)

    def _write(self, values: Mapping[str, Any], step: int) -> None:
        isfinite = math.isfinite
        if not all(value is not None and isfinite(value) for value in values.values()):
            values = {tag: value for tag, value in values.items() if value is not None and isfinite(value)}
        for write in self._writes:
            write(values, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
