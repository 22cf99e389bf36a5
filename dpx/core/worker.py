"""A worker: one environment in its own process, serving a runner over a socket.

The multiprocess runner starts workers itself; a worker can also be started by
hand on another machine or inside another program (a SOFA GUI, say) and join a
running job::

    DPX_AUTHKEY=<hex key printed by the job> python -m dpx worker --connect HOST:PORT

Conversation (see :mod:`dpx.core.transport`): after the key challenge the
worker says ``hello`` with the token of the slot it was started for (none when
started by hand); the runner sends ``init`` (the environment config and this
worker's instance id), the worker answers ``ready`` with its fields; then
``produce`` (or ``feed``, with stored samples) -> ``samples``, ``apply`` -> ``applied``, until ``close``. While
producing, the environment's ``get_prediction`` sends ``predict`` and waits for
``prediction``, and ``update_visualisation`` sends ``visual``. Any exception is
reported as ``error`` with its traceback before the worker exits; ``contract``
names the error when it breaks the environment's contract (a field of the wrong
shape...), which a restart would not cure.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import numpy as np

from dpx.core import parameters, transport

log = logging.getLogger("dpx.worker")

#: Exit code of a worker process that found itself re-running the job's script: spawned processes
#: import the ``__main__`` module again, and a job started there without a main guard starts again.
MAIN_GUARD_EXIT = 78
#: Seconds a failing worker waits for the runner to read its report before exiting.
REPORT_SECONDS = 10.0


def serve(channel: transport.Channel) -> None:
    """Answer one runner's requests until it says ``close`` or goes away."""
    from dpx.core.config import EnvironmentConfig
    from dpx.core.runners import describe_failure, make_producer

    try:
        init = channel.receive()
    except EOFError:
        raise ConnectionError("the runner hung up before giving this worker an environment "
                              "(it had no free worker slot, or was stopping)") from None
    try:
        if init["type"] != "init":
            raise transport.ProtocolError(f"expected 'init', got {init['type']!r}")
        config = EnvironmentConfig(**init["config"])
        refused: list[dict[str, Any]] = []
        producer = make_producer(
            config,
            np.array(init["key"], dtype=np.uint64),
            init["instance_id"],
            init["instance_nb"],
            on_wrong_sample=lambda sample_id, arrays: refused.append({"id": sample_id, "arrays": arrays}),
            optional_fields=frozenset(init["optional_fields"]),
            parameters=parameters.unpack(init.get("parameters"), "the runner"),
        )
        producer.env._connect(predictor=lambda inputs: _ask_prediction(channel, inputs))
        if init["visual"]:
            producer.env._connect(
                viewer=lambda instance, updates: channel.send({"type": "visual", "updates": updates})
            )
        producer.start(visual=init["visual"])
        fields = {n: [str(f.dtype) if f.dtype else None, list(f.shape) if f.shape is not None else None]
                  for n, f in producer.fields.items()}
        scene = producer.env.factory.scene() if init["visual"] else None
        saved = parameters.pack(getattr(producer.env, "_saved_parameters", {}))
        channel.send({"type": "ready", "fields": fields, "scene": scene, "pid": os.getpid(), "parameters": saved})
        _loop(channel, producer, refused if init["record_wrong_samples"] else None)
    except (EOFError, ConnectionError):
        return  # the runner went away: nothing to report to
    except BaseException as exc:
        try:
            channel.send({"type": "error", **describe_failure(exc)})
        except (OSError, TypeError, ValueError):
            log.error("dpx worker: could not report %r to the runner", exc)
        else:
            channel.drain(REPORT_SECONDS)
        raise SystemExit(1) from None


def _loop(channel: transport.Channel, producer: Any, refused: list[dict[str, Any]] | None) -> None:
    while True:
        request = channel.receive()
        kind = request["type"]
        if kind in ("produce", "feed"):
            ids = np.asarray(request["ids"], dtype=np.int64)
            if kind == "feed":
                arrays = producer.feed(request["stored"], ids, request["stream"])
            else:
                arrays = producer.produce(ids, request["stream"], request.get("parameters"))
            message = {"type": "samples", "arrays": arrays, "stats": vars(producer.stats)}
            if refused:  # samples check_sample refused, for record_wrong_samples
                message["refused"] = refused[:]
                refused.clear()
            channel.send(message)
        elif kind == "apply":
            producer.apply_prediction(request["prediction"])
            channel.send({"type": "applied"})
        elif kind == "close":
            producer.close()
            channel.send({"type": "closed"})
            return
        else:
            raise transport.ProtocolError(f"unknown request {kind!r}")


def _ask_prediction(channel: transport.Channel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    channel.send({"type": "predict", "inputs": {k: np.asarray(v) for k, v in inputs.items()}})
    answer = channel.receive()
    if answer["type"] != "prediction":
        raise RuntimeError(answer.get("error", f"expected a prediction, got {answer['type']!r}"))
    return answer["prediction"]


def run(host: str, port: int, authkey: bytes, token: str | None = None, timeout: float = 120.0) -> None:
    """Connect to a runner, authenticate, say which slot this process was started for, and serve it.

    ``ConnectionError`` (one line) when the runner cannot be reached or refuses the key.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the job, which closes its workers
    try:
        channel = transport.connect(host, port, authkey, timeout)
        channel.send({"type": "hello", "token": token, "pid": os.getpid()})
    except transport.AuthenticationError as exc:
        raise ConnectionError(f"the runner at {host}:{port} refused the connection ({exc}); "
                              "set DPX_AUTHKEY to the key the job printed") from None
    except (OSError, EOFError, OverflowError) as exc:
        raise ConnectionError(f"cannot reach a runner at {host}:{port}: {exc}") from None
    with channel:
        serve(channel)


def run_spawned(host: str, port: int, authkey: bytes, token: str, timeout: float) -> None:
    """The entry point of a worker process the runner started: :func:`run`, failing in one line."""
    try:
        run(host, port, authkey, token, timeout)
    except ConnectionError as exc:
        raise SystemExit(f"dpx worker: error: {exc}") from None


def exit_if_bootstrapping() -> None:
    """Exit with :data:`MAIN_GUARD_EXIT` when this process is a worker still importing the job's script.

    With the spawn start method a worker imports the script that started the
    job; a script that starts its job at import time, without ``if __name__ ==
    "__main__":``, would start the job again inside every worker.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        print("dpx worker: error: the job's script starts its job when imported; "
              "put that code under `if __name__ == \"__main__\":`", file=sys.stderr)
        raise SystemExit(MAIN_GUARD_EXIT)


def authkey_from_environment() -> bytes:
    """The key in ``DPX_AUTHKEY``; a missing or short key is a ``ValueError`` saying what to set."""
    key = os.environ.get("DPX_AUTHKEY")
    if not key:
        raise ValueError("set DPX_AUTHKEY to the key the job printed (`DPX_AUTHKEY=... python -m dpx worker ...`)")
    return transport.parse_authkey(key, "DPX_AUTHKEY")
