"""The ``ray`` runner: each environment is a Ray actor, on this machine or a Ray cluster.

It behaves like the core's multiprocess runner (same options where they mean
the same thing, same failure handling, same dataset): each actor builds its
own environment from the config's JSON form (a live simulation is never sent),
a batch is cut into chunks of consecutive sample ids handed to whichever actor
is free, and each chunk's arrays are copied into rows of preallocated,
alternating batch buffers. Samples are seeded by id, so the batch is the same
whichever actor made which chunk.

An actor that raises, dies or hangs past ``timeout`` is reported (traceback or
Ray's cause of death); its chunk is discarded and redone, and the actor is
killed and created again, up to ``max_restarts`` times in the whole run. Ray's
own actor restarts are off: they would replay work silently and count per
actor rather than per run.

``get_prediction`` works: a Ray actor cannot call into the driver, which holds
the network, so environments leave their requests in a small mailbox actor
that the driver serves while it waits for samples. Visual updates travel back
with each chunk's samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError

from dpx.core.config import ConfigError, EnvironmentConfig
from dpx.core.environment import Field
from dpx.core.parameters import for_instance
from dpx.core.runners import (
    Predictor,
    RemoteRunner,
    WorkerError,
    describe_failure,
    make_producer,
    make_visualizer,
    parse_options,
    raise_contract_error,
)

log = logging.getLogger("dpx.ray")

#: Message the environments get when they ask for a prediction no network can answer.
NO_NETWORK = "get_prediction() needs a network: it is available in the Prediction and Training pipelines"


@dataclass
class RayOptions:
    """``EnvironmentConfig(runner_kwargs=...)`` of the ray runner.

    ``address``: None uses the Ray this process is connected to, else does
    what ``ray.init()`` does (join ``RAY_ADDRESS`` or a ``ray start`` cluster
    of this machine, else start a local Ray); ``"auto"`` or
    ``"ray://HOST:10001"`` joins a running cluster. ``num_cpus``: CPUs each actor holds (fractions allowed).
    ``max_restarts``, ``timeout`` (seconds per chunk), ``start_timeout``
    (seconds to place and start an actor) and ``chunk_size`` mean what they
    mean for the multiprocess runner. ``init_kwargs`` go to
    ``ray.init``; ``actor_options`` to each environment actor's ``.options()``
    (e.g. ``num_gpus``, ``resources``, ``scheduling_strategy``).
    """

    address: str | None = None
    num_cpus: float = 1.0
    max_restarts: int = 3
    timeout: float = 120.0
    start_timeout: float = 120.0
    chunk_size: int | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    actor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        number = (int, float)
        checks = {
            "address": self.address is None or isinstance(self.address, str),
            "num_cpus": isinstance(self.num_cpus, number) and self.num_cpus >= 0,
            "max_restarts": isinstance(self.max_restarts, int) and self.max_restarts >= 0,
            "timeout": isinstance(self.timeout, number) and self.timeout > 0,
            "start_timeout": isinstance(self.start_timeout, number) and self.start_timeout > 0,
            "chunk_size": self.chunk_size is None or (isinstance(self.chunk_size, int) and self.chunk_size >= 1),
            "init_kwargs": isinstance(self.init_kwargs, dict),
            "actor_options": isinstance(self.actor_options, dict),
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"runner_kwargs: invalid {', '.join(bad)} for the ray runner")


# -- inside the actors ---------------------------------------------------------------


class EnvironmentActor:
    """One environment, built inside its Ray worker process.

    Every method answers a dict; an exception is answered as ``error`` and
    ``traceback`` rather than raised, so the driver reports the environment's
    own traceback instead of Ray's wrapping of it.
    """

    def __init__(self, portable: dict[str, Any], key: list[int], instance_id: int, instance_nb: int,
                 optional_fields: list[str], record_wrong: bool, parameters: dict[str, Any] | None = None) -> None:
        self.portable, self.key, self.parameters = portable, key, parameters
        self.instance_id, self.instance_nb = instance_id, instance_nb
        self.optional_fields, self.record_wrong = frozenset(optional_fields), record_wrong
        self.visual: list[dict[int, Any]] = []
        self.wrong: list[tuple[int, dict[str, np.ndarray]]] = []

    def start(self, mailbox: Any, visual: bool) -> dict[str, Any]:
        try:
            self.producer = make_producer(
                EnvironmentConfig(**self.portable),
                np.array(self.key, dtype=np.uint64),
                self.instance_id,
                self.instance_nb,
                on_wrong_sample=(lambda i, sample: self.wrong.append((i, sample))) if self.record_wrong else None,
                optional_fields=self.optional_fields,
                parameters=self.parameters,
            )
            self.connect(mailbox)
            if visual:
                self.producer.env._connect(viewer=lambda instance, updates: self.visual.append(updates))
            self.producer.start(visual=visual)
            return self._reply(
                fields=self.producer.fields,
                scene=self.producer.env.factory.scene() if visual else None,
                parameters=getattr(self.producer.env, "_saved_parameters", {}),
                pid=os.getpid(),
                node=ray.util.get_node_ip_address(),
                node_id=ray.get_runtime_context().get_node_id(),
            )
        except Exception as exc:
            return describe_failure(exc)

    def connect(self, mailbox: Any) -> dict[str, Any]:
        """Route ``get_prediction`` through ``mailbox`` (None: the environment says no network is there)."""
        def ask(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            answer = ray.get(mailbox.ask.remote({k: np.asarray(v) for k, v in inputs.items()}))
            return {k: np.array(v) for k, v in answer.items()}  # writable, as in-process

        self.producer.env._connect(predictor=None if mailbox is None else ask)
        return {}

    def produce(self, sample_ids: np.ndarray, stream: int, parameters: np.ndarray | None = None) -> dict[str, Any]:
        try:
            arrays = self.producer.produce(np.asarray(sample_ids, dtype=np.int64), stream, parameters)
            return self._reply(arrays=arrays, stats=vars(self.producer.stats))
        except Exception as exc:
            return describe_failure(exc)

    def feed(self, stored: dict[str, np.ndarray], sample_ids: np.ndarray, stream: int) -> dict[str, Any]:
        try:
            arrays = self.producer.feed(stored, np.asarray(sample_ids, dtype=np.int64), stream)
            return self._reply(arrays=arrays, stats=vars(self.producer.stats))
        except Exception as exc:
            return describe_failure(exc)

    def apply(self, prediction: np.ndarray) -> dict[str, Any]:
        try:
            self.producer.apply_prediction(np.array(prediction))  # writable, as in-process
            return self._reply()
        except Exception as exc:
            return describe_failure(exc)

    def close(self) -> dict[str, Any]:
        try:
            self.producer.close()
            return {}
        except Exception as exc:
            return describe_failure(exc)

    def _reply(self, **result: Any) -> dict[str, Any]:
        """``result`` with the visual updates and refused samples gathered since the last reply."""
        result["visual"], result["wrong"] = self.visual, self.wrong
        self.visual, self.wrong = [], []
        return result


class PredictionMailbox:
    """Where environments leave ``get_prediction`` requests for the driver, which holds the network.

    An asyncio actor: each ``ask`` waits for its own answer while the driver
    ``take``s requests one at a time and ``answer``s them.
    """

    def __init__(self) -> None:
        self.requests: asyncio.Queue = asyncio.Queue()
        self.answers: dict[int, asyncio.Future] = {}
        self.count = 0

    async def ask(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.count += 1
        answer = self.answers[self.count] = asyncio.get_running_loop().create_future()
        self.requests.put_nowait((self.count, inputs))
        return await answer

    async def take(self) -> tuple[int, dict[str, np.ndarray]]:
        return await self.requests.get()

    async def answer(self, request: int, prediction: dict[str, np.ndarray] | None, error: str | None = None) -> None:
        answer = self.answers.pop(request)
        if error is None:
            answer.set_result(prediction)
        else:
            answer.set_exception(RuntimeError(error))


# -- in the driver -------------------------------------------------------------------


@dataclass
class _Slot:
    """The runner's side of one environment: its current actor and what it is doing."""

    instance_id: int
    actor: Any = None
    ref: Any = None  # its pending call
    rows: tuple[int, int] | None = None  # the chunk that call is producing
    since: float = 0.0  # when that call was made
    stats: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    node: str | None = None
    node_id: str | None = None

    def call(self, ref: Any, rows: tuple[int, int] | None = None) -> None:
        self.ref, self.rows, self.since = ref, rows, time.monotonic()

    def describe(self) -> str:
        where = f" (pid {self.pid} on {self.node})" if self.pid is not None else ""
        return f"actor {self.instance_id}{where}"


