"""The ``tensorboard`` stats writer: curves and histograms as TensorBoard events.

It writes with tensorboard's own event-file writer and protocol buffers, so
neither torch nor tensorflow is needed to produce files that TensorBoard reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

#: Buckets of a histogram, as torch's ``SummaryWriter.add_histogram`` draws them.
BINS = 30
#: Seconds between background flushes, so a running training shows up within
#: seconds even when an epoch (where the pipeline flushes) lasts long.
FLUSH_SECS = 10


class TensorBoardWriter:
    """Event files in ``<stats_dir>/tensorboard``, one per training run.

    A resumed training adds a new file to the same folder; TensorBoard shows
    the files of a folder as one run.
    """

    def __init__(self, stats_dir: Path) -> None:
        self.logdir = Path(stats_dir) / "tensorboard"
        self._writer = EventFileWriter(str(self.logdir), flush_secs=FLUSH_SECS)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Store ``value`` (as float32, TensorBoard's scalar precision)."""
        self._add(Summary.Value(tag=tag, simple_value=float(value)), step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """Store the distribution of ``values`` in :data:`BINS` equal buckets.

        Non-finite values are left out, as the core leaves out non-finite
        scalars, so that a diverging network does not stop its own training;
        when none is finite nothing is written.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        counts, edges = np.histogram(values, bins=BINS)
        # Bucket i counts values between bucket_limit[i-1] and bucket_limit[i];
        # the first one, below the smallest edge, is empty.
        proto = HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(values @ values),
            bucket_limit=edges.tolist(),
            bucket=[0.0, *counts.astype(np.float64).tolist()],
        )
        self._add(Summary.Value(tag=tag, histo=proto), step)

    def drop_after(self, step: int, epoch: int) -> None:
        """Hide what a killed run wrote after the checkpoint a resumed training starts from.

        Event files are append-only: a session-start event at ``step + 1``
        makes TensorBoard drop the earlier files' events from that step on (its
        ``purge_orphaned_data``, on by default). Epoch values come before the
        checkpoint of their epoch, so none lies past it.
        """
        start = SessionLog(status=SessionLog.START)
        self._writer.add_event(Event(wall_time=time.time(), step=int(step) + 1, session_log=start))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _add(self, value: Summary.Value, step: int) -> None:
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=[value])))
