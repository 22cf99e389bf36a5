"""A kit for plugin authors: conformance checks and pytest helpers.

* :func:`check_environment` builds an environment the way a pipeline does,
  produces a few samples twice from the same seed, and fails with a message
  saying what is wrong (undeclared or missing fields, shapes changing, NaN,
  randomness not drawn from ``self.rng``...), in the spirit of Gymnasium's
  ``check_env``.
* :func:`prepare_environment` sets an environment up as a pipeline does, for
  unit tests of its own methods.
* :func:`assert_light_import` checks, in a fresh interpreter, that importing a
  plugin's entry-point module pulls in no heavy library.
* :class:`RunnerChecks` runs the scenarios every runner must pass (same
  dataset as in-process, failures retried, refused samples, predictions and
  viewers across processes), so a new runner plugin is tested like the
  built-in ``multiprocess`` one and dpx-ray.
* :class:`StorageChecks`, :class:`NetworkBackendChecks`, :func:`check_loss`,
  :func:`check_transform`, :func:`check_stats_writer`, :func:`check_visualizer`
  and :func:`check_sampler` (from :mod:`dpx.conformance`) do the same for
  every other kind of component.
* The ``dpx_plugin`` pytest fixture registers a plugin for one test. It is
  available in every test once dpx is installed (dpx registers this module as
  a pytest plugin).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpx.conformance import (  # noqa: F401  the kits of every hook, offered here with the runner's
    NetworkBackendChecks,
    StorageChecks,
    check_loss,
    check_sampler,
    check_stats_writer,
    check_transform,
    check_visualizer,
)

HEAVY_MODULES = ("torch", "tensorflow", "jax", "vedo", "vtk", "ray", "tensorboard", "Sofa", "SofaRuntime")


def check_environment(
    environment: type | str,
    env_kwargs: dict[str, Any] | None = None,
    *,
    samples: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Produce ``samples`` samples twice and check they are valid and reproducible.

    Returns the first batch, by field. Raises ``AssertionError`` or the error
    dpx itself would raise, with the environment named.
    """
    from dpx.core.config import EnvironmentConfig
    from dpx.core.producer import resolve_seed
    from dpx.core.runners import InProcessRunner

    config = EnvironmentConfig(environment, env_kwargs=env_kwargs or {}, seed=seed)
    _, key = resolve_seed(seed)
    batches = []
    for _ in range(2):
        runner = InProcessRunner(config, key)
        with runner:
            declared = runner.fields
            assert declared, f"{config.environment_name} declares no field"
            batch = runner.produce(np.arange(samples))
            batches.append({name: array.copy() for name, array in batch.items()})
    first, second = batches
    for name, array in first.items():
        assert np.array_equal(array, second[name], equal_nan=True), (
            f"{config.environment_name}: field {name!r} differs between two runs with the same seed; "
            "draw every random number from self.rng"
        )
    _warn_if_parameters_ignored(config, key, first)
    return first


def _warn_if_parameters_ignored(config: Any, key: np.ndarray, first: dict[str, np.ndarray]) -> None:
    """Warn when one sample made with two different parameter vectors (same seed) is bit-identical:
    the environment ignores the parameters it declares, so their record would be false provenance."""
    import warnings

    from dpx.core.runners import InProcessRunner
    from dpx.core.space import PARAMETERS_FIELD

    vectors = first.get(PARAMETERS_FIELD)
    if vectors is None or len(vectors) < 2 or np.array_equal(vectors[0], vectors[1]):
        return
    with InProcessRunner(config, key) as runner:
        twice = runner.produce(np.array([0, 0]), parameters=vectors[:2])
        training = [name for name, f in runner.fields.items() if f.training]
    if all(np.array_equal(twice[name][0], twice[name][1], equal_nan=True) for name in training):
        warnings.warn(
            f"{config.environment_name}: two different parameter vectors gave bit-identical samples; "
            "it declares parameters but does not use them: read self.sample_parameters in step() "
            "(or declare none)", UserWarning, stacklevel=3)


