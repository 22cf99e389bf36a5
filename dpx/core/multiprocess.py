"""The ``multiprocess`` runner: environments in worker processes, over authenticated sockets.

Each worker holds one environment (SOFA-style simulators hold one simulation
per process, and a live simulation is never sent between processes). A batch is
cut into chunks of consecutive sample ids handed to whichever worker is free;
a worker answers with one message per chunk whose arrays land straight in the
rows of the batch buffers. Samples are seeded by id, so the batch is the same
whichever worker made which chunk.

Workers are started by the runner (``spawn=True``) or by hand
(``python -m dpx worker --connect HOST:PORT``, ``spawn=False``); the server
binds to 127.0.0.1 unless ``host`` says otherwise, and peers authenticate with
a shared key (HMAC challenge) before any payload is read.

A worker that raises, dies or hangs past ``timeout`` is reported (traceback or
exit code); its chunk is discarded and redone, and it is restarted, up to
``max_restarts`` times in the whole run, before the pipeline stops cleanly.
Starting has its own ``start_timeout``: importing a simulator or a network may
take far longer than a step, and hand-started workers may take minutes to join.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge, wait
from typing import Any

import numpy as np

from dpx.core import transport
from dpx.core.config import ConfigError
from dpx.core.environment import Field
from dpx.core.runners import RemoteRunner, WorkerError, make_visualizer, parse_options
from dpx.core.worker import run as run_worker

log = logging.getLogger("dpx.multiprocess")


@dataclass
class MultiprocessOptions:
    """``EnvironmentConfig(runner_kwargs=...)`` of the multiprocess runner."""

    spawn: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    authkey: str | None = None
    max_restarts: int = 3
    timeout: float = 120.0
    start_timeout: float = 120.0
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if (self.max_restarts < 0 or self.timeout <= 0 or self.start_timeout <= 0
                or (self.chunk_size is not None and self.chunk_size < 1)):
            raise ValueError("max_restarts must be >= 0, timeout and start_timeout > 0 and chunk_size >= 1")


class _Worker:
    """The runner's side of one worker."""

    def __init__(self, instance_id: int) -> None:
        self.instance_id = instance_id
        self.conn: Connection | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.chunk: tuple[int, int] | None = None  # rows of the batch being produced
        self.since = 0.0
        self.stats: dict[str, int] = {}

    def describe(self) -> str:
        pid = f" (pid {self.process.pid})" if self.process is not None else ""
        return f"worker {self.instance_id}{pid}"


