"""The ``multiprocess`` runner: environments in worker processes, over authenticated sockets.

Each worker holds one environment (SOFA-style simulators hold one simulation
per process, and a live simulation is never sent between processes). A batch is
cut into chunks of consecutive sample ids handed to whichever worker is free;
a worker answers with one message per chunk whose arrays land straight in the
rows of the batch buffers. Samples are seeded by id, so the batch is the same
whichever worker made which chunk.

Workers are started by the runner (``spawn=True``) or by hand
(``python -m dpx worker --connect HOST:PORT``, ``spawn=False``); the server
binds to 127.0.0.1 unless ``host`` says otherwise. Peers authenticate with a
shared key (HMAC challenge) before any payload is read, each handshake under its
own deadline so a silent peer holds up nobody; a spawned worker then names the
slot it was started for with a one-time token, so a restart replaces exactly
the process that failed.

Every message a worker sends is checked against what the runner expects before
a byte of it is allocated or read (see :mod:`dpx.core.transport`): the fields
the workers declared, the chunk's rows, ``max_message_bytes``. A worker that
raises, dies, hangs past ``timeout`` (the whole answer to a request, messages
included) or sends anything else is reported (traceback, exit code or the rule
it broke); its chunk is discarded and redone, and it is restarted, up to
``max_restarts`` times in the whole run, before the pipeline stops cleanly. An
error of the environment's contract (a field of the wrong shape...) stops the
run at once, as in-process. Starting has its own ``start_timeout``: importing a
simulator or a network may take far longer than a step, and hand-started workers
may take minutes to join; a spawned worker that exits while starting is noticed
at once.
"""

from __future__ import annotations

import hmac
import logging
import multiprocessing
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from dpx.core import parameters, transport
from dpx.core.config import ConfigError
from dpx.core.environment import Field
from dpx.core.runners import RemoteRunner, WorkerError, make_visualizer, parse_options, raise_contract_error
from dpx.core.worker import MAIN_GUARD_EXIT, exit_if_bootstrapping, run_spawned

log = logging.getLogger("dpx.multiprocess")

#: Seconds a connected peer has to prove it holds the key and say hello.
HANDSHAKE_SECONDS = 10.0
#: Seconds ``close`` gives each worker to close its environment.
CLOSE_SECONDS = 5.0