def prepare_environment(environment: Any, seed: int = 0) -> Any:
    """Run on ``environment`` the set-up a pipeline runs before stepping it, and return it.

    For unit tests of an environment's own methods (``step``, ``apply_prediction``)
    outside any pipeline; its ``rng`` is a plain generator seeded with ``seed``.
    """
    environment._attach(0, 1, np.random.default_rng(seed))
    environment.create()
    environment.init()
    environment.init_database()
    environment._parameters_taken = True  # as a pipeline: save_parameters() from now on is refused
    if len(environment.parameter_space):  # each step() draws its parameters first, as a pipeline would
        environment.step = _DrawThenStep(environment)
    return environment


class _DrawThenStep:
    """``step()`` of an environment with parameters outside a pipeline: draw them, then step
    (a class, not a closure, so the environment still pickles)."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def __call__(self) -> Any:
        self.environment.draw_parameters()
        return type(self.environment).step(self.environment)  # a coroutine for an async step, awaited by the caller


def assert_light_import(module: str, heavy: Iterable[str] = HEAVY_MODULES) -> None:
    """Assert that ``import module`` in a fresh interpreter imports none of ``heavy``.

    A plugin's entry-point module is imported whenever dpx lists plugins, so a
    top-level ``import torch`` there slows every ``python -m dpx`` command.
    """
    heavy = list(heavy)
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not imported, f"importing {module} pulls in heavy modules {imported}; import them where they are used"


def saved_answers(session: str | Path, network_config: Any, epoch: int, inputs: np.ndarray) -> np.ndarray:
    """What the network a Training saved after ``epoch`` (``save_each_epoch``) predicts for ``inputs``, its
    saved normalisation applied: what environments asking it during the next epoch's first batch stored."""
    import dataclasses

    from dpx.core.predictor import load_predictor

    predictor = load_predictor(session, dataclasses.replace(network_config, which_network=epoch))
    (field,) = predictor.input_fields
    (answers,) = predictor.backend.predict({field: inputs}).values()
    return answers


def waiting_runner(runner_kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, BaseException]]:
    """A multiprocess runner of one ``Noise`` environment waiting for hand-started workers (``spawn=False``),
    starting in a thread: ``(runner, thread, outcome)``, ``outcome["error"]`` holding what ``start()`` raised.

    For transport tests that play the worker's part over a real socket; returns once the runner listens.
    """
    import threading
    import time

    from dpx.core.config import EnvironmentConfig
    from dpx.core.multiprocess import MultiprocessRunner
    from dpx.core.producer import resolve_seed
    from dpx.testing_envs import Noise

    config = EnvironmentConfig(Noise, runner="multiprocess", workers=1, seed=1,
                               runner_kwargs={"spawn": False, **runner_kwargs})
    runner = MultiprocessRunner(config, resolve_seed(1)[1])
    outcome: dict[str, BaseException] = {}

    def start() -> None:
        try:
            runner.start()
        except Exception as exc:  # reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    while not hasattr(runner, "address") and thread.is_alive():
        time.sleep(0.01)
    return runner, thread, outcome


