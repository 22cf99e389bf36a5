"""Messages between a runner and its workers: JSON headers and raw NumPy buffers.

Connections are ``multiprocessing.connection`` sockets opened with an
``authkey``: both ends prove they hold the key with an HMAC challenge before
any payload is read, and a peer with the wrong key is refused with nothing
decoded. After that nothing is unpickled either: a message is a JSON header
followed by the raw bytes of each array it carries, received straight into
their destination (a batch buffer) when the receiver has one. So a batch of
samples crosses as one header plus one buffer per field, with no per-sample
or per-field round trip and no pickled copy.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

#: Largest JSON header accepted; a larger one is a protocol error.
MAX_HEADER_BYTES = 1 << 20
#: Largest array accepted in one message.
MAX_ARRAY_BYTES = 1 << 32
AUTHKEY_BYTES = 32


class ProtocolError(RuntimeError):
    """A peer sent something that is not a valid dpx message."""


def new_authkey() -> bytes:
    return secrets.token_bytes(AUTHKEY_BYTES)


def no_delay(conn: Connection) -> None:
    """Turn off Nagle's algorithm: a header and its arrays go out at once, not
    after the 40 ms a delayed acknowledgement would cost each message."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.detach()


def _flatten(obj: Any, arrays: list[np.ndarray]) -> Any:
    """Replace arrays by placeholders, collecting them in order."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be sent")
        arrays.append(np.ascontiguousarray(obj))
        return {"__array__": len(arrays) - 1, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _flatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, arrays) for v in obj]
    return obj


def send(conn: Connection, message: dict[str, Any]) -> None:
    """Send a dict whose values may hold arrays: a JSON header, then each array's bytes."""
    arrays: list[np.ndarray] = []
    header = _flatten(message, arrays)
    try:
        conn.send_bytes(json.dumps(header, allow_nan=True).encode())
    except TypeError as exc:
        raise TypeError(f"cannot send {message.get('type', 'message')!r}: {exc} (only JSON values and arrays travel)") from exc
    for array in arrays:
        conn.send_bytes(memoryview(array).cast("B") if array.size else b"")


Destination = Callable[[str, tuple, dict[str, Any]], "np.ndarray | None"]


def receive(conn: Connection, destination: Destination | None = None) -> dict[str, Any]:
    """Receive a message sent by :func:`send`.

    ``destination(message_type, path, placeholder)`` may return an array (e.g.
    rows of a batch buffer) to receive the bytes of the array at ``path`` (the
    keys and indices leading to it) into, checked against its declared dtype
    and shape; otherwise a new array is allocated.
    """
    raw = conn.recv_bytes(MAX_HEADER_BYTES)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"malformed message header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("malformed message: a header must be an object with a 'type'")
    where = None
    if destination is not None:
        kind = header["type"]
        where = lambda path, placeholder: destination(kind, path, placeholder)  # noqa: E731
    return _restore(conn, header, where, ())


def _restore(conn: Connection, obj: Any, where: Callable | None, path: tuple) -> Any:
    if isinstance(obj, dict):
        if "__array__" in obj:
            return _receive_array(conn, obj, where, path)
        return {k: _restore(conn, v, where, (*path, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(conn, v, where, (*path, i)) for i, v in enumerate(obj)]
    return obj


def _receive_array(conn: Connection, placeholder: dict[str, Any], where: Callable | None, path: tuple) -> np.ndarray:
    try:
        dtype, shape = np.dtype(placeholder["dtype"]), tuple(int(n) for n in placeholder["shape"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"malformed array header {placeholder!r}: {exc}") from None
    if dtype.hasobject or any(n < 0 for n in shape):
        raise ProtocolError(f"refused array header {placeholder!r}")
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError(f"refused array of {nbytes} bytes (limit {MAX_ARRAY_BYTES})")
    target = where(path, placeholder) if where is not None else None
    if target is None:
        target = np.empty(shape, dtype)
    elif target.dtype != dtype or target.shape != shape or not target.flags.c_contiguous:
        raise ProtocolError(f"array {dtype} {shape} does not fit its destination {target.dtype} {target.shape}")
    if nbytes == 0:
        conn.recv_bytes(1)
        return target
    received = conn.recv_bytes_into(memoryview(target).cast("B"))
    if received != nbytes:
        raise ProtocolError(f"array declared {nbytes} bytes but {received} arrived")
    return target
