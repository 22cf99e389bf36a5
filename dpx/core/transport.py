"""Messages between a runner and its workers: framed JSON headers and raw NumPy buffers.

A connection starts with a mutual HMAC challenge (:func:`authenticate_server`,
:func:`authenticate_client`): both ends prove they hold the key, in messages of
fixed size, before a single byte of payload is read. Nothing is ever unpickled.

A message is one frame::

    [header length: 4 bytes][JSON header][bytes of each array, in order]

The header says the dtype and shape of every array (placeholders where the
arrays were). The receiver checks the whole header against what it expects
(:data:`Plan`), and against its byte limit, before it allocates or reads a
byte of any array; then the bytes land straight in their destination (rows of
a batch buffer) with ``recv_into``. The whole message, not just its first
byte, must arrive before the caller's deadline. A peer that breaks any rule
gets a :class:`ProtocolError` and nothing else: the caller treats it as that
peer's failure.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Largest JSON header accepted: the configs, ids and reports that travel are far smaller.
MAX_HEADER_BYTES = 1 << 20
#: Default limit of a message's arrays, all together.
MAX_MESSAGE_BYTES = 1 << 30
#: Shortest key accepted: an HMAC key must not be guessable.
MIN_AUTHKEY_BYTES = 16
AUTHKEY_BYTES = 32
#: Deepest nesting of a header (JSON's own parser would recurse until RecursionError).
MAX_DEPTH = 32
#: Largest number of arrays in one message.
MAX_ARRAYS = 4096

_PREFIX = struct.Struct("!I")
_GREETING = b"dpx-transport/1\n"
_NONCE_BYTES = 32
_MAC_BYTES = 32
_DTYPE = re.compile(r"[<>|=]?[biufc][1-9][0-9]?")
_BUFFER_BYTES = 1 << 16

log = logging.getLogger("dpx.transport")


class ProtocolError(RuntimeError):
    """A peer sent something that is not a valid dpx message, or not the one expected."""


class AuthenticationError(ProtocolError):
    """The peer does not hold the key (or is not a dpx peer at all)."""


def new_authkey() -> bytes:
    return secrets.token_bytes(AUTHKEY_BYTES)


def parse_authkey(text: str, where: str) -> bytes:
    """A hex key given by a user, refused (``ValueError`` naming ``where``) unless long enough to be secret."""
    try:
        key = bytes.fromhex(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a key in hex (e.g. from `python -c \"import secrets; "
                         f"print(secrets.token_hex())\"`)") from None
    if len(key) < MIN_AUTHKEY_BYTES:
        raise ValueError(f"{where} is {len(key)} bytes long; a key needs at least {MIN_AUTHKEY_BYTES} random bytes "
                         f"({2 * MIN_AUTHKEY_BYTES} hex digits)")
    return key


@dataclass(frozen=True)
class ArraySpec:
    """An array a message declares: where it sits in the message, its dtype and shape."""

    path: tuple
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


#: ``plan(message_type, spec)`` is called for every declared array before any is read: it returns the
#: buffer to receive it into (checked against ``spec``), None to have one allocated, or raises
#: :class:`ProtocolError` to refuse the message.
Plan = Callable[[str, ArraySpec], "np.ndarray | None"]


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the message did not arrive in time")
    return left


class Channel:
    """One end of an authenticated connection, sending and receiving whole messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # a header and its arrays go out at once, not after a delayed acknowledgement (40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray(_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def buffered(self) -> bool:
        """Whether bytes of a next message were already read (a wait on the socket would not see them)."""
        return self._end > self._start

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------

    def send(self, message: dict[str, Any], deadline: float | None = None) -> None:
        """Send a dict whose values may hold arrays, as one frame."""
        arrays: list[np.ndarray] = []
        header = _flatten(message, arrays)
        try:
            encoded = json.dumps(header, allow_nan=True, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot send {message.get('type', 'message')!r}: {exc} (only JSON values and arrays travel)") from exc
        if len(encoded) > MAX_HEADER_BYTES:
            raise ValueError(f"cannot send {message.get('type', 'message')!r}: its header is over {MAX_HEADER_BYTES} bytes")
        parts = [memoryview(_PREFIX.pack(len(encoded)) + encoded)]
        parts += [memoryview(array).cast("B") for array in arrays if array.size]
        self.sock.settimeout(_remaining(deadline))
        for first in range(0, len(parts), 512):  # sendmsg takes at most IOV_MAX (1024) buffers
            self._send_parts(parts[first:first + 512], deadline)

    def _send_parts(self, parts: list[memoryview], deadline: float | None) -> None:
        sent = self.sock.sendmsg(parts)
        for part in parts:  # a large message may go out in several pieces
            if sent >= part.nbytes:
                sent -= part.nbytes
                continue
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(part[sent:])
            sent = 0

    # -- receiving -------------------------------------------------------------------

    def receive(self, plan: Plan | None = None, deadline: float | None = None,
                max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
        """The next message, whole, by ``deadline`` (``TimeoutError`` otherwise).

        Its arrays go where ``plan`` says (see :data:`Plan`), and may hold
        ``max_bytes`` in all. ``ProtocolError`` for anything malformed,
        ``EOFError`` when the peer closed the connection.
        """
        self._fill(_PREFIX.size, deadline)
        (length,) = _PREFIX.unpack_from(self._buffer, self._start)
        if length > MAX_HEADER_BYTES:
            raise ProtocolError(f"declared a {length}-byte header, over the {MAX_HEADER_BYTES}-byte limit")
        self._fill(_PREFIX.size + length, deadline)
        start = self._start + _PREFIX.size
        raw = bytes(self._view[start:start + length])
        self._start = start + length
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"malformed message header: {_short(exc)}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str) or "__array__" in header:
            raise ProtocolError("malformed message: a header must be an object with a 'type'")
        specs: list[ArraySpec] = []
        message = _restore(header, specs, (), 0)
        total = sum(spec.nbytes for spec in specs)
        if total > max_bytes:
            raise ProtocolError(f"declared {total} bytes of arrays, over the limit of {max_bytes}")
        targets = [self._target(header["type"], spec, plan) for spec in specs]
        for spec, target in zip(specs, targets):
            self._receive_into(memoryview(target).cast("B") if spec.nbytes else memoryview(b""), deadline)
        _place(message, specs, targets)
        return message

    @staticmethod
    def _target(kind: str, spec: ArraySpec, plan: Plan | None) -> np.ndarray:
        target = plan(kind, spec) if plan is not None else None
        if target is None:
            return np.empty(spec.shape, spec.dtype)
        if target.dtype != spec.dtype or target.shape != spec.shape or not target.flags.c_contiguous \
                or not target.flags.writeable:
            raise ProtocolError(f"array {'/'.join(map(str, spec.path))} is {spec.dtype} {spec.shape}, "
                                f"which does not fit its destination {target.dtype} {target.shape}")
        return target

    def _fill(self, count: int, deadline: float | None) -> None:
        """Have at least ``count`` bytes (at most a header and its prefix) in the buffer.

        The buffer grows only once it is full of bytes received, never to a size merely declared.
        """
        while self._end - self._start < count:
            if self._end == len(self._buffer):
                pending = self._end - self._start
                if self._start > 0:
                    self._view[:pending] = self._view[self._start:self._end]
                else:
                    grown = bytearray(min(2 * len(self._buffer), _PREFIX.size + MAX_HEADER_BYTES))
                    grown[:pending] = self._view[:pending]
                    self._buffer, self._view = grown, memoryview(grown)
                self._start, self._end = 0, pending
            self._end += self._recv(self._view[self._end:], deadline)

    def _receive_into(self, target: memoryview, deadline: float | None) -> None:
        size = target.nbytes
        got = min(size, self._end - self._start)
        if got:  # the array's first bytes came in with the header
            target[:got] = self._view[self._start:self._start + got]
            self._start += got
        if self._start == self._end:
            self._start = self._end = 0
        while got < size:
            got += self._recv(target[got:], deadline)

    def _recv(self, into: memoryview, deadline: float | None) -> int:
        self.sock.settimeout(_remaining(deadline))
        count = self.sock.recv_into(into)
        if count == 0:
            raise EOFError("the peer closed the connection")
        return count

    def drain(self, seconds: float) -> None:
        """Stop sending, then read until the peer closes (or ``seconds`` pass), so that closing
        sends no reset that would destroy what this end sent last (an error report)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            while True:
                self._start = self._end = 0
                self._recv(self._view, deadline)
        except (OSError, EOFError):
            pass


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _flatten(obj: Any, arrays: list[np.ndarray]) -> Any:
    """Replace arrays by placeholders, collecting them in order."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"{obj.dtype} arrays cannot be sent, only numeric and boolean ones")
        arrays.append(np.ascontiguousarray(obj))
        return {"__array__": len(arrays) - 1, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _flatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, arrays) for v in obj]
    return obj


def _restore(obj: Any, specs: list[ArraySpec], path: tuple, depth: int) -> Any:
    """The header with each placeholder checked and replaced by its index in ``specs``."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"malformed message: nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        if "__array__" in obj:
            specs.append(_spec(obj, path, len(specs)))
            return _Placeholder(len(specs) - 1)
        return {k: _restore(v, specs, (*path, k), depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, specs, (*path, i), depth + 1) for i, v in enumerate(obj)]
    return obj


class _Placeholder(int):
    """Where an array goes, until its bytes have arrived."""


def _spec(placeholder: dict[str, Any], path: tuple, index: int) -> ArraySpec:
    where = "/".join(map(str, path)) or "message"
    dtype, shape = placeholder.get("dtype"), placeholder.get("shape")
    if set(placeholder) != {"__array__", "dtype", "shape"} or placeholder["__array__"] != index \
            or type(placeholder["__array__"]) is not int:
        raise ProtocolError(f"malformed array placeholder at {where}")
    if index >= MAX_ARRAYS:
        raise ProtocolError(f"more than {MAX_ARRAYS} arrays in one message")
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise ProtocolError(f"array {where}: dtype {str(dtype)[:40]!r} refused (only numeric and boolean ones)")
    if not isinstance(shape, list) or len(shape) > MAX_DEPTH \
            or not all(type(n) is int and 0 <= n < 1 << 48 for n in shape):
        raise ProtocolError(f"array {where}: malformed shape {str(shape)[:80]}")
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        raise ProtocolError(f"array {where}: dtype {dtype!r} refused") from None
    nbytes = parsed.itemsize
    for n in shape:
        nbytes *= n
    return ArraySpec(path, parsed, tuple(shape), nbytes)


def _place(obj: Any, specs: list[ArraySpec], arrays: list[np.ndarray]) -> Any:
    """Put the received arrays where their placeholders are (in place, in dicts and lists)."""
    if not specs:
        return obj
    for spec, array in zip(specs, arrays):
        parent = obj
        for step in spec.path[:-1]:
            parent = parent[step]
        if spec.path:
            parent[spec.path[-1]] = array
    return obj


# -- authentication ------------------------------------------------------------------


def _mac(key: bytes, label: bytes, *nonces: bytes) -> bytes:
    return hmac.new(key, label + b"".join(nonces), "sha256").digest()


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        sock.settimeout(_remaining(deadline))
        count = sock.recv_into(view[got:])
        if count == 0:
            raise EOFError("the peer closed the connection")
        got += count
    return bytes(data)


def authenticate_server(sock: socket.socket, key: bytes, deadline: float) -> None:
    """The runner's half of the challenge: the peer proves it holds ``key``, then the runner does."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sock.settimeout(_remaining(deadline))
    sock.sendall(_GREETING + nonce)
    answer = _recv_exact(sock, _NONCE_BYTES + _MAC_BYTES, deadline)
    peer_nonce, mac = answer[:_NONCE_BYTES], answer[_NONCE_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, b"worker", nonce, peer_nonce)):
        raise AuthenticationError("wrong key")
    sock.settimeout(_remaining(deadline))
    sock.sendall(_mac(key, b"runner", peer_nonce, nonce))