class RunnerChecks:
    """The scenarios a runner must pass, each compared with the ``inprocess`` runner.

    ``RunnerChecks("multiprocess", tmp_path).same_dataset()`` generates small
    datasets with :mod:`dpx.testing_envs` environments under ``directory`` and
    raises ``AssertionError`` saying what differs. ``runner_kwargs`` go to every
    run (e.g. Ray's ``num_cpus``); a check's own options are added to them.
    """

    def __init__(self, runner: str, directory: str | os.PathLike, *, workers: int = 2,
                 runner_kwargs: dict[str, Any] | None = None) -> None:
        self.runner, self.directory, self.workers = runner, Path(directory), workers
        self.runner_kwargs = dict(runner_kwargs or {})
        self._runs = 0

    def generate(self, environment: type | None = None, *, local: bool = False, batch_nb: int = 4,
                 batch_size: int = 50, runner_kwargs: dict[str, Any] | None = None, **config: Any) -> Any:
        """Generate in a fresh session, with this runner or (``local``) the in-process one."""
        from dpx.core.config import EnvironmentConfig
        from dpx.core.generation import DataGeneration
        from dpx.testing_envs import Noise

        self._runs += 1
        while (self.directory / f"run{self._runs}").exists():  # another kit's runs in the same folder
            self._runs += 1
        options = {} if local else {**self.runner_kwargs, **(runner_kwargs or {})}
        config = EnvironmentConfig(environment or Noise, runner="inprocess" if local else self.runner,
                                   workers=1 if local else config.pop("workers", self.workers), seed=11,
                                   runner_kwargs=options, **config)
        return DataGeneration(config, session_dir=str(self.directory), session_name=f"run{self._runs}",
                              batch_nb=batch_nb, batch_size=batch_size, progress=False).execute()

    @staticmethod
    def stored(summary: Any) -> dict[str, np.ndarray]:
        from dpx.core.database import open_database

        return open_database(summary.session_path).read()

    def same_dataset(self, *variants: dict[str, Any]) -> None:
        """One worker, ``workers`` workers and each variant of the options all store the in-process dataset."""
        reference = self.stored(self.generate(local=True))
        runs = [({"workers": 1}, {}), ({}, {})] + [({}, variant) for variant in variants]
        for config, options in runs:
            stored = self.stored(self.generate(runner_kwargs=options, **config))
            for name, array in reference.items():
                assert np.array_equal(stored[name], array), (
                    f"{self.runner} {config or ''}{options or ''}: field {name!r} differs from the in-process dataset"
                )

    def portable_kwargs(self) -> None:
        """``env_kwargs`` that cannot reach another process are refused up front; tuples arrive as lists."""
        from dpx.core.config import ConfigError

        try:
            self.generate(env_kwargs={"shape": object()})
        except ConfigError as exc:
            assert "env_kwargs['shape']=<object object" in str(exc) and "cannot be sent" in str(exc), exc
        else:
            raise AssertionError(f"{self.runner} accepted env_kwargs it cannot send")
        assert self.generate(env_kwargs={"shape": (2, 3)}).total == 200

    def refused_samples(self) -> None:
        """Samples refused by ``check_sample`` are counted and recorded as in-process."""
        from dpx.testing_envs import Picky

        local, remote = (self.generate(Picky, local=flag, record_wrong_samples=True) for flag in (True, False))
        assert np.array_equal(self.stored(remote)["input"], self.stored(local)["input"])
        assert remote.refused == local.refused > 0, (remote.refused, local.refused)

        def recorded(summary: Any) -> list[tuple[str, bytes]]:
            files = sorted((summary.session_path / "dataset" / "wrong_samples").glob("*.npz"))
            return sorted((f.name.split("_")[0], np.load(f)["input"].tobytes()) for f in files)

        assert recorded(remote) == recorded(local) and len(recorded(remote)) == remote.refused

    def failures(self, hows: Iterable[str] = ("raise", "exit", "kill", "hang"), timeout: float = 3.0) -> dict[str, str]:
        """Environments that raise, exit, are SIGKILLed or hang once are restarted and nothing is lost.

        Returns what the runner logged for each failure, for runner-specific checks.
        """
        from dpx.testing_envs import Faulty

        reasons = {}
        for how in hows:
            reference = self.stored(self.generate(Faulty, local=True, env_kwargs={"how": how, "threshold": 99.0}))
            marker = self.directory / f"{how}-{self._runs}.marker"
            with _warnings() as logged:
                summary = self.generate(Faulty, env_kwargs={"how": how, "marker": str(marker)},
                                        runner_kwargs={"timeout": timeout, "max_restarts": 3})
            assert marker.exists(), f"the {how!r} failure was not injected"
            assert np.array_equal(self.stored(summary)["input"], reference["input"]), (
                f"{self.runner} after a {how!r} failure: samples lost, duplicated or half-written")
            text = "\n".join(logged)
            assert "restart 1 of 3" in text, f"{self.runner} did not report the {how!r} failure: {text!r}"
            expected = {"raise": "FloatingPointError('the solver diverged')",
                        "hang": f"hung: no answer within timeout={timeout:g}s"}.get(how, "")
            assert expected in text, f"{self.runner} reported a {how!r} failure as {text!r}"
            reasons[how] = text
        return reasons

    def gives_up(self) -> None:
        """An environment failing every time stops the run after ``max_restarts``, keeping what is stored."""
        from dpx.core.database import open_database
        from dpx.core.runners import WorkerError
        from dpx.testing_envs import Faulty

        try:
            self.generate(Faulty, env_kwargs={"how": "raise", "always": True}, batch_nb=20,
                          runner_kwargs={"max_restarts": 2})
        except WorkerError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{self.runner} went on with an environment that always fails")
        assert "FloatingPointError('the solver diverged')" in message and "in break_down" in message, message
        assert "max_restarts=2 reached" in message, message
        stored = open_database(self.directory / f"run{self._runs}")
        assert stored.count() % 50 == 0 and np.isfinite(stored.read()["input"]).all()

    def contract_errors(self) -> str:
        """An environment breaking its contract (a field of the wrong shape) stops the run with the
        error the in-process runner raises, instead of being restarted; returns the message."""
        from dpx.core.environment import FieldError
        from dpx.testing_envs import Misshapen

        messages = []
        for local in (True, False):
            try:
                self.generate(Misshapen, local=local, runner_kwargs={"max_restarts": 3})
            except FieldError as exc:
                messages.append(str(exc))
            else:
                raise AssertionError(f"{self.runner if not local else 'inprocess'} went on past a field of the wrong shape")
        expected = messages[0].partition(": ")[2]  # the in-process message, less the instance named first
        assert expected.split(" of sample")[0] in messages[1] and "has shape (4,)" in messages[1], messages
        return messages[1]

    def stuck_start(self, start_timeout: float = 10.0) -> str:
        """An environment stuck building its simulation stops the run after ``start_timeout``; returns the message."""
        from dpx.core.runners import WorkerError
        from dpx.testing_envs import Stuck

        try:
            self.generate(Stuck, runner_kwargs={"start_timeout": start_timeout, "max_restarts": 0})
        except WorkerError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{self.runner} produced samples from environments that never started")
        assert f"start_timeout={start_timeout:g}s" in message, message
        assert self.generate(batch_nb=1).total == 50, "the stuck environments were not released"
        return message

    def predictions(self) -> None:
        """``get_prediction`` inside ``step`` reaches the predictor, and ``apply`` hands predictions back."""
        from dpx.core.config import EnvironmentConfig
        from dpx.core.producer import resolve_seed
        from dpx.core.runners import WorkerError
        from dpx.plugins import load
        from dpx.testing_envs import Asking

        runner_class = load("runners", self.runner)
        config = EnvironmentConfig(Asking, runner=self.runner, workers=self.workers, seed=0,
                                   runner_kwargs={**self.runner_kwargs, "max_restarts": 0})
        asked = []

        def predictor(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            asked.append(inputs["input"].shape)
            return {"prediction": inputs["input"].mean(axis=0) * 2}

        with runner_class(config, resolve_seed(0)[1]) as runner:
            runner.connect(predictor)
            for step in range(3):
                ids = np.arange(self.workers * step, self.workers * (step + 1))
                batch = runner.produce(ids, pinned=True)
                runner.apply(batch["ground_truth"] * 2)  # Asking checks it gets back what it was told
        assert asked == [(5, 3)] * (3 * self.workers), asked
        with runner_class(config, resolve_seed(0)[1]) as runner:
            try:
                runner.produce(np.arange(self.workers))
            except WorkerError as exc:
                assert "needs a network" in str(exc), exc
            else:
                raise AssertionError(f"{self.runner}: get_prediction without a network did not fail")

    def _started(self, workers: int, runner: str | None = None, **env_kwargs: Any) -> Any:
        """A runner (this one, or ``runner``) of :class:`~dpx.testing_envs.Replaying` environments, not started."""
        from dpx.core.config import EnvironmentConfig
        from dpx.core.producer import resolve_seed
        from dpx.plugins import load
        from dpx.testing_envs import Replaying

        name = runner or self.runner
        options = {**self.runner_kwargs, "max_restarts": 0} if runner is None else {}
        config = EnvironmentConfig(Replaying, runner=name, workers=workers, seed=0, env_kwargs=env_kwargs,
                                   runner_kwargs=options)
        return load("runners", name)(config, resolve_seed(0)[1])

    def feeds(self) -> None:
        """``feed`` (``load_samples``) steps each environment on its rows of the stored samples, as in-process:
        the fields it sets replace the stored ones, the others are kept."""
        stored = {"input": np.arange(36, dtype=np.float32).reshape(12, 3), "ground_truth": np.zeros((12, 3), np.float32)}
        ids = np.arange(100, 112)
        batches = []
        for runner, workers in (("inprocess", 1), (None, self.workers)):
            with self._started(workers, runner, save=False) as started:
                batches.append({name: array.copy() for name, array in started.feed(stored, ids).items()})
                produced = started.produce(np.arange(4))  # feeding leaves producing as it was
                assert not produced["fed"].any(), f"{runner or self.runner}: a produced sample was marked fed"
        local, remote = batches
        assert sorted(remote) == sorted(local), (sorted(remote), sorted(local))
        for name, array in local.items():
            assert np.array_equal(remote[name], array), f"{self.runner}: fed field {name!r} differs from in-process"
        assert np.array_equal(remote["input"], stored["input"]), f"{self.runner}: the stored input was not kept"
        assert np.array_equal(remote["ground_truth"], 3 * stored["input"]), f"{self.runner}: the step's field was lost"
        assert remote["fed"].all(), f"{self.runner}: an environment did not see sample_training"

    def parameters(self) -> None:
        """Each environment loads its own stored parameters, pinned rows come from their environment, and
        what the environments save comes back by instance."""
        workers = self.workers
        scales = {instance: np.full(3, 5.0 + instance, np.float32) for instance in range(workers)}
        started = self._started(workers, scale=1.5)
        started.stored_parameters = {instance: {"scale": scale} for instance, scale in scales.items()}
        try:
            started.start()
            saved = started.saved_parameters
            assert sorted(saved) == list(range(workers)), f"{self.runner}: saved parameters of {sorted(saved)}"
            for instance in range(workers):
                assert saved[instance]["name"] == f"replaying {instance}", saved[instance]
                assert np.array_equal(saved[instance]["scale"], np.full(3, 1.5, np.float32)), saved[instance]
            produced = started.produce(np.arange(workers), pinned=True)
            fed = started.feed({"input": np.ones((workers, 3), np.float32)}, np.arange(workers), pinned=True)
            expected = [5.0 + instance for instance in range(workers)]
            for what, values in (("produced", produced), ("fed", fed)):
                assert values["loaded"][:, 0].tolist() == expected, (
                    f"{self.runner}: {what} rows loaded scales {values['loaded'][:, 0].tolist()}, expected {expected}")
        finally:
            started.close()

    def visuals(self) -> None:
        """Each environment's scene and every step's update reach the viewer, tagged with its instance."""
        from dpx.hookspecs import hookimpl
        from dpx.plugins import get_plugins
        from dpx.testing_envs import Moving, Recorder

        plugin = types.ModuleType("dpx_check_recorder")
        plugin.dpx_visualizers = hookimpl(lambda: {"recorder": "dpx.testing_envs:Recorder"})
        plugins = get_plugins()
        plugins.register(plugin, name="dpx-check-recorder", source="test")
        try:
            summary = self.generate(Moving, visualizer="recorder", batch_nb=2, batch_size=5)
        finally:
            plugins.unregister("dpx-check-recorder")
        viewer = Recorder.instances[-1]
        assert viewer.closed and set(viewer.scenes) == set(range(self.workers)), sorted(viewer.scenes)
        assert all(scene[0]["kind"] == "points" for scene in viewer.scenes.values())
        updated = {instance for instance, _ in viewer.updates}
        assert updated == set(range(self.workers)), f"{self.runner}: updates reached the viewer from environments {updated}"
        shown = sorted(np.ravel(updates[0]["positions"]).tobytes() for _, updates in viewer.updates)
        stored = sorted(np.ravel(sample).tobytes() for sample in self.stored(summary)["input"])
        assert shown == stored, "every stored sample must be shown once"


@contextlib.contextmanager
def _warnings() -> Iterator[list[str]]:
    """The warnings dpx logs meanwhile."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("dpx")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


try:
    import pytest
except ImportError:  # the kit's plain functions work without pytest
    pass
else:

    @pytest.fixture
    def dpx_plugin() -> Iterator[Any]:
        """Register plugins for one test: ``dpx_plugin(module_or_object, name="mine")``.

        They are registered in the process-wide plugin set (what pipelines and
        ``dpx.plugins.load`` use) and removed when the test ends.
        """
        from dpx.plugins import get_plugins

        plugins = get_plugins()
        registered: list[str] = []

        def register(plugin: Any, name: str = "test-plugin") -> Any:
            info = plugins.register(plugin, name=name, source="test")
            registered.append(name)
            return info

        yield register
        for name in registered:
            plugins.unregister(name)
