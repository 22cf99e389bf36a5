"""The worker transport: real sockets, real runners, peers that stall, lie or fuzz."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpx.core import transport
from dpx.core.multiprocess import MultiprocessRunner
from dpx.core.runners import CONTRACT_ERRORS, WorkerError
from dpx.testing import waiting_runner

KEY = bytes(range(32))


def start_runner(**runner_kwargs):
    """A runner waiting for one hand-started worker, with this module's key and small limits."""
    options = {"authkey": KEY.hex(), "max_restarts": 0, "timeout": 10, "chunk_size": 4, **runner_kwargs}
    return waiting_runner(options)


def peer(address, key=KEY, token=None) -> transport.Channel:
    """A peer holding the key: authenticated, hello said."""
    channel = transport.connect(*address, key, timeout=10)
    channel.send({"type": "hello", "token": token, "pid": os.getpid()})
    return channel


def fake_worker(address) -> transport.Channel:
    """A peer that answers init as a worker of ``Noise`` does, ready to be given a chunk."""
    channel = peer(address)
    assert channel.receive(deadline=time.monotonic() + 10)["type"] == "init"
    channel.send({"type": "ready", "fields": {"input": [None, None], "ground_truth": [None, None]}, "scene": None,
                  "pid": os.getpid()})
    return channel


def frame(header: dict, *arrays: np.ndarray) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("!I", len(encoded)) + encoded + b"".join(a.tobytes() for a in arrays)


def samples_frame(rows: int, declared_rows: int | None = None) -> bytes:
    declared = rows if declared_rows is None else declared_rows
    x = np.ones((rows, 3), np.float32)
    header = {"type": "samples", "stats": {"produced": rows},
              "arrays": {"input": {"__array__": 0, "dtype": "<f4", "shape": [declared, 3]},
                         "ground_truth": {"__array__": 1, "dtype": "<f4", "shape": [declared, 1]}}}
    return frame(header, x, x[:, :1])


def produce_against(channel: transport.Channel, runner: MultiprocessRunner, answer: bytes, close: bool = True):
    """Let ``runner`` produce 4 samples while the peer answers its request with the raw ``answer``."""

    def serve():
        try:
            channel.receive(deadline=time.monotonic() + 10)
            channel.sock.sendall(answer)
            if close:
                channel.close()
        except (OSError, EOFError):
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        return runner.produce(np.arange(4))
    finally:
        server.join(10)


# -- item 7: accepting ---------------------------------------------------------------------


def test_a_silent_client_does_not_hold_up_a_worker():
    """A client that connects and sends nothing must not block the workers, nor stay connected forever."""
    runner, thread, outcome = start_runner(start_timeout=30)
    silent = socket.create_connection(runner.address)
    try:
        worker = fake_worker(runner.address)
        thread.join(30)
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert runner.workers[0].pid == os.getpid()
    finally:
        worker.close()
        silent.close()
        runner.close()


def test_a_silent_client_is_dropped_after_the_handshake_deadline(caplog):
    runner, thread, outcome = start_runner(start_timeout=1)  # handshakes get min(10 s, start_timeout)
    with caplog.at_level(logging.WARNING, logger="dpx"):
        silent = socket.create_connection(runner.address)
        silent.settimeout(20)
        greeting = silent.recv(100)  # the runner's challenge
        assert silent.recv(100) == b"", "the runner kept a silent client connected"
    thread.join(20)
    silent.close()
    runner.close()
    assert greeting.startswith(b"dpx-transport/1")
    assert "no handshake within 1s" in caplog.text


def test_a_flood_of_silent_clients_delays_a_worker_but_does_not_shut_it_out():
    runner, thread, outcome = start_runner(start_timeout=30)
    flood = [socket.create_connection(runner.address) for _ in range(transport.Listener.MAX_HANDSHAKES + 4)]
    joined: dict = {}

    def join():
        try:
            joined["channel"] = fake_worker(runner.address)
        except (OSError, EOFError, transport.ProtocolError) as exc:
            joined["error"] = exc

    joiner = threading.Thread(target=join, daemon=True)
    joiner.start()
    time.sleep(0.5)  # the worker is now queued behind the flood
    for sock in flood:
        sock.close()
    joiner.join(20)
    thread.join(20)
    assert "channel" in joined and "error" not in outcome, (joined, outcome)
    joined["channel"].close()
    runner.close()