def authenticate_client(sock: socket.socket, key: bytes, deadline: float) -> None:
    """The worker's half of the challenge; ``AuthenticationError`` if either side lacks the key."""
    greeting = _recv_exact(sock, len(_GREETING) + _NONCE_BYTES, deadline)
    if not greeting.startswith(_GREETING):
        raise AuthenticationError("the peer is not a dpx runner")
    nonce, peer_nonce = secrets.token_bytes(_NONCE_BYTES), greeting[len(_GREETING):]
    sock.settimeout(_remaining(deadline))
    sock.sendall(nonce + _mac(key, b"worker", peer_nonce, nonce))
    try:
        proof = _recv_exact(sock, _MAC_BYTES, deadline)
    except (EOFError, ConnectionError):
        raise AuthenticationError("the runner refused the key") from None
    if not hmac.compare_digest(proof, _mac(key, b"runner", nonce, peer_nonce)):
        raise AuthenticationError("the runner does not hold the key")


def connect(host: str, port: int, key: bytes, timeout: float) -> Channel:
    """Connect to a runner and authenticate, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        authenticate_client(sock, key, deadline)
    except BaseException:
        sock.close()
        raise
    return Channel(sock)


# -- accepting -----------------------------------------------------------------------


class Listener:
    """A server socket whose peers are accepted and authenticated in the background.

    Each handshake (the challenge, then the peer's ``hello`` message) runs in
    its own thread under ``handshake_timeout``, so a peer that connects and
    stalls delays nobody; at most ``MAX_HANDSHAKES`` run at once, later peers
    waiting in the listen backlog meanwhile. Authenticated
    peers queue up for :meth:`take`; :meth:`fileno` becomes readable when one
    arrives, for ``multiprocessing.connection.wait``. Refused connections are
    logged at most once per ``REFUSAL_LOG_SECONDS``, with a count of the others.
    """

    MAX_HANDSHAKES = 16
    REFUSAL_LOG_SECONDS = 10.0

    def __init__(self, host: str, port: int, key: bytes, handshake_timeout: float) -> None:
        self.server = socket.create_server((host, port))
        self.address: tuple[str, int] = self.server.getsockname()[:2]
        self.key, self.handshake_timeout = key, handshake_timeout
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._handshakes = threading.BoundedSemaphore(self.MAX_HANDSHAKES)
        self._lock = threading.Lock()
        self._last_logged = -float("inf")
        self._unlogged = 0
        self._closed = False
        self._admitting = False
        threading.Thread(target=self._accept, name="dpx-listener", daemon=True).start()

    def fileno(self) -> int:
        return self._wake_reader.fileno()

    def take(self) -> list[tuple[Channel, dict[str, Any], str]]:
        """Peers authenticated since the last call: their channel, ``hello`` message and address."""
        self._wake_reader.setblocking(False)
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            return self._drain()

    def _drain(self) -> list[tuple[Channel, dict[str, Any], str]]:
        arrivals = []
        while True:
            try:
                arrivals.append(self._arrivals.get_nowait())
            except queue.Empty:
                return arrivals

    def admit(self, admitting: bool) -> None:
        """Queue authenticated peers for :meth:`take` (while workers are being started), or turn them
        away at once, so that none waits for work that will not come."""
        with self._lock:
            self._admitting = admitting
            left = [] if admitting else self._drain()
        for channel, _, peer in left:
            channel.close()
            self.refuse(peer, "no worker slot is free")

    def refuse(self, peer: str, reason: str) -> None:
        """Log a refused peer, or count it when one was logged less than ``REFUSAL_LOG_SECONDS`` ago."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_logged < self.REFUSAL_LOG_SECONDS:
                self._unlogged += 1
                return
            others = f" ({self._unlogged} other connection(s) refused since the last report)" if self._unlogged else ""
            self._last_logged, self._unlogged = now, 0
        log.warning("dpx: refused a connection from %s: %s%s", peer, reason, others)

    def close(self) -> None:
        self._closed = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: close alone would not
        except OSError:
            pass
        self.server.close()
        for arrival in self.take():
            arrival[0].close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _accept(self) -> None:
        while True:
            self._handshakes.acquire()  # at capacity, newcomers wait in the backlog: a flood delays, never refuses
            try:
                sock, address = self.server.accept()
            except OSError:
                return  # closed
            peer = f"{address[0]}:{address[1]}"
            threading.Thread(target=self._handshake, args=(sock, peer), name="dpx-handshake", daemon=True).start()

    def _handshake(self, sock: socket.socket, peer: str) -> None:
        try:
            deadline = time.monotonic() + self.handshake_timeout
            authenticate_server(sock, self.key, deadline)
            channel = Channel(sock)
            hello = channel.receive(deadline=deadline, max_bytes=0)
            if hello.get("type") != "hello" or not isinstance(hello.get("token"), (str, type(None))) \
                    or type(hello.get("pid")) is not int:
                raise ProtocolError("its first message was not a valid 'hello'")
        except (OSError, EOFError, ProtocolError) as exc:
            reason = "no handshake within %gs" % self.handshake_timeout if isinstance(exc, TimeoutError) else _short(exc)
            self.refuse(peer, reason or type(exc).__name__)
            sock.close()
            return
        finally:
            self._handshakes.release()
        with self._lock:
            admitted = self._admitting and not self._closed
            if admitted:
                self._arrivals.put((channel, hello, peer))
        if not admitted:
            channel.close()
            self.refuse(peer, "no worker slot is free")
            return
        try:
            self._wake_writer.send(b"!")
        except OSError:
            pass