class MultiprocessRunner(RemoteRunner):
    """Run ``workers`` environments in worker processes."""

    def start(self) -> dict[str, Field]:
        self.options = parse_options(MultiprocessOptions, self.config.runner_kwargs, "multiprocess")
        self.portable = self.config.portable()
        self.authkey = bytes.fromhex(self.options.authkey) if self.options.authkey else transport.new_authkey()
        self._prepare(self.options.max_restarts)
        self.predictor = None
        self.visualizer = make_visualizer(self.config)
        try:
            self.server = socket.create_server((self.options.host, self.options.port))
        except OSError as exc:
            raise ConfigError(f"runner_kwargs: cannot listen on {self.options.host}:{self.options.port}: {exc}") from exc
        self.address = self.server.getsockname()[:2]
        self.workers = [_Worker(i) for i in range(self.instance_nb)]
        if not self.options.spawn:
            log.warning("dpx: waiting for %d worker(s): DPX_AUTHKEY=%s python -m dpx worker --connect %s:%d",
                        self.instance_nb, self.authkey.hex(), *self.address)
        for worker in self.workers:
            self._launch(worker)
        for worker in self.workers:
            self._connect(worker)
        return self._fields

    # -- workers ---------------------------------------------------------------------

    def _launch(self, worker: _Worker) -> None:
        if not self.options.spawn:
            return
        context = multiprocessing.get_context("spawn")
        host = "127.0.0.1" if self.options.host in ("", "0.0.0.0") else self.options.host
        worker.process = context.Process(
            target=run_worker, args=(host, self.address[1], self.authkey), name=f"dpx-worker-{worker.instance_id}",
            daemon=True,
        )
        worker.process.start()

    def _connect(self, worker: _Worker) -> None:
        """Accept the worker's connection (refusing wrong keys), send it its environment, wait until ready."""
        deadline = time.monotonic() + self.options.start_timeout
        while worker.conn is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = ""
                if worker.process is not None:
                    code = worker.process.exitcode
                    state = f" (its process {'exited with code ' + str(code) if code is not None else 'is still running'})"
                raise WorkerError(f"{worker.describe()} did not connect within start_timeout={self.options.start_timeout:g}s{state}")
            self.server.settimeout(remaining)
            try:
                sock, peer = self.server.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock.detach())
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
            except (AuthenticationError, OSError, EOFError) as exc:
                log.warning("dpx: refused a connection from %s:%d: %s", peer[0], peer[1], exc or "authentication failed")
                conn.close()
                continue
            worker.conn = conn
        transport.send(worker.conn, {
            "type": "init",
            "config": self.portable,
            "key": [int(k) for k in self.key],
            "instance_id": worker.instance_id,
            "instance_nb": self.instance_nb,
            "optional_fields": sorted(self.optional_fields),
            "visual": self.visualizer is not None,
            "record_wrong_samples": self.on_wrong_sample is not None,
        })
        try:
            if not worker.conn.poll(max(deadline - time.monotonic(), 0)):
                raise _Failure(worker, f"hung: not ready within start_timeout={self.options.start_timeout:g}s")
            ready = self._receive(worker)
            if ready["type"] != "ready":
                raise _Failure(worker, f"answered {ready['type']!r} to init")
        except _Failure as failure:
            self._restart(failure)
            return
        for name, (dtype, shape) in ready["fields"].items():
            self._fields.setdefault(name, Field(name, dtype, shape))
        if self.visualizer is not None:
            self.visualizer.add_scene(worker.instance_id, {int(k): v for k, v in ready["scene"].items()})

    def _receive(self, worker: _Worker, destination: transport.Destination | None = None) -> dict[str, Any]:
        """The worker's next message; errors and lost connections raise ``_Failure``."""
        try:
            message = transport.receive(worker.conn, destination)
        except OSError as exc:
            if "bad message length" in str(exc):  # multiprocessing's refusal of an oversized message
                raise _Failure(worker, f"sent a message over the {transport.MAX_HEADER_BYTES}-byte header limit") from None
            raise _Failure(worker, self._exit_status(worker, exc)) from None
        except EOFError as exc:
            raise _Failure(worker, self._exit_status(worker, exc)) from None
        except transport.ProtocolError as exc:
            raise _Failure(worker, f"sent a malformed message: {exc}") from None
        if message["type"] == "error":
            raise _Failure(worker, f"raised {message['error']}\n\nWorker traceback:\n{message['traceback']}")
        return message

    def _exit_status(self, worker: _Worker, exc: BaseException) -> str:
        process = worker.process
        if process is not None:
            process.join(timeout=2)
            if process.exitcode is not None:
                return f"died with exit code {process.exitcode}" + (" (killed by a signal)" if process.exitcode < 0 else "")
        return f"lost its connection ({type(exc).__name__})"

    def _restart(self, failure: _Failure) -> None:
        worker = failure.worker
        self._stop(worker)
        self._count_failure(worker.describe(), failure.reason)
        self._launch(worker)
        self._connect(worker)

    def _stop(self, worker: _Worker) -> None:
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        if worker.process is not None:
            if worker.process.is_alive():
                worker.process.kill()
            if worker.process.pid is not None:  # started: a failed start leaves nothing to join
                worker.process.join(timeout=5)
            worker.process = None
        worker.chunk = None

    # -- producing -------------------------------------------------------------------

    def _run_chunks(self, pending: deque, sample_ids: np.ndarray, stream: int, batch: dict, count: int,
                    pinned: bool) -> None:
        idle = deque(self.workers)
        busy: dict[Connection, _Worker] = {}
        while pending or busy:
            for worker in list(idle):
                if not pending:
                    break
                chunk = pending[0]
                if pinned and chunk[0] != worker.instance_id:
                    continue
                pending.popleft()
                idle.remove(worker)
                worker.chunk, worker.since = chunk, time.monotonic()
                try:
                    transport.send(worker.conn, {"type": "produce", "ids": sample_ids[chunk[0]:chunk[1]].tolist(),
                                                 "stream": stream})
                except OSError as exc:
                    self._recover(_Failure(worker, self._exit_status(worker, exc)), pending, idle)
                    continue
                busy[worker.conn] = worker
            if not busy:
                continue
            timeout = min(w.since for w in busy.values()) + self.options.timeout - time.monotonic()
            ready = wait(list(busy), timeout=max(timeout, 0))
            if not ready:
                hung = min(busy.values(), key=lambda w: w.since)
                del busy[hung.conn]
                self._recover(_Failure(hung, f"hung: no answer within timeout={self.options.timeout:g}s"), pending, idle)
                continue
            for conn in ready:
                worker = busy[conn]
                try:
                    done = self._handle(worker, batch, count)
                except _Failure as failure:
                    del busy[conn]
                    self._recover(failure, pending, idle)
                    continue
                if done:
                    del busy[conn]
                    worker.chunk = None
                    idle.append(worker)

    def _recover(self, failure: _Failure, pending: deque, idle: deque) -> None:
        chunk = failure.worker.chunk
        self._restart(failure)
        if chunk is not None:
            pending.appendleft(chunk)
        idle.append(failure.worker)

    def _handle(self, worker: _Worker, batch: dict[str, np.ndarray], count: int) -> bool:
        """Handle one message from a busy worker; True once its chunk has arrived."""
        first, last = worker.chunk

        def rows(kind: str, path: tuple, placeholder: dict[str, Any]) -> np.ndarray | None:
            if kind != "samples" or len(path) != 2 or path[0] != "arrays":
                return None
            name = path[1]
            if name not in batch:
                batch[name] = np.empty((count, *placeholder["shape"][1:]), placeholder["dtype"])
                self._learn(name, batch[name])
            return batch[name][first:last]

        message = self._receive(worker, rows)
        kind = message["type"]
        if kind == "samples":
            worker.stats = message["stats"]
            for sample in message.get("refused", []):
                self.on_wrong_sample(sample["id"], sample["arrays"])
            return True
        if kind == "predict":
            self._answer_prediction(worker, message["inputs"])
        elif kind == "visual" and self.visualizer is not None:
            self.visualizer.update(worker.instance_id, {int(k): v for k, v in message["updates"].items()})
        elif kind != "visual":
            raise _Failure(worker, f"sent an unexpected {kind!r} message")
        return False

    def _learn(self, name: str, array: np.ndarray) -> None:
        field = self._fields.setdefault(name, Field(name))
        field.learn(array[0])

    def _answer_prediction(self, worker: _Worker, inputs: dict[str, np.ndarray]) -> None:
        if self.predictor is None:
            transport.send(worker.conn, {"type": "no_prediction", "error": (
                "get_prediction() needs a network: it is available in the Training and Prediction pipelines")})
            return
        transport.send(worker.conn, {"type": "prediction", "prediction": self.predictor(inputs)})

    def apply(self, predictions: np.ndarray) -> None:
        for worker, row in zip(self.workers, predictions):
            transport.send(worker.conn, {"type": "apply", "prediction": row})
        for worker in self.workers[: len(predictions)]:
            while True:
                try:
                    message = self._receive(worker)
                except _Failure as failure:
                    raise WorkerError(f"{worker.describe()} {failure.reason}") from None
                if message["type"] == "applied":
                    break
                if message["type"] == "predict":
                    self._answer_prediction(worker, message["inputs"])

    def connect(self, predictor: Any) -> None:
        self.predictor = predictor

    def _instance_stats(self) -> Iterator[dict[str, int]]:
        return (worker.stats for worker in self.workers)

    def close(self) -> None:
        for worker in getattr(self, "workers", []):
            if worker.conn is not None:
                try:
                    transport.send(worker.conn, {"type": "close"})
                    if worker.conn.poll(5):
                        transport.receive(worker.conn)
                except (OSError, EOFError, transport.ProtocolError):
                    pass
            self._stop(worker)
        if getattr(self, "server", None) is not None:
            self.server.close()
        if getattr(self, "visualizer", None) is not None:
            self.visualizer.close()


class _Failure(Exception):
    def __init__(self, worker: _Worker, reason: str) -> None:
        super().__init__(reason)
        self.worker, self.reason = worker, reason
