"""A worker: one environment in its own process, serving a runner over a socket.

The multiprocess runner starts workers itself; a worker can also be started by
hand on another machine or inside another program (a SOFA GUI, say) and join a
running job::

    DPX_AUTHKEY=<hex key printed by the job> python -m dpx worker --connect HOST:PORT

Conversation (see :mod:`dpx.core.transport`): the runner sends ``init`` (the
environment config and this worker's instance id), the worker answers
``ready`` with its fields; then ``produce`` -> ``samples``, ``apply`` ->
``applied``, until ``close``. While producing, the environment's
``get_prediction`` sends ``predict`` and waits for ``prediction``, and
``update_visualisation`` sends ``visual``. Any exception is reported as
``error`` with its traceback before the worker exits.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from multiprocessing.connection import Client, Connection
from typing import Any

import numpy as np

from dpx.core import transport

log = logging.getLogger("dpx.worker")


def serve(conn: Connection) -> None:
    """Answer one runner's requests until it says ``close`` or goes away."""
    from dpx.core.config import EnvironmentConfig
    from dpx.core.runners import make_producer

    try:
        init = transport.receive(conn)
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
        )
        producer.env._connect(predictor=lambda inputs: _ask_prediction(conn, inputs))
        if init["visual"]:
            producer.env._connect(
                viewer=lambda instance, updates: transport.send(conn, {"type": "visual", "updates": updates})
            )
        producer.start(visual=init["visual"])
        fields = {n: [str(f.dtype) if f.dtype else None, list(f.shape) if f.shape is not None else None]
                  for n, f in producer.fields.items()}
        scene = producer.env.factory.scene() if init["visual"] else None
        transport.send(conn, {"type": "ready", "fields": fields, "scene": scene, "pid": os.getpid()})
        _loop(conn, producer, refused if init["record_wrong_samples"] else None)
    except (EOFError, ConnectionError):
        return  # the runner went away: nothing to report to
    except BaseException as exc:
        _report(conn, exc)
        raise SystemExit(1) from None


def _loop(conn: Connection, producer: Any, refused: list[dict[str, Any]] | None) -> None:
    while True:
        request = transport.receive(conn)
        kind = request["type"]
        if kind == "produce":
            ids = np.asarray(request["ids"], dtype=np.int64)
            arrays = producer.produce(ids, request["stream"])
            message = {"type": "samples", "arrays": arrays, "stats": vars(producer.stats)}
            if refused:  # samples check_sample refused, for record_wrong_samples
                message["refused"] = refused[:]
                refused.clear()
            transport.send(conn, message)
        elif kind == "apply":
            producer.apply_prediction(request["prediction"])
            transport.send(conn, {"type": "applied"})
        elif kind == "close":
            producer.close()
            transport.send(conn, {"type": "closed"})
            return
        else:
            raise transport.ProtocolError(f"unknown request {kind!r}")


def _ask_prediction(conn: Connection, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    transport.send(conn, {"type": "predict", "inputs": {k: np.asarray(v) for k, v in inputs.items()}})
    answer = transport.receive(conn)
    if answer["type"] != "prediction":
        raise RuntimeError(answer.get("error", f"expected a prediction, got {answer['type']!r}"))
    return answer["prediction"]


def _report(conn: Connection, exc: BaseException) -> None:
    try:
        transport.send(conn, {
            "type": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc)),
        })
    except (OSError, EOFError, TypeError):
        log.error("dpx worker: could not report %r to the runner", exc)


def run(host: str, port: int, authkey: bytes) -> None:
    """Connect to a runner, authenticate, and serve it (the process entry point)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the job, which closes its workers
    try:
        conn = Client((host, port), family="AF_INET", authkey=authkey)
    except OSError as exc:
        raise SystemExit(f"dpx worker: cannot reach a runner at {host}:{port}: {exc}") from None
    transport.no_delay(conn)
    with conn:
        serve(conn)


def authkey_from_environment() -> bytes:
    key = os.environ.get("DPX_AUTHKEY", "")
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise SystemExit("dpx worker: DPX_AUTHKEY must be the hex key the job printed") from None