class _Failure(Exception):
    def __init__(self, slot: _Slot, reason: str) -> None:
        super().__init__(reason)
        self.slot, self.reason = slot, reason


class RayRunner(RemoteRunner):
    """Run ``workers`` environments as Ray actors."""

    @classmethod
    def check_options(cls, config: EnvironmentConfig) -> None:
        parse_options(RayOptions, config.runner_kwargs, "ray")

    def start(self) -> dict[str, Field]:
        self.options = parse_options(RayOptions, self.config.runner_kwargs, "ray")
        portable = self.config.portable()  # env_kwargs that cannot travel fail here, before Ray starts
        if self.config.environment_name.startswith("__main__:"):
            raise ConfigError(
                f"EnvironmentConfig: {self.config.environment_name} is defined in the script being run, which Ray "
                "actors cannot import; move it to a module they can import (installed on every node)"
            )
        self._prepare(self.options.max_restarts)
        self.saved_parameters = {}
        self.predictor: Predictor | None = None
        self._mailbox: Any = None
        self._asking: Any = None  # the pending ``take`` on the mailbox
        self.slots = [_Slot(i) for i in range(self.instance_nb)]
        self._started_ray = self._init_ray()
        self.visualizer = make_visualizer(self.config)
        self._actor_args = {"portable": portable, "key": [int(k) for k in self.key], "instance_nb": self.instance_nb,
                            "optional_fields": sorted(self.optional_fields),
                            "record_wrong": self.on_wrong_sample is not None}
        self._actor_class = ray.remote(EnvironmentActor).options(
            num_cpus=self.options.num_cpus, max_restarts=0,
            **{"scheduling_strategy": "SPREAD", **self.options.actor_options},
        )
        for slot in self.slots:
            self._launch(slot)
        self._await_started(self.slots)
        return self._fields

    def _init_ray(self) -> bool:
        """Join the Ray this process is connected to, or start/join one; True if this runner called ``ray.init``."""
        if ray.is_initialized():
            return False
        kwargs = dict(self.options.init_kwargs)
        if self.options.address is None:
            kwargs.setdefault("include_dashboard", False)
            # Like spawned worker processes, actors of a local Ray import what the driver can.
            kwargs.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
        try:
            with _on_loopback(self.options.address, kwargs):
                ray.init(address=self.options.address, **kwargs)
        except (ConnectionError, ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"runner_kwargs: cannot start or join Ray (address={self.options.address!r}): {exc}") from exc
        return True

    # -- actors ----------------------------------------------------------------------

    def _launch(self, slot: _Slot) -> None:
        slot.actor = self._actor_class.remote(instance_id=slot.instance_id, **self._actor_args,
                                              parameters=for_instance(self.stored_parameters, slot.instance_id))
        slot.call(slot.actor.start.remote(self._mailbox if self.predictor is not None else None,
                                          self.visualizer is not None))

    def _await_started(self, slots: list[_Slot]) -> None:
        waiting = list(slots)
        while waiting:
            oldest = min(waiting, key=lambda s: s.since)
            ref = self._wait(waiting, oldest.since + self.options.start_timeout)
            if ref is None:
                raise WorkerError(
                    f"{oldest.describe()} did not start within start_timeout={self.options.start_timeout:g}s: "
                    f"either its environment is stuck building its simulation, or the cluster lacks "
                    f"{self.options.num_cpus:g} free CPU(s) for each of the {self.instance_nb} actors "
                    "(`ray status` shows its resources)"
                )
            slot = next(s for s in waiting if s.ref == ref)
            waiting.remove(slot)
            try:
                ready = self._result(slot)
            except _Failure as failure:
                self._fail(failure)
                self._launch(slot)
                waiting.append(slot)
                continue
            slot.pid, slot.node, slot.node_id = ready["pid"], ready["node"], ready["node_id"]
            for name, declared in ready["fields"].items():
                self._fields.setdefault(name, declared)
            self.saved_parameters[slot.instance_id] = ready["parameters"]
            if self.visualizer is not None:
                self.visualizer.add_scene(slot.instance_id, ready["scene"])
            self._forward(slot, ready)

    def _wait(self, slots: list[_Slot], deadline: float) -> Any:
        """The first of the slots' calls to answer, or None at ``deadline``; serves ``get_prediction`` meanwhile."""
        refs = [slot.ref for slot in slots]
        while True:
            watched = refs if self._asking is None else [*refs, self._asking]
            ready, _ = ray.wait(watched, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            if self._asking is not None and ready[0] == self._asking:
                self._answer_prediction()
                continue
            return ready[0]

    def _answer_prediction(self) -> None:
        request, inputs = ray.get(self._asking)
        self._asking = self._mailbox.take.remote()
        self.predictions_asked = True
        if self.predictor is None:
            self._mailbox.answer.remote(request, None, NO_NETWORK)
        else:  # Ray hands out read-only arrays; the network gets writable ones, as in-process
            self._mailbox.answer.remote(request, self.predictor({k: np.array(v) for k, v in inputs.items()}))

    def _result(self, slot: _Slot) -> dict[str, Any]:
        """The answer of ``slot``'s pending call; errors, deaths and Ray failures raise ``_Failure``."""
        ref, slot.ref = slot.ref, None
        try:
            result = ray.get(ref)
        except RayActorError as exc:
            raise _Failure(slot, _cause_of_death(exc)) from None
        except RayError as exc:
            raise _Failure(slot, f"was lost to Ray ({type(exc).__name__}: {exc})") from None
        if "error" in result:
            raise_contract_error(slot.describe(), result)
            raise _Failure(slot, f"raised {result['error']}\n\nActor traceback:\n{result['traceback']}")
        return result

    def _forward(self, slot: _Slot, result: dict[str, Any]) -> None:
        """Pass on what came back with an answer: visual updates and refused samples."""
        if self.visualizer is not None:
            for updates in result["visual"]:
                self.visualizer.update(slot.instance_id, updates)
        if self.on_wrong_sample is not None:
            for sample_id, sample in result["wrong"]:
                self.on_wrong_sample(sample_id, sample)

    def _fail(self, failure: _Failure) -> None:
        """Count a failure against ``max_restarts``, report it and kill the actor."""
        slot = failure.slot
        self._kill(slot)
        self._count_failure(slot.describe(), failure.reason)

    def _kill(self, slot: _Slot) -> None:
        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        slot.actor = slot.ref = slot.rows = None

    # -- producing -------------------------------------------------------------------

    def _run_chunks(self, pending: deque, sample_ids: np.ndarray, stream: int, batch: dict[str, np.ndarray],
                    count: int, pinned: bool, stored: dict[str, np.ndarray] | None = None) -> None:
        while True:
            for slot in self.slots:  # one chunk per actor at a time: a faster actor takes more chunks
                if pending and slot.ref is None and (not pinned or pending[0][0] == slot.instance_id):
                    first, last = pending.popleft()
                    if stored is None:
                        parameters = None if self.chunk_parameters is None else self.chunk_parameters[first:last]
                        slot.call(slot.actor.produce.remote(sample_ids[first:last], stream, parameters), (first, last))
                    else:  # load_samples: the chunk's stored rows travel with it
                        rows = {name: values[first:last] for name, values in stored.items()}
                        slot.call(slot.actor.feed.remote(rows, sample_ids[first:last], stream), (first, last))
            busy = [slot for slot in self.slots if slot.ref is not None]
            if not busy:
                return
            oldest = min(busy, key=lambda s: s.since)
            ref = self._wait(busy, oldest.since + self.options.timeout)
            slot = oldest if ref is None else next(s for s in busy if s.ref == ref)
            rows = slot.rows
            try:
                if ref is None:
                    raise _Failure(slot, f"hung: no answer within timeout={self.options.timeout:g}s")
                self._store(slot, rows, self._result(slot), batch, count)
            except _Failure as failure:
                self._restart(failure)
                pending.appendleft(rows)

    def _restart(self, failure: _Failure) -> None:
        self._fail(failure)
        self._launch(failure.slot)
        self._await_started([failure.slot])

    def _store(self, slot: _Slot, rows: tuple[int, int], result: dict[str, Any], batch: dict[str, np.ndarray],
               count: int) -> None:
        """Copy a chunk's arrays into its rows of the batch."""
        first, last = rows
        for name, values in result["arrays"].items():
            if name not in batch:
                batch[name] = np.empty((count, *values.shape[1:]), values.dtype)
                self._fields.setdefault(name, Field(name)).learn(values[0])
            target = batch[name][first:last]
            if values.shape != target.shape or values.dtype != target.dtype:
                raise _Failure(slot, f"sent field {name!r} as {values.dtype} {values.shape}, which does not fit "
                                     f"rows {first}:{last} of the batch ({target.dtype} {target.shape})")
            target[...] = values
        slot.stats = result["stats"]
        self._forward(slot, result)

    def apply(self, predictions: np.ndarray) -> None:
        calling = self.slots[: len(predictions)]
        for slot, row in zip(calling, predictions):
            slot.call(slot.actor.apply.remote(row))
        deadline = time.monotonic() + self.options.timeout
        for _ in range(len(calling)):
            ref = self._wait([s for s in calling if s.ref is not None], deadline)
            if ref is None:
                late = next(s for s in calling if s.ref is not None)
                raise WorkerError(f"{late.describe()} hung: apply_prediction gave no answer within "
                                  f"timeout={self.options.timeout:g}s")
            slot = next(s for s in calling if s.ref == ref)
            try:
                self._forward(slot, self._result(slot))
            except _Failure as failure:
                raise WorkerError(f"{slot.describe()} {failure.reason}") from None

    def connect(self, predictor: Predictor | None) -> None:
        self.predictor = predictor
        if predictor is not None and self._mailbox is None:
            self._mailbox = ray.remote(PredictionMailbox).options(num_cpus=0).remote()
            self._asking = self._mailbox.take.remote()
        mailbox = self._mailbox if predictor is not None else None
        try:
            ray.get([slot.actor.connect.remote(mailbox) for slot in self.slots], timeout=self.options.timeout)
        except RayError as exc:
            raise WorkerError(f"could not connect the actors to the network: {exc}") from None

    def _instance_stats(self) -> Iterator[dict[str, int]]:
        return (slot.stats for slot in self.slots)

    def close(self) -> None:
        """Close the environments (5 s at most), kill the actors, and stop Ray if this runner started it."""
        slots = getattr(self, "slots", [])
        try:
            idle = [slot for slot in slots if slot.actor is not None and slot.ref is None]
            closing = [slot.actor.close.remote() for slot in idle]
            done, _ = ray.wait(closing, num_returns=len(closing), timeout=5) if closing else ([], [])
            for slot, ref in zip(idle, closing):
                try:
                    answer = ray.get(ref) if ref in done else {}
                except RayError:
                    continue  # it died while closing: killed below all the same
                if "error" in answer:
                    log.warning("dpx: %s: close() raised %s", slot.describe(), answer["error"])
        finally:
            for slot in slots:
                self._kill(slot)
            if getattr(self, "_mailbox", None) is not None:
                ray.kill(self._mailbox)
                self._mailbox = self._asking = None
            if getattr(self, "_started_ray", False):
                ray.shutdown()
                self._started_ray = False
            if getattr(self, "visualizer", None) is not None:
                self.visualizer.close()


@contextlib.contextmanager
def _on_loopback(address: str | None, init_kwargs: dict[str, Any]) -> Iterator[None]:
    """Have a Ray that dpx starts itself listen on loopback only.

    Ray binds its servers to the node's IP address, which on Linux is the
    address other machines reach it at: a local Ray would accept connections
    from the network. Ray takes loopback as the node's address where clusters
    are off (its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` switch, read when
    ``ray`` is imported); this turns that switch off while ``ray.init`` starts
    a local Ray, and leaves joining a cluster, or a node address the user
    gave, as they are.
    """
    try:  # Ray's private modules: if they change, Ray starts as it would anyway
        from ray._private import ray_constants, services

        starting = "_node_ip_address" not in init_kwargs and services.canonicalize_bootstrap_address(address) is None
        starting = starting and hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    except Exception:  # noqa: BLE001 - also a malformed address, which ray.init reports
        starting = False
    if not starting:
        yield
        return
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


def _cause_of_death(exc: RayActorError) -> str:
    """Ray's account of why an actor died, without its list of common causes."""
    text = str(exc)
    match = re.search(r"The actor (?:is dead|died) because (.*?)(?:Some common causes|$)", text, re.S)
    cause = " ".join((match.group(1) if match else text).split())
    return f"died ({type(exc).__name__}: {cause})"
