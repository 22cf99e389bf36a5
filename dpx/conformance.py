"""Conformance kits: what every component of a hook must do, checked in a plugin's own tests.

:mod:`dpx.plugins` checks a component's *shape* when it loads it (the methods
of :data:`dpx.hookspecs.CONTRACTS`); these kits check its *behaviour*, through
the same name a user would write, and raise ``AssertionError`` saying what is
wrong. They are importable from :mod:`dpx.testing`:

* :class:`StorageChecks` -- storage backends (round trip, commits, refusals, a killed writer);
* :class:`NetworkBackendChecks` -- network backends (training, seeding, normalisation, checkpoints);
* :func:`check_loss` and :func:`check_transform` -- losses and data transformations;
* :func:`check_stats_writer` -- stats writers (a resumed run appends);
* :func:`check_visualizer` -- visualizers;
* :func:`check_sampler` -- samplers (valid, repeatable, batch-independent, resumable);
* :class:`dpx.testing.RunnerChecks` and :func:`dpx.testing.check_environment`
  -- runners and environments.

A component registered only for one test (the ``dpx_plugin`` fixture) is seen
by every kit except :meth:`StorageChecks.survives_a_killed_writer`, which runs a
writer in another process: that one needs the plugin installed (or named in
``DPX_PLUGINS``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: The fields every storage check writes: a float vector, an integer scalar, a bool grid.
STORAGE_FIELDS = {"position": (np.dtype(np.float32), (3,)), "label": (np.dtype(np.int64), ()),
                  "mask": (np.dtype(bool), (2, 2))}


def _load(registry: str, name: str) -> Any:
    from dpx.plugins import get_plugins

    return get_plugins().load(registry, name)


def storage_batch(first: int, count: int) -> dict[str, np.ndarray]:
    """Samples ``first .. first + count - 1`` of :data:`STORAGE_FIELDS`: each value encodes its sample index."""
    ids = np.arange(first, first + count)
    return {
        "position": (ids[:, None] * np.array([1.0, 0.5, -2.0])).astype(np.float32),
        "label": ids.astype(np.int64),
        "mask": ((ids[:, None, None] + np.arange(4).reshape(2, 2)) % 3 == 0),
    }


class StorageChecks:
    """The storage backend ``name``, writing datasets under ``directory``.

    ``StorageChecks("hdf5", tmp_path).round_trip()``; :meth:`all` runs every check.
    ``options`` go to the constructor besides ``readonly`` and ``max_file_bytes``.
    """

    def __init__(self, name: str, directory: str | os.PathLike, **options: Any) -> None:
        self.name, self.directory, self.options = name, Path(directory), options
        self.cls = _load("storage_backends", name)
        self._count = 0

    def open(self, path: Path, readonly: bool, max_file_bytes: int = 1000) -> Any:
        """A small ``max_file_bytes``, so that the samples spread over several partitions."""
        return self.cls(path, readonly=readonly, max_file_bytes=max_file_bytes, **self.options)

    def fresh(self) -> Path:
        self._count += 1
        return self.directory / f"{self.name}-{self._count}"

    def round_trip(self) -> None:
        """What is appended and committed is read back exactly, by ``read`` and by ``reader``, after reopening too."""
        path = self.fresh()
        writer = self.open(path, readonly=False)
        writer.add_mode("training", STORAGE_FIELDS)
        for first in range(0, 100, 25):
            writer.append("training", storage_batch(first, 25))
        writer.commit(force=True, metadata={"note": "kept"})
        expected = storage_batch(0, 100)
        indices = np.array([97, 0, 13, 13, 50])
        for storage in (writer, self.open(path, readonly=True)):
            assert storage.modes == ["training"], f"{self.name}: modes {storage.modes}"
            assert storage.count("training") == 100, f"{self.name}: count {storage.count('training')}, 100 committed"
            assert storage.count("validation") == 0, f"{self.name}: count of a mode never written must be 0"
            layout = storage.layout("training")
            assert {field: (np.dtype(f.dtype), tuple(f.shape)) for field, f in layout.items()} == STORAGE_FIELDS, (
                f"{self.name}: layout {layout} differs from the declared fields")
            assert storage.metadata.get("note") == "kept", f"{self.name}: commit(metadata=...) was not kept"
            for field, (dtype, shape) in STORAGE_FIELDS.items():
                read = storage.read("training", field, indices)
                assert read.dtype == dtype and np.array_equal(read, expected[field][indices]), (
                    f"{self.name}: read('training', {field!r}, {indices.tolist()}) returned other samples")
                out = np.empty((len(indices), *shape), dtype)
                gathered = storage.reader("training", field)(indices, out)
                assert np.array_equal(gathered, expected[field][indices]), f"{self.name}: reader({field!r}) differs"
            storage.close()

    def commits(self) -> None:
        """Readers see appended samples only once committed, and ``refresh`` picks them up."""
        path = self.fresh()
        writer = self.open(path, readonly=False)
        writer.add_mode("training", STORAGE_FIELDS)
        writer.commit(force=True)
        reader = self.open(path, readonly=True)
        writer.append("training", storage_batch(0, 10))
        reader.refresh()
        assert reader.count("training") == 0, f"{self.name}: a reader saw samples that were not committed"
        writer.commit(force=True)
        assert reader.refresh() is True, f"{self.name}: refresh() after a commit must return True"
        assert reader.count("training") == 10, f"{self.name}: after commit and refresh a reader sees {reader.count('training')}"
        assert reader.refresh() is False, f"{self.name}: refresh() with nothing new must return False"
        writer.close()
        reader.close()

    def refuses(self) -> None:
        """What cannot be done raises ``StorageError`` (a one-line error for the user), not anything else."""
        from dpx.core.storage import StorageError

        def refused(what: str, action: Callable[[], Any]) -> None:
            try:
                action()
            except StorageError:
                return
            except Exception as exc:
                raise AssertionError(f"{self.name}: {what} raised {type(exc).__name__}: {exc}, not StorageError") from exc
            raise AssertionError(f"{self.name}: {what} was accepted")

        empty = self.fresh()
        empty.mkdir(parents=True)
        refused("opening a folder without a dataset read-only", lambda: self.open(empty, readonly=True))
        path = self.fresh()
        writer = self.open(path, readonly=False)
        writer.add_mode("training", STORAGE_FIELDS)
        writer.append("training", storage_batch(0, 4))
        writer.commit(force=True)
        refused("add_mode with other fields", lambda: writer.add_mode("training", {"position": (np.float64, (3,))}))
        refused("layout of an unknown mode", lambda: writer.layout("nope"))
        writer.close()
        reader = self.open(path, readonly=True)
        refused("append to a read-only dataset", lambda: reader.append("training", storage_batch(4, 1)))
        reader.close()

    def survives_a_killed_writer(self, timeout: float = 60.0) -> None:
        """A writer killed (SIGKILL) while appending leaves every committed sample readable and whole."""
        path = self.fresh()
        code = (
            "import sys\n"
            "from dpx.conformance import StorageChecks, STORAGE_FIELDS, storage_batch\n"
            f"checks = StorageChecks({self.name!r}, {str(self.directory)!r}, **{self.options!r})\n"
            f"writer = checks.open({str(path)!r}, readonly=False)\n"
            "writer.add_mode('training', STORAGE_FIELDS)\n"
            "first = 0\n"
            "while True:\n"
            "    writer.append('training', storage_batch(first, 7))\n"
            "    first += 7\n"
            "    if first % 21 == 0:\n"
            "        writer.commit(force=True)\n"
            "        print(first, flush=True)\n"
        )
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(3):  # three commits, then kill it in the middle of appending
                line = process.stdout.readline()
                assert line, f"{self.name}: the writer died: {process.communicate(timeout=timeout)[1]}"
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=timeout)
        storage = self.open(path, readonly=True)
        count = storage.count("training")
        assert count >= 63 and count % 21 == 0, f"{self.name}: {count} samples after the kill; committed were multiples of 21"
        expected = storage_batch(0, count)
        for field in STORAGE_FIELDS:
            assert np.array_equal(storage.read("training", field, np.arange(count)), expected[field]), (
                f"{self.name}: field {field!r} is damaged after the writer was killed")
        storage.close()
        writer = self.open(path, readonly=False)  # and a new writer goes on from there
        writer.add_mode("training", STORAGE_FIELDS)
        writer.append("training", storage_batch(count, 5))
        writer.commit(force=True)
        assert writer.count("training") == count + 5, f"{self.name}: a writer after the kill could not append"
        writer.close()

    def all(self) -> None:
        self.round_trip()
        self.commits()
        self.refuses()
        self.survives_a_killed_writer()


class NetworkBackendChecks:
    """The network backend ``name`` on a small regression: 4 inputs -> 2 targets.

    ``network_config`` is a :class:`~dpx.NetworkConfig` of that backend (its
    architecture names are the backend's); its ``backend`` is set to ``name``.
    """

    FIELDS = {"input": (np.dtype(np.float32), (4,)), "ground_truth": (np.dtype(np.float32), (2,))}

    def __init__(self, name: str, directory: str | os.PathLike, network_config: Any = None) -> None:
        import dataclasses

        from dpx.core.config import NetworkConfig

        self.name, self.directory = name, Path(directory)
        self.config = dataclasses.replace(network_config or NetworkConfig(), backend=name)
        self.cls = _load("network_backends", name)
        rng = np.random.default_rng(0)
        inputs = rng.normal(size=(64, 4)).astype(np.float32)
        self.batch = {"input": inputs, "ground_truth": (inputs @ rng.normal(size=(4, 2))).astype(np.float32)}

    def build(self, seed: int = 0, normalization: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Any:
        return self.cls(self.config, dict(self.FIELDS), dict(normalization or {}), seed=seed)

    def predictions(self, backend: Any) -> np.ndarray:
        predicted = backend.predict({"input": self.batch["input"]})
        assert set(predicted) == {"ground_truth"}, f"{self.name}: predict returned fields {sorted(predicted)}"
        array = np.asarray(predicted["ground_truth"])
        assert array.shape == (64, 2) and np.isfinite(array).all(), f"{self.name}: predictions of shape {array.shape}"
        return array

    def trains(self, steps: int = 100) -> None:
        """``train_batch`` returns a finite float loss, and training lowers the validation loss."""
        backend = self.build()
        before = backend.validation_loss(self.batch)
        for _ in range(steps):
            losses = backend.train_batch(self.batch)
            assert isinstance(losses, dict) and isinstance(losses.get("loss"), float), (
                f"{self.name}: train_batch must return {{'loss': float, ...}}, not {losses!r}")
        after = backend.validation_loss(self.batch)
        assert isinstance(after, float) and math.isfinite(after), f"{self.name}: validation_loss returned {after!r}"
        assert after < before, f"{self.name}: {steps} training steps did not lower the loss ({before} -> {after})"

    def is_seeded(self) -> None:
        """The same seed builds the same network."""
        first, second = (self.predictions(self.build(seed=7)) for _ in range(2))
        assert np.array_equal(first, second), f"{self.name}: two networks built with seed=7 predict differently"

    def normalizes(self) -> None:
        """Predictions come back de-normalised: with target statistics (mean, std), ``raw * std + mean``."""
        mean, std = np.array([10.0, -3.0]), np.array([2.0, 0.5])
        raw = self.predictions(self.build(seed=3))
        scaled = self.predictions(self.build(seed=3, normalization={"ground_truth": (mean, std)}))
        assert np.allclose(scaled, raw * std + mean, rtol=1e-4, atol=1e-4), (
            f"{self.name}: predictions are not de-normalised with the target's (mean, std)")

    def checkpoints(self) -> None:
        """``save`` then ``load`` into a network built from another seed predicts the same; ``extra`` comes back."""
        trained = self.build(seed=1)
        for _ in range(5):
            trained.train_batch(self.batch)
        path = self.directory / f"{self.name}-checkpoint"
        extra = {"epoch": 3, "note": "kept", "nested": {"values": [1.5, 2.5]}}
        trained.save(path, extra)
        assert type(trained).read_extra(path) == extra, f"{self.name}: read_extra does not return the saved extra"
        loaded = self.build(seed=2)
        assert loaded.load(path, training=True) == extra, f"{self.name}: load does not return the saved extra"
        assert np.allclose(self.predictions(loaded), self.predictions(trained)), (
            f"{self.name}: a loaded network predicts differently from the saved one")

    def reports(self) -> None:
        """``learning_rate``, ``nb_parameters`` and ``parameter_histograms`` for the stats."""
        backend = self.build()
        backend.train_batch(self.batch)
        assert isinstance(backend.learning_rate, float) and backend.learning_rate > 0, backend.learning_rate
        assert isinstance(backend.nb_parameters, int) and backend.nb_parameters > 0, backend.nb_parameters
        histograms = backend.parameter_histograms()
        assert histograms and all(isinstance(tag, str) for tag in histograms), (
            f"{self.name}: parameter_histograms() must return {{tag: array}}")
        assert all(np.asarray(values).size for values in histograms.values())

    def all(self) -> None:
        self.trains()
        self.is_seeded()
        self.normalizes()
        self.checkpoints()
        self.reports()


def check_loss(name: str, tensor: Callable[[np.ndarray], Any], loss_kwargs: Mapping[str, Any] | None = None) -> None:
    """The loss ``name`` built with ``loss_kwargs``: a finite scalar, 0 on a perfect prediction, positive otherwise.

    ``tensor`` turns a NumPy array into the backend's tensor (``torch.as_tensor`` for torch).
    """
    cls = _load("losses", name)
    loss = cls(**dict(loss_kwargs or {}))
    rng = np.random.default_rng(0)
    target = rng.normal(size=(8, 3)).astype(np.float32)
    prediction = target + rng.normal(size=(8, 3)).astype(np.float32)
    perfect, wrong = loss(tensor(target), tensor(target)), loss(tensor(prediction), tensor(target))
    for value in (perfect, wrong):
        assert np.shape(value) == (), f"loss {name!r} must return a scalar, got shape {np.shape(value)}"
        assert math.isfinite(float(value)), f"loss {name!r} returned {float(value)}"
    assert abs(float(perfect)) < 1e-6, f"loss {name!r} of a perfect prediction is {float(perfect)}, not 0"
    assert float(wrong) > 0, f"loss {name!r} of a wrong prediction is {float(wrong)}"


def check_transform(name: str, tensor: Callable[[np.ndarray], Any], network_config: Any = None) -> None:
    """The transform ``name`` keeps the batch at its three points and gives a pair before the loss."""
    from dpx.core.config import NetworkConfig

    transform = _load("transforms", name)(network_config or NetworkConfig(data_transformation=name))
    inputs, prediction, truth = (tensor(np.ones((5, *shape), np.float32)) for shape in ((4,), (2,), (2,)))
    transformed = transform.transform_before_prediction(inputs)
    assert np.shape(transformed)[0] == 5, f"transform {name!r}: transform_before_prediction lost the batch"
    for ground_truth in (truth, None):
        pair = transform.transform_before_loss(prediction, ground_truth)
        assert isinstance(pair, tuple) and len(pair) == 2, (
            f"transform {name!r}: transform_before_loss must return (prediction, ground_truth), not {type(pair).__name__}")
        assert np.shape(pair[0])[0] == 5 and (ground_truth is None or np.shape(pair[1])[0] == 5)
    applied = transform.transform_before_apply(prediction)
    assert np.shape(applied)[0] == 5, f"transform {name!r}: transform_before_apply lost the batch"


def check_stats_writer(name: str, directory: str | os.PathLike,
                       read_back: Callable[[Path], dict[str, list[tuple[int, float]]]] | None = None) -> Path:
    """Two runs of the writer ``name`` into ``directory/stats`` (the second resumes the first); returns that folder.

    Every value is written, including histograms holding NaN; nothing is written
    outside the stats folder; ``read_back(stats_dir) -> {tag: [(step, value)]}``,
    when given, must find every scalar of both runs.
    """
    cls = _load("stats_writers", name)
    directory = Path(directory)
    stats_dir = directory / "stats"
    before = set(directory.iterdir()) if directory.exists() else set()
    written: dict[str, list[tuple[int, float]]] = {}
    for run in range(2):
        writer = cls(stats_dir)
        for step in range(run * 5, run * 5 + 5):
            for tag, value in (("loss/batch", 1.0 / (step + 1)), ("learning_rate", 1e-3)):
                writer.scalar(tag, value, step)
                written.setdefault(tag, []).append((step, value))
            writer.histogram("weights/layer", np.array([0.5, -1.0, np.nan, np.inf, 2.0]), step)
        getattr(writer, "flush", lambda: None)()
        writer.close()
    after = set(directory.iterdir())
    assert after - before <= {stats_dir}, f"stats writer {name!r} wrote outside the stats folder: {sorted(after - before)}"
    files = [path for path in stats_dir.rglob("*") if path.is_file()]
    assert any(path.stat().st_size for path in files), f"stats writer {name!r} wrote nothing in {stats_dir}"
    if read_back is not None:
        curves = read_back(stats_dir)
        for tag, points in written.items():
            got = sorted(curves.get(tag, []))
            assert [step for step, _ in got] == [step for step, _ in points], (
                f"stats writer {name!r}: tag {tag!r} has steps {[s for s, _ in got]} after two runs")
            assert np.allclose([v for _, v in got], [v for _, v in points], rtol=1e-6), (
                f"stats writer {name!r}: tag {tag!r} values differ")
    return stats_dir


def check_visualizer(name: str, visualizer_kwargs: Mapping[str, Any] | None = None, instances: int = 2,
                     steps: int = 5) -> Any:
    """Feed the visualizer ``name`` the scenes and updates of ``instances`` environments, then close it.

    Returns the visualizer, for checks of what it drew. Updates of an object
    an environment never declared must not raise (a warning is fine).
    """
    from dpx.core.visual import VisualFactory

    viewer = _load("visualizers", name)(**dict(visualizer_kwargs or {}))
    try:
        factories = {}
        for instance in range(instances):
            factory = VisualFactory()
            factories[instance] = (factory, factory.add_points(np.zeros((4, 3)), color="tomato"))
            factory.add_text(f"environment {instance}")
            viewer.add_scene(instance, factory.scene())
        rng = np.random.default_rng(0)
        for _ in range(steps):
            for instance, (factory, points) in factories.items():
                factory.update(points, positions=rng.random((4, 3)))
                viewer.update(instance, factory.take_updates())
        try:
            viewer.update(0, {999: {"positions": np.zeros((1, 3))}})
        except Exception as exc:
            raise AssertionError(f"visualizer {name!r} raised {exc!r} on an update of an object it was never shown; "
                                 "ignore it (a warning is fine): a simulation must not stop for its viewer") from exc
    finally:
        viewer.close()
    return viewer


def sampler_space() -> Any:
    """The space :func:`check_sampler` samples: a linear, a log-scale and an integer parameter."""
    from dpx.core.space import Parameter, ParameterSpace

    return ParameterSpace([Parameter("length", -1.0, 2.0), Parameter("stiffness", 1e-2, 1e3, scale="log"),
                           Parameter("count", 1, 6, integer=True)])


def check_sampler(name: str, sampler_kwargs: Mapping[str, Any] | None = None, *, size: int = 64,
                  seeded: bool = True) -> None:
    """The sampler ``name``: checked vectors inside the space, the same for the same seed whatever
    ``n`` they are asked in, and a JSON state that a new sampler restores to continue the sequence
    (also from ``{"position": k}`` alone, as dpx resumes a run). ``seeded``: another seed gives
    other vectors (False for a design that ignores its seed, such as a grid)."""
    import json

    from dpx.core.space import ParameterError

    cls = _load("samplers", name)
    space = sampler_space()
    kwargs = dict(sampler_kwargs or {})

    def build(seed: int) -> Any:
        return cls(space, seed=seed, size=size, **kwargs)

    def ask(sampler: Any, n: int) -> np.ndarray:
        try:
            return space.as_values(sampler.ask(n), n, who=f"sampler {name!r}")
        except ParameterError as exc:
            raise AssertionError(str(exc)) from exc

    whole = ask(build(5), 12)
    assert len(np.unique(whole, axis=0)) > 1, f"sampler {name!r} proposed the same vector 12 times"
    assert np.array_equal(ask(build(5), 12), whole), f"sampler {name!r}: two samplers with seed=5 differ"
    pieces = build(5)
    pieced = np.concatenate([ask(pieces, 1), ask(pieces, 4), ask(pieces, 7)])
    assert np.array_equal(pieced, whole), (
        f"sampler {name!r}: asking 1, 4 then 7 vectors gives others than asking 12 at once; "
        "a dataset would depend on its batch size")
    if seeded:
        assert not np.array_equal(ask(build(6), 12), whole), f"sampler {name!r}: seed=6 gives the vectors of seed=5"
    walked = build(5)
    ask(walked, 5)
    state = walked.state()
    assert isinstance(state, dict), f"sampler {name!r}: state() must return a dict, not {type(state).__name__}"
    try:
        state = json.loads(json.dumps(state))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"sampler {name!r}: state() {state!r} is not JSON: {exc}") from exc
    restored = build(5)
    restored.restore(state)
    assert np.array_equal(ask(restored, 7), whole[5:]), f"sampler {name!r}: a restored state does not continue the sequence"
    resumed = build(5)
    resumed.restore({"position": 5})
    assert np.array_equal(ask(resumed, 7), whole[5:]), (
        f"sampler {name!r}: restore({{'position': 5}}) does not continue at vector 5, as dpx resumes a run")
    told = build(5)
    told.tell(whole[:4], np.array([0.1, 2.0, 0.0, 1.0]))
    ask(told, 3)