def test_refused_connections_are_logged_at_a_bounded_rate(caplog):
    runner, thread, outcome = start_runner(start_timeout=30)
    with caplog.at_level(logging.WARNING, logger="dpx"):
        for _ in range(20):
            with socket.create_connection(runner.address) as scan:
                scan.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 100)
                scan.settimeout(10)
                try:
                    while scan.recv(4096):
                        pass
                except ConnectionResetError:
                    pass  # refused with our bytes unread
        fake_worker(runner.address)
        thread.join(30)
    runner.close()
    refused = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in refused]


# -- items 8 and 10: messages ----------------------------------------------------------------


def test_a_worker_stopping_in_the_middle_of_a_message_is_a_hang():
    """A peer that sent the header and half the bytes of a chunk, then nothing, is timed out as hung."""
    runner, thread, outcome = start_runner(timeout=1)
    worker = fake_worker(runner.address)
    thread.join(10)
    half = samples_frame(4)[:-20]
    with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) hung: no whole answer within timeout=1s"):
        produce_against(worker, runner, half, close=False)
    worker.close()
    runner.close()


@pytest.mark.parametrize("answer, reason", [
    (samples_frame(4, declared_rows=3 << 28), r"sent a malformed message: declared \d+ bytes of arrays, over the limit"),
    (samples_frame(3), r"field 'input' has \(3,\) rows for a chunk of 4"),
    (struct.pack("!I", 3 << 30), r"declared a 3221225472-byte header, over the 1048576-byte limit"),
    (frame({"type": "samples", "arrays": {"input": {"__array__": 0, "dtype": "O", "shape": [4]}}}),
     r"dtype 'O' refused"),
    (frame({"type": "samples"}), r"sent a malformed 'samples' message"),
    (frame({"type": "samples", "arrays": [], "stats": 1}), r"sent a malformed 'samples' message"),
    (frame({"type": "error", "error": 1}), r"sent a malformed 'error' message"),
    (frame({"type": "deep", "a": json.loads("[" * 40 + "1" + "]" * 40)}), r"nested deeper than 32 levels"),
    (struct.pack("!I", 100_000) + b"[" * 100_000, r"malformed message header"),
    (frame({"type": "samples", "arrays": {"secret": {"__array__": 0, "dtype": "<f4", "shape": [4]}}}, np.ones(4, "f4")),
     r"array arrays/secret is no declared field"),
    (frame({"type": "samples", "stats": {}, "arrays": {"input": {"__array__": 0, "dtype": "<f4", "shape": [4, 3]}}},
           np.ones((4, 3), "f4")), r"sent fields \['input'\], not the declared \['ground_truth', 'input'\]"),
])
def test_a_malformed_answer_is_that_workers_failure(answer, reason):
    runner, thread, outcome = start_runner()
    worker = fake_worker(runner.address)
    thread.join(10)
    with pytest.raises(WorkerError, match=reason) as caught:
        produce_against(worker, runner, answer)
    assert len(str(caught.value)) < 400, "the message must say why in a line, not dump the payload"
    runner.close()


def test_a_malformed_answer_is_restarted_within_the_budget():
    """A hand-started worker that sends garbage is dropped; the next one to join takes its slot."""
    runner, thread, outcome = start_runner(max_restarts=1, start_timeout=30)
    first = fake_worker(runner.address)
    thread.join(10)
    replacement = {}

    def join_later():
        time.sleep(0.5)
        replacement["channel"] = channel = fake_worker(runner.address)
        request = channel.receive(deadline=time.monotonic() + 20)
        channel.sock.sendall(samples_frame(len(request["ids"])))

    joiner = threading.Thread(target=join_later, daemon=True)
    joiner.start()
    batch = produce_against(first, runner, b"\x00\x00\x00\x05nope!")
    joiner.join(20)
    assert batch["input"].shape == (4, 3) and runner.restarts == 1
    replacement["channel"].close()
    runner.close()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
PLACEHOLDER = st.fixed_dictionaries({
    "__array__": st.integers(-1, 3) | JSON,
    "dtype": st.sampled_from(["<f4", "<f8", "|b1", "<i8", "O", "V8", "<U3", "f4,f4", "(2,)f4", ">c16"]) | JSON,
    "shape": st.lists(st.integers(-2, 1 << 33), max_size=4) | JSON,
})