@dataclass
class MultiprocessOptions:
    """``EnvironmentConfig(runner_kwargs=...)`` of the multiprocess runner.

    ``authkey``: the key (hex, at least 16 bytes) hand-started workers must
    hold; a fresh one by default. It is never written to the session.
    ``max_message_bytes``: the most a worker may send in one message (a chunk's
    samples), so a broken worker cannot make the job allocate without limit.
    """

    spawn: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    authkey: str | None = field(default=None, repr=False)
    max_restarts: int = 3
    timeout: float = 120.0
    start_timeout: float = 120.0
    chunk_size: int | None = None
    max_message_bytes: int = transport.MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def positive(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")

        checks = {
            "spawn": (isinstance(self.spawn, bool), "true or false"),
            "host": (isinstance(self.host, str), "a host name or address"),
            "port": (integer(self.port) and 0 <= self.port <= 65535, "an integer from 0 (any free port) to 65535"),
            "max_restarts": (integer(self.max_restarts) and self.max_restarts >= 0, "an integer >= 0"),
            "timeout": (positive(self.timeout), "a number of seconds > 0"),
            "start_timeout": (positive(self.start_timeout), "a number of seconds > 0"),
            "chunk_size": (self.chunk_size is None or (integer(self.chunk_size) and self.chunk_size >= 1),
                           "an integer >= 1"),
            "max_message_bytes": (integer(self.max_message_bytes) and self.max_message_bytes > 0, "an integer > 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {expected}")
        if self.authkey is not None:
            transport.parse_authkey(self.authkey, "authkey")


class _Worker:
    """The runner's side of one worker."""

    def __init__(self, instance_id: int) -> None:
        self.instance_id = instance_id
        self.channel: transport.Channel | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.token: str | None = None  # what the process started for this slot says in its hello
        self.pid: int | None = None
        self.deadline = 0.0  # to be ready by, while starting
        self.chunk: tuple[int, int] | None = None  # rows of the batch being produced
        self.since = 0.0
        self.stats: dict[str, int] = {}

    def describe(self) -> str:
        pid = self.process.pid if self.process is not None else self.pid
        return f"worker {self.instance_id}" + (f" (pid {pid})" if pid is not None else "")


class _Failure(Exception):
    def __init__(self, worker: _Worker, reason: str) -> None:
        super().__init__(reason)
        self.worker, self.reason = worker, reason


class MultiprocessRunner(RemoteRunner):
    """Run ``workers`` environments in worker processes."""

    #: A round trip to a worker costs ~0.1-0.3 ms on a busy machine: 5 ms of work per request hides it.
    read_ahead_seconds = 0.005

    @classmethod
    def check_options(cls, config: Any) -> None:
        """Refuse bad options; in a worker re-running an unguarded script, exit before the job writes anything."""
        if parse_options(MultiprocessOptions, config.runner_kwargs, "multiprocess").spawn:
            exit_if_bootstrapping()

    def start(self) -> dict[str, Field]:
        self.options = parse_options(MultiprocessOptions, self.config.runner_kwargs, "multiprocess")
        if self.options.spawn:
            exit_if_bootstrapping()
        self.portable = {**self.config.portable(), "runner_kwargs": {}}  # the workers need none of it (the key)
        given = self.options.authkey is not None
        self.authkey = transport.parse_authkey(self.options.authkey, "authkey") if given else transport.new_authkey()
        self._prepare(self.options.max_restarts)
        self.saved_parameters = {}
        self.predictor = None
        self.visualizer = make_visualizer(self.config)
        try:
            self.listener = transport.Listener(self.options.host, self.options.port, self.authkey,
                                               min(HANDSHAKE_SECONDS, self.options.start_timeout))
        except OSError as exc:
            raise ConfigError(f"runner_kwargs: cannot listen on {self.options.host}:{self.options.port}: {exc}") from exc
        self.address = self.listener.address
        self.workers = [_Worker(i) for i in range(self.instance_nb)]
        if not self.options.spawn:
            key = "<runner_kwargs.authkey>" if given else self.authkey.hex()
            log.warning("dpx: waiting for %d worker(s): DPX_AUTHKEY=%s python -m dpx worker --connect %s:%d",
                        self.instance_nb, key, *self.address)
        self._bring_up(self.workers)
        return self._fields

    # -- workers ---------------------------------------------------------------------

    def _launch(self, worker: _Worker) -> None:
        """Start the worker's process (when spawning), with a fresh token; it has ``start_timeout`` to be ready."""
        worker.deadline = time.monotonic() + self.options.start_timeout
        if not self.options.spawn:
            return
        worker.token = secrets.token_hex(16)
        host = "127.0.0.1" if self.options.host in ("", "0.0.0.0") else self.options.host
        context = multiprocessing.get_context("spawn")
        worker.process = context.Process(
            target=run_spawned, args=(host, self.address[1], self.authkey, worker.token, self.options.start_timeout),
            name=f"dpx-worker-{worker.instance_id}", daemon=True,
        )
        worker.process.start()

    def _bring_up(self, workers: list[_Worker]) -> None:
        """Launch ``workers`` and wait until they have connected and said ``ready``, all at once.

        Peers are admitted from before the first launch, so no worker, however
        quick, is turned away. A worker that fails meanwhile is restarted within
        ``max_restarts``; one whose process exits before connecting is noticed at once.
        """
        self.listener.admit(True)
        try:
            for worker in workers:
                self._launch(worker)
            self._wait_ready({worker.instance_id: worker for worker in workers})
        finally:
            self.listener.admit(False)

    def _wait_ready(self, waiting: dict[int, _Worker]) -> None:
        while waiting:
            late = min(waiting.values(), key=lambda w: w.deadline)
            if late.deadline <= time.monotonic():
                if late.channel is None:
                    raise WorkerError(f"{late.describe()} did not connect within "
                                      f"start_timeout={self.options.start_timeout:g}s{self._process_state(late)}")
                self._replace(_Failure(late, f"hung: not ready within start_timeout={self.options.start_timeout:g}s"))
                continue
            channels = {w.channel: w for w in waiting.values() if w.channel is not None}
            sentinels = {w.process.sentinel: w for w in waiting.values() if w.channel is None and w.process is not None}
            ready = _readable([self.listener, *channels, *sentinels], late.deadline - time.monotonic())
            if self.listener in ready:
                self._admit(waiting)
            for ready_one in ready:
                worker = channels.get(ready_one) or sentinels.get(ready_one)
                if worker is None or worker.instance_id not in waiting:
                    continue
                try:
                    if ready_one in channels:
                        self._receive_ready(worker)
                        del waiting[worker.instance_id]
                    elif worker.channel is None:  # its process exited before connecting
                        self._exited_at_start(worker)
                except _Failure as failure:
                    self._replace(failure)

    def _admit(self, waiting: dict[int, _Worker]) -> None:
        """Give each newly authenticated peer the slot its token names (any free one when started by hand)."""
        for channel, hello, peer in self.listener.take():
            token = hello["token"]
            worker = next((w for w in waiting.values() if w.channel is None and (
                not self.options.spawn or (token is not None and hmac.compare_digest(token, w.token or "")))), None)
            if worker is None:
                channel.close()
                self.listener.refuse(peer, "it names no worker being started" if self.options.spawn
                                     else "every worker slot is taken")
                continue
            worker.channel, worker.pid = channel, hello["pid"]
            try:
                channel.send({
                    "type": "init",
                    "config": self.portable,
                    "key": [int(k) for k in self.key],
                    "instance_id": worker.instance_id,
                    "instance_nb": self.instance_nb,
                    "optional_fields": sorted(self.optional_fields),
                    "visual": self.visualizer is not None,
                    "record_wrong_samples": self.on_wrong_sample is not None,
                    "parameters": parameters.pack(parameters.for_instance(self.stored_parameters, worker.instance_id)),
                }, worker.deadline)
            except OSError:
                pass  # it went away: the next receive says how

    def _receive_ready(self, worker: _Worker) -> None:
        ready = self._receive(worker, worker.deadline, max_bytes=self.options.max_message_bytes)
        if ready["type"] != "ready":
            raise _Failure(worker, f"answered {ready['type']!r} to init")
        fields = ready.get("fields")
        scene = ready.get("scene")
        if not isinstance(fields, dict) or not (scene is None or isinstance(scene, dict)):
            raise _Failure(worker, "sent a malformed 'ready' message")
        declared = [_declared_field(worker, name, spec) for name, spec in fields.items()]
        scene = _by_instance(worker, scene) if scene is not None else None
        try:
            self.saved_parameters[worker.instance_id] = parameters.unpack(ready.get("parameters"), worker.describe())
        except ValueError as exc:
            raise _Failure(worker, f"sent {exc}") from None
        for declared_field in declared:
            self._fields.setdefault(declared_field.name, declared_field)
        if self.visualizer is not None:
            self.visualizer.add_scene(worker.instance_id, scene or {})

    def _exited_at_start(self, worker: _Worker) -> None:
        worker.process.join(1)
        code = worker.process.exitcode
        if code == MAIN_GUARD_EXIT:
            raise ConfigError(
                f"{worker.describe()} exited at start: the script that runs this job starts it when imported, and "
                "each worker process imports that script again (Python's spawn start method); put the code that "
                "runs the job under `if __name__ == \"__main__\":`"
            )
        raise _Failure(worker, f"exited with code {code} before connecting (its error, if any, is on stderr above)")

    def _process_state(self, worker: _Worker) -> str:
        if worker.process is None:
            return ""
        code = worker.process.exitcode
        return f" (its process {'exited with code ' + str(code) if code is not None else 'is still running'})"

    def _receive(self, worker: _Worker, deadline: float, plan: transport.Plan | None = None,
                 max_bytes: int = 0) -> dict[str, Any]:
        """The worker's next message, whole by ``deadline``; errors, lost connections and
        malformed messages raise ``_Failure``, contract errors their own class."""
        try:
            message = worker.channel.receive(plan, deadline, max_bytes)
        except TimeoutError:
            raise _Failure(worker, f"hung: no whole answer within timeout={self.options.timeout:g}s") from None
        except transport.ProtocolError as exc:
            raise _Failure(worker, f"sent a malformed message: {exc}") from None
        except MemoryError:
            raise _Failure(worker, "sent a message too large to hold in memory") from None
        except (OSError, EOFError) as exc:
            raise _Failure(worker, self._exit_status(worker, exc)) from None
        if message["type"] == "error":
            error, trace = message.get("error"), message.get("traceback")
            if not isinstance(error, str) or not isinstance(trace, str):
                raise _Failure(worker, "sent a malformed 'error' message")
            raise_contract_error(worker.describe(), message)
            raise _Failure(worker, f"raised {error}\n\nWorker traceback:\n{trace}")
        return message

    def _exit_status(self, worker: _Worker, exc: BaseException) -> str:
        """Why a worker's connection broke: its error report when one is still to be read, else how it ended."""
        reported = self._last_words(worker)
        if reported is not None:
            return reported
        process = worker.process
        if process is not None:
            process.join(timeout=2)
            if process.exitcode is not None:
                return f"died with exit code {process.exitcode}" + (" (killed by a signal)" if process.exitcode < 0 else "")
        return f"lost its connection ({type(exc).__name__})"

    def _last_words(self, worker: _Worker) -> str | None:
        """The error a worker reported before its connection broke, if it is still waiting to be read."""
        channel = worker.channel
        if channel is None:
            return None
        try:
            if not (channel.buffered or wait([channel], 1.0)):
                return None
            message = channel.receive(deadline=time.monotonic() + 1.0, max_bytes=0)
        except (OSError, EOFError, transport.ProtocolError):
            return None
        if message["type"] != "error" or not isinstance(message.get("error"), str):
            return None
        raise_contract_error(worker.describe(), message)
        return f"raised {message['error']}\n\nWorker traceback:\n{message.get('traceback')}"

    def _replace(self, failure: _Failure) -> None:
        """Count a failure against ``max_restarts``, stop the worker and launch another for its slot."""
        self._retire(failure)
        self._launch(failure.worker)

    def _restart(self, failure: _Failure) -> None:
        self._retire(failure)
        self._bring_up([failure.worker])

    def _retire(self, failure: _Failure) -> None:
        """Stop the failed worker and count the failure against ``max_restarts``."""
        who = failure.worker.describe()
        self._stop(failure.worker)
        self._count_failure(who, failure.reason)

    def _stop(self, worker: _Worker) -> None:
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        if worker.process is not None:
            if worker.process.is_alive():
                worker.process.kill()
            if worker.process.pid is not None:  # started: a failed start leaves nothing to join
                worker.process.join(timeout=5)
            worker.process = None
        worker.chunk, worker.pid = None, None

    # -- producing -------------------------------------------------------------------

    def _run_chunks(self, pending: deque, sample_ids: np.ndarray, stream: int, batch: dict, count: int,
                    pinned: bool, stored: dict[str, np.ndarray] | None = None) -> None:
        idle = deque(self.workers)
        busy: dict[transport.Channel, _Worker] = {}
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
                    # ids travel as one raw int64 buffer: a JSON list costs ~1 µs an id to build
                    ids = np.ascontiguousarray(sample_ids[chunk[0]:chunk[1]], dtype=np.int64)
                    request = {"type": "produce", "ids": ids, "stream": stream}
                    if stored is not None:  # load_samples: the chunk's stored rows travel with it
                        request.update(type="feed", stored={n: a[chunk[0]:chunk[1]] for n, a in stored.items()})
                    if self.chunk_parameters is not None:
                        request["parameters"] = self.chunk_parameters[chunk[0]:chunk[1]]
                    worker.channel.send(request, worker.since + self.options.timeout)
                except OSError as exc:
                    self._recover(_Failure(worker, self._exit_status(worker, exc)), pending, idle)
                    continue
                busy[worker.channel] = worker
            if not busy:
                continue
            oldest = min(busy.values(), key=lambda w: w.since)
            ready = _readable(list(busy), oldest.since + self.options.timeout - time.monotonic())
            if not ready:
                del busy[oldest.channel]
                self._recover(_Failure(oldest, f"hung: no answer within timeout={self.options.timeout:g}s"), pending, idle)
                continue
            for channel in ready:
                worker = busy[channel]
                try:
                    done = self._handle(worker, batch, count)
                except _Failure as failure:
                    del busy[channel]
                    self._recover(failure, pending, idle)
                    continue
                if done:
                    del busy[channel]
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

        def plan(kind: str, spec: transport.ArraySpec) -> np.ndarray | None:
            """Rows of the batch for a chunk's fields, checked against the fields and the chunk."""
            if kind != "samples" or spec.path[:1] != ("arrays",):
                return None  # allocated, within max_message_bytes: predictions' inputs, visuals, refused samples
            name = spec.path[1] if len(spec.path) == 2 else None
            declared = self._fields.get(name)
            if declared is None:
                raise transport.ProtocolError(f"array {'/'.join(map(str, spec.path))} is no declared field")
            if spec.shape[:1] != (last - first,):
                raise transport.ProtocolError(f"field {name!r} has {spec.shape[:1]} rows for a chunk of {last - first}")
            if name not in batch:
                if (declared.shape is not None and spec.shape[1:] != declared.shape) or \
                        (declared.dtype is not None and spec.dtype != declared.dtype):
                    raise transport.ProtocolError(f"field {name!r} is {spec.dtype} {spec.shape[1:]}, but was "
                                                  f"declared {declared.dtype} {declared.shape}")
                batch[name] = np.empty((count, *spec.shape[1:]), spec.dtype)
                self._learn(name, batch[name])
            return batch[name][first:last]

        message = self._receive(worker, worker.since + self.options.timeout, plan, self.options.max_message_bytes)
        kind = message["type"]
        if kind == "samples":
            arrays, stats, refused = message.get("arrays"), message.get("stats"), message.get("refused", [])
            if not (isinstance(arrays, dict) and _is_counts(stats) and _are_samples(refused)):
                raise _Failure(worker, "sent a malformed 'samples' message")
            if set(arrays) != set(self._fields) or not all(isinstance(a, np.ndarray) for a in arrays.values()):
                raise _Failure(worker, f"sent fields {sorted(arrays)[:20]}, not the declared {sorted(self._fields)}")
            if refused and self.on_wrong_sample is None:
                raise _Failure(worker, "sent refused samples nobody asked for")
            worker.stats = stats
            for sample in refused:
                self.on_wrong_sample(sample["id"], sample["arrays"])
            return True
        if kind == "predict":
            inputs = message.get("inputs")
            if not isinstance(inputs, dict) or not all(isinstance(a, np.ndarray) for a in inputs.values()):
                raise _Failure(worker, "sent a malformed 'predict' message")
            self._answer_prediction(worker, inputs)
        elif kind == "visual":
            updates = message.get("updates")
            if not isinstance(updates, dict):
                raise _Failure(worker, "sent a malformed 'visual' message")
            if self.visualizer is not None:
                self.visualizer.update(worker.instance_id, _by_instance(worker, updates))
        else:
            raise _Failure(worker, f"sent an unexpected {kind!r} message")
        return False

    def _learn(self, name: str, array: np.ndarray) -> None:
        field = self._fields.setdefault(name, Field(name))
        field.learn(array[0])

    def _answer_prediction(self, worker: _Worker, inputs: dict[str, np.ndarray]) -> None:
        deadline = worker.since + self.options.timeout
        self.predictions_asked = True
        try:
            if self.predictor is None:
                worker.channel.send({"type": "no_prediction", "error": (
                    "get_prediction() needs a network: it is available in the Prediction and Training pipelines")},
                    deadline)
                return
            worker.channel.send({"type": "prediction", "prediction": self.predictor(inputs)}, deadline)
        except OSError as exc:
            raise _Failure(worker, self._exit_status(worker, exc)) from None

    def apply(self, predictions: np.ndarray) -> None:
        deadline = time.monotonic() + self.options.timeout
        calling = self.workers[: len(predictions)]
        try:
            for worker, row in zip(calling, predictions):
                worker.since = time.monotonic()
                try:
                    worker.channel.send({"type": "apply", "prediction": row}, deadline)
                except OSError as exc:
                    raise _Failure(worker, self._exit_status(worker, exc)) from None
            for worker in calling:
                while True:
                    message = self._receive(worker, deadline, max_bytes=self.options.max_message_bytes)
                    if message["type"] == "applied":
                        break
                    inputs = message.get("inputs")
                    if message["type"] != "predict" or not isinstance(inputs, dict):
                        raise _Failure(worker, f"answered {message['type']!r} to apply")
                    self._answer_prediction(worker, inputs)
        except _Failure as failure:
            raise WorkerError(f"{failure.worker.describe()} {failure.reason}") from None

    def connect(self, predictor: Any) -> None:
        self.predictor = predictor

    def _instance_stats(self) -> Iterator[dict[str, int]]:
        return (worker.stats for worker in self.workers)

    def close(self) -> None:
        workers = getattr(self, "workers", [])
        deadline = time.monotonic() + CLOSE_SECONDS
        for worker in workers:
            if worker.channel is not None:
                try:
                    worker.channel.send({"type": "close"}, deadline)
                except OSError:
                    pass
        for worker in workers:
            if worker.channel is not None:
                try:
                    worker.channel.receive(deadline=deadline, max_bytes=0)
                except (OSError, EOFError, transport.ProtocolError):
                    pass
            self._stop(worker)
        if getattr(self, "listener", None) is not None:
            self.listener.close()
        if getattr(self, "visualizer", None) is not None:
            self.visualizer.close()


def _readable(objects: list[Any], timeout: float) -> list[Any]:
    """Those of ``objects`` with something to read: channels holding bytes already read at once, else ``wait``."""
    buffered = [o for o in objects if isinstance(o, transport.Channel) and o.buffered]
    return buffered or wait(objects, timeout=max(timeout, 0))


def _declared_field(worker: _Worker, name: str, spec: Any) -> Field:
    """A field as a worker's ``ready`` declares it: ``[dtype or None, shape or None]``, plain numbers only."""
    try:
        dtype, shape = spec
        if dtype is not None and not (isinstance(dtype, str) and np.dtype(dtype).kind in "biufc"):
            raise ValueError("dtype")
        if shape is not None and not (isinstance(shape, list) and len(shape) <= transport.MAX_DEPTH and all(
                type(n) is int and n >= 0 for n in shape)):
            raise ValueError("shape")
        return Field(name, dtype, shape)
    except Exception:  # noqa: BLE001 - anything a peer declares that NumPy or Field refuses
        raise _Failure(worker, f"declared field {str(name)[:40]!r} as {str(spec)[:80]}, not [dtype, shape]") from None


def _by_instance(worker: _Worker, objects: dict[str, Any]) -> dict[int, Any]:
    """Visual objects by number, as the viewer takes them."""
    try:
        return {int(k): v for k, v in objects.items()}
    except ValueError:
        raise _Failure(worker, "sent visual objects not numbered") from None


def _is_counts(stats: Any) -> bool:
    return isinstance(stats, dict) and all(type(v) is int for v in stats.values())


def _are_samples(refused: Any) -> bool:
    return isinstance(refused, list) and all(
        isinstance(s, dict) and type(s.get("id")) is int and isinstance(s.get("arrays"), dict)
        and all(isinstance(a, np.ndarray) for a in s["arrays"].values()) for s in refused)