@st.composite
def answers(draw) -> bytes:
    """A chunk's answer, valid or mutated: headers, placeholders, lengths, bytes."""
    kind = draw(st.sampled_from(["samples", "predict", "visual", "error", "ready", "applied", "hello"]))
    header = {"type": kind, **draw(st.dictionaries(
        st.sampled_from(["arrays", "stats", "refused", "inputs", "updates", "error", "traceback", "contract",
                         "fields", "scene"]),
        JSON | PLACEHOLDER | st.dictionaries(st.sampled_from(["input", "ground_truth", "x"]), PLACEHOLDER, max_size=3),
        max_size=3))}
    data = frame(header) + draw(st.binary(max_size=64))
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "length"]))
    if mutation == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif mutation == "length":
        data = struct.pack("!I", draw(st.integers(0, 2**32 - 1))) + data[4:]
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
def test_fuzzed_answers_from_an_authenticated_peer_never_crash_the_runner(answer):
    runner, thread, outcome = start_runner(timeout=5)
    worker = fake_worker(runner.address)
    thread.join(10)
    try:
        produce_against(worker, runner, answer)
    except WorkerError as exc:
        assert "max_restarts=0 reached" in str(exc) and len(str(exc).splitlines()[0]) < 400, str(exc)
    except CONTRACT_ERRORS as exc:  # the peer claimed its environment broke its contract: the run stops
        assert "(in worker 0 (pid" in str(exc)
    finally:
        runner.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
def test_fuzzed_answers_to_init_never_crash_the_runner(answer):
    runner, thread, outcome = start_runner(start_timeout=10)
    channel = peer(runner.address)
    try:
        assert channel.receive(deadline=time.monotonic() + 10)["type"] == "init"
        channel.sock.sendall(answer)
    finally:
        channel.close()
    thread.join(20)
    runner.close()
    error = outcome.get("error")
    assert not thread.is_alive() and (error is None or isinstance(error, (WorkerError, *CONTRACT_ERRORS))), error


@settings(max_examples=300, deadline=None)
@given(answer=answers(), rows=st.integers(1, 4))
def test_fuzzed_frames_make_receive_raise_protocol_errors_only_and_allocate_nothing_declared(answer, rows):
    """Whatever arrives, ``receive`` returns a message or raises ProtocolError / EOFError, and allocates no more
    than its limit whatever sizes are declared."""
    left, right = socket.socketpair()
    destination = np.zeros((rows, 3), np.float32)

    def plan(kind, spec):
        return destination if spec.path == ("arrays", "input") else None

    try:
        left.sendall(answer)
        left.close()
        tracemalloc.start()
        try:
            message = transport.Channel(right).receive(plan, time.monotonic() + 5, max_bytes=1 << 16)
        except (transport.ProtocolError, EOFError):
            message = None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < (1 << 16) + (1 << 21), peak  # the array limit plus a header of at most 1 MB, parsed
        assert message is None or isinstance(message.get("type"), str)
    finally:
        right.close()


def test_receive_refuses_a_huge_declared_array_before_allocating_it():
    left, right = socket.socketpair()
    header = {"type": "samples", "arrays": {"x": {"__array__": 0, "dtype": "<f8", "shape": [1 << 30, 3]}}}
    left.sendall(frame(header))
    tracemalloc.start()
    with pytest.raises(transport.ProtocolError, match=r"declared 25769803776 bytes of arrays, over the limit"):
        transport.Channel(right).receive(deadline=time.monotonic() + 5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    left.close()
    right.close()


def test_arrays_land_in_the_planned_buffer_and_the_next_message_is_kept():
    left, right = socket.socketpair()
    sender, receiver = transport.Channel(left), transport.Channel(right)
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    sender.send({"type": "samples", "arrays": {"input": values}, "stats": {"produced": 4}})
    sender.send({"type": "closed"})
    batch = np.zeros((8, 3), np.float32)
    message = receiver.receive(lambda kind, spec: batch[2:6], time.monotonic() + 5)
    assert message["arrays"]["input"].base is batch and np.array_equal(batch[2:6], values)
    assert receiver.buffered and receiver.receive(deadline=time.monotonic() + 5) == {"type": "closed"}
    left.close()
    right.close()


# -- item 11: keys -----------------------------------------------------------------------------


def test_a_peer_without_the_key_is_refused_before_anything_is_read():
    runner, thread, outcome = start_runner(start_timeout=30)
    with pytest.raises(transport.AuthenticationError, match="the runner refused the key"):
        transport.connect(*runner.address, b"x" * 32, timeout=10)
    fake_worker(runner.address)
    thread.join(10)
    assert "error" not in outcome
    runner.close()


def test_short_and_malformed_keys_are_refused():
    with pytest.raises(ValueError, match=r"authkey is 1 bytes long; a key needs at least 16 random bytes"):
        transport.parse_authkey("ab", "authkey")
    with pytest.raises(ValueError, match=r"DPX_AUTHKEY must be a key in hex"):
        transport.parse_authkey("not hex", "DPX_AUTHKEY")
