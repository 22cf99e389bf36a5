"""Every hook a dpx plugin can implement.

This is the one file a plugin author needs to read. A plugin is a module that
defines functions named after the hooks below, decorated with ``dpx.hookimpl``,
and is registered by an entry point in the ``dpx`` group of its distribution::

    # pyproject.toml of the plugin distribution
    [project.entry-points.dpx]
    pendulum = "dpx_pendulum"

    # dpx_pendulum/__init__.py  -- keep it light: no torch, vedo or ray here
    import dpx

    @dpx.hookimpl
    def dpx_environments():
        return {
            "pendulum.simple": dpx.Component(
                "dpx_pendulum.env:Pendulum", "A damped pendulum: angle -> next angle"
            ),
        }

Installing the distribution is the only registration step; ``python -m dpx
plugins`` then lists it.

Registry hooks
--------------
The first hooks below are *registries*: each takes no argument and returns a mapping
``{name: component}`` where a component is either an import path
``"package.module:Attribute"`` or a :class:`dpx.Component` carrying that path and
a one-line summary. dpx imports the path only when a pipeline actually uses the
name, so listing plugins stays fast even when a plugin wraps PyTorch or Ray.

Names are dotted by convention (``toy.mean``, ``sofa.beam``) so that a plugin's
offers group together. If two plugins offer the same name, using the bare name
is an error that names both; a user picks one as ``plugin:name``.

Each hook documents the complete contract of what the imported object must be,
and :data:`CONTRACTS` lists what dpx checks when it loads the object (not when
it lists it): a component breaking its contract is a one-line
:class:`dpx.plugins.PluginError` naming the plugin and what is missing. The
conformance kits of :mod:`dpx.testing` check the rest (behaviour) in your tests.

Lifecycle hooks
---------------
The second kind (see the block at the end of this file): events of a run that
every installed plugin implementing them receives, as pytest and kedro plugins
do. They let a plugin *take part* in a run (log it, stop it early, copy its
checkpoints) with no registration step but ``pip install``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

PROJECT = "dpx"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate a plugin's hook implementations with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Registry hook name -> the word used for it in listings, configs and errors.
REGISTRY_KINDS: dict[str, str] = {
    "dpx_environments": "environment",
    "dpx_network_backends": "network backend",
    "dpx_losses": "loss",
    "dpx_transforms": "transform",
    "dpx_storage_backends": "storage backend",
    "dpx_runners": "runner",
    "dpx_visualizers": "visualizer",
    "dpx_stats_writers": "stats writer",
    "dpx_exporters": "exporter",
    "dpx_importers": "importer",
    "dpx_samplers": "sampler",
}


@dataclass(frozen=True)
class Contract:
    """What dpx checks of a registry's component when it loads it.

    The component must be a class (a subclass of ``base`` when given, an import
    path) defining ``methods``; ``optional`` methods are used when present.
    """

    summary: str
    methods: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    base: str | None = None


#: Registry hook name -> the contract of its components (documented in each hook below).
CONTRACTS: dict[str, Contract] = {
    "dpx_environments": Contract("a subclass of dpx.Environment", base="dpx.core.environment:Environment"),
    "dpx_network_backends": Contract(
        "a class built as cls(config, fields, normalization, seed)",
        methods=("train_batch", "validation_loss", "predict", "save", "load", "read_extra", "parameter_histograms"),
        optional=("check", "find_checkpoint", "predict_with_dropout"),
    ),
    "dpx_losses": Contract("a class built as cls(**loss_kwargs) whose instances are called as loss(prediction, target)",
                           methods=("__call__",)),
    "dpx_transforms": Contract(
        "a class built as cls(config)",
        methods=("transform_before_prediction", "transform_before_loss", "transform_before_apply"),
    ),
    "dpx_storage_backends": Contract(
        "a class built as cls(path, readonly=..., max_file_bytes=...)",
        methods=("layout", "count", "add_mode", "append", "commit", "read", "reader", "refresh", "close"),
    ),
    "dpx_runners": Contract(
        "a class built as cls(config, key, on_wrong_sample, optional_fields)",
        methods=("start", "produce", "apply", "connect", "close", "__enter__", "__exit__"),
    ),
    "dpx_visualizers": Contract("a class built as cls(**visualizer_kwargs)", methods=("add_scene", "update", "close")),
    "dpx_stats_writers": Contract("a class built as cls(stats_dir)", methods=("scalar", "histogram", "close"),
                                  optional=("flush",)),
    "dpx_exporters": Contract("a class built as cls(**exporter_kwargs)", methods=("export",)),
    "dpx_importers": Contract("a class built as cls()", methods=("import_session",)),
    "dpx_samplers": Contract("a class built as cls(space, seed=..., size=..., **sampler_kwargs)",
                             methods=("ask", "tell", "state", "restore")),
}


@hookspec
def dpx_environments():
    """Simulators that produce samples, for ``EnvironmentConfig("name")``.

    Each component is a subclass of :class:`dpx.Environment`. dpx builds it as
    ``cls(**env_kwargs)`` (the :class:`~dpx.EnvironmentConfig`'s), then calls
    ``create``, ``init``, ``init_database`` (which declares the fields with
    ``define_training_fields``) and, when a viewer is configured,
    ``init_visualization``; then ``step`` once per sample, drawing randomness
    from ``self.rng`` (seeded per sample) and ending with ``set_training_data``;
    ``check_sample`` may refuse a sample, ``apply_prediction`` receives the
    network's answer in prediction, ``close`` ends it. Check one with
    :func:`dpx.testing.check_environment`.

    Example::

        @dpx.hookimpl
        def dpx_environments():
            return {"toy.mean": "dpx_toy.mean:MeanEnvironment"}
    """


@hookspec
def dpx_network_backends():
    """AI framework adapters (e.g. ``torch``), for ``NetworkConfig(backend=...)``.

    The core never imports an AI framework; it talks to the backend through
    NumPy arrays. Each component is a class (see :mod:`dpx.core.network`):

    * ``cls(config, fields, normalization, seed=None)`` builds the network of
      ``config`` (a :class:`~dpx.NetworkConfig`) for ``fields`` (``{name:
      (dtype, shape)}``) and, when ``config.require_training_stuff``, its loss
      and optimiser; ``normalization`` is ``{field: (mean, std)}`` to apply on
      the way in and undo on the way out; ``seed`` makes the initial weights
      reproducible; a mismatch between network and fields raises
      :class:`dpx.ConfigError` naming the field and both shapes;
    * ``train_batch(batch) -> {"loss": float, ...}``: one optimisation step on
      ``{field: array}``; extra entries are logged; a non-finite loss raises
      :class:`dpx.core.training.NonFiniteLossError` before the step is applied;
    * ``validation_loss(batch) -> float``;
    * ``predict(inputs) -> {target field: array}``, de-normalised;
    * ``predict_with_dropout(inputs, passes, seed=None)`` (optional): ``passes``
      predictions with the network's dropout on, stacked on a first axis (for
      active learning's ``scoring="mc_dropout"``);
    * ``save(path, extra)`` writes a checkpoint (weights, optimiser state and
      the JSON-able ``extra``) atomically; ``load(path, training) -> extra``
      reads one without running arbitrary code; the classmethod
      ``read_extra(path) -> extra`` reads ``extra`` without building a network;
    * ``learning_rate`` (float, or None without optimiser), ``nb_parameters``
      (int) and ``parameter_histograms() -> {tag: array}``.

    Check one with :class:`dpx.testing.NetworkBackendChecks`.

    Example::

        @dpx.hookimpl
        def dpx_network_backends():
            return {"torch": dpx.Component("dpx_torch.backend:TorchBackend", "PyTorch")}
    """


@hookspec
def dpx_exporters():
    """File formats a trained network leaves Python in, for ``dpx export --format NAME``.

    Each component is a class built as ``cls(**exporter_kwargs)``, with:

    * ``backends`` (optional): the network backends whose networks it exports
      (``("torch",)``); dpx refuses the others before loading anything;
    * ``export(network, folder, metadata) -> list[Path]``: write the files of
      ``network`` (a loaded network backend, as ``Prediction`` runs it) into
      ``folder`` (empty, created by dpx; renamed to its final name only when
      ``export`` returns, so a failure leaves nothing behind) and return them.
      The files map raw inputs, as the environment sets them, to
      de-normalised outputs: the backend's normalisation and transformations
      are folded in. ``metadata`` (JSON-able: field names, shapes and dtypes,
      versions, the source session) goes into the files themselves, so they
      are usable without dpx; an exporter adds the versions of the libraries
      that wrote them. A network the format cannot express raises
      :class:`dpx.core.export.ExportError` saying which operation failed and why.

    Example::

        @dpx.hookimpl
        def dpx_exporters():
            return {"onnx": dpx.Component("dpx_torch.export:OnnxExporter", "ONNX, through torch.onnx")}
    """


@hookspec
def dpx_importers():
    """Sessions made by other tools, converted into dpx sessions by ``python -m dpx import NAME PATH``.

    Each component is a class built as ``cls()``, with:

    * ``import_session(path, out=None, dataset=None) -> report``: convert the
      session (or dataset) folder ``path`` into a new dpx session ``out``
      (default ``sessions/<its name>``; an existing folder is never
      overwritten: ``NAME_1``, ``NAME_2``...) and return a report, whose
      ``str()`` the command prints: the session made and everything that
      could not be converted (listed, never dropped). ``dataset`` is a dataset
      the user names for a session that refers to one elsewhere (an importer
      follows such a reference only to a dataset named); a format without
      such references refuses it.

    The files are untrusted input: reading them runs no code from them. A
    folder that cannot be converted raises ``ValueError`` or ``OSError``
    naming the file and what is wrong (dpx reports it as one line) and leaves
    no half-written session behind.

    Example::

        @dpx.hookimpl
        def dpx_importers():
            return {"deepphysx": dpx.Component("dpx_deepphysx.importer:DeepPhysXImporter", "DeepPhysX 22.12 sessions")}
    """


@hookspec
def dpx_losses():
    """Named losses, for ``NetworkConfig(loss="name", loss_kwargs={...})``.

    Each component is a class of the network backend that declares it (a
    ``torch.nn.Module`` class for the torch backend), built as
    ``cls(**loss_kwargs)``; the instance is called as ``loss(prediction,
    target)`` on a batch of the backend's tensors and returns a scalar tensor,
    zero when both are equal. A plain function is refused: wrap it in a class.
    Check one with :func:`dpx.testing.check_loss`.

    Example::

        @dpx.hookimpl
        def dpx_losses():
            return {"relative_l2": "my_plugin.losses:RelativeL2"}
    """


@hookspec
def dpx_transforms():
    """Named data transformations, for ``NetworkConfig(data_transformation="name")``.

    Each component is a class built as ``cls(config)`` (the
    :class:`~dpx.NetworkConfig`) acting on the backend's tensors at three points:

    * ``transform_before_prediction(input) -> input`` of the network;
    * ``transform_before_loss(prediction, ground_truth) -> (prediction,
      ground_truth)``, a pair (``ground_truth`` may be None);
    * ``transform_before_apply(prediction) -> prediction`` handed to the
      environment, with the target field's shape.

    Check one with :func:`dpx.testing.check_transform`.

    Example::

        @dpx.hookimpl
        def dpx_transforms():
            return {"flatten": "my_plugin.transforms:Flatten"}
    """


@hookspec
def dpx_storage_backends():
    """Dataset storage engines, for ``DatabaseConfig(storage=...)``.

    Each component is a class storing samples field by field on disk. The core
    ships ``memmap`` (:class:`dpx.core.storage.MemmapStorage`, fixed-size
    memory-mapped NumPy partitions, crash-safe); plugins may add export formats
    such as HDF5 or zarr. The class follows it:

    * ``cls(path, *, readonly, max_file_bytes)`` opens the dataset in folder
      ``path``, or creates it when not ``readonly``; opening a folder holding
      no dataset read-only raises :class:`dpx.core.storage.StorageError`;
    * ``modes`` (list of mode names), ``count(mode) -> int`` (committed
      samples, 0 for an unknown mode), ``layout(mode) -> {field: layout}``
      where each layout has ``dtype`` (a ``numpy.dtype``) and ``shape`` (a
      tuple of one sample), and ``metadata``, a JSON dict kept with the data;
    * ``add_mode(mode, {field: (dtype, shape)})`` declares a mode, or checks it
      matches the stored one; ``append(mode, {field: array})`` adds samples
      and ``commit(force=False, metadata=None) -> bool`` publishes them (and
      merges ``metadata``): readers see appended samples only once committed,
      and a writer killed at any point leaves only whole committed samples;
    * ``read(mode, field, indices, out=None) -> array``, ``reader(mode,
      field)`` (a fast ``(indices, out) -> out`` gather) and ``refresh() ->
      bool`` (re-read what a writer committed since; True when it changed);
    * ``close()`` commits and releases files.

    Anything refused (a read-only dataset written to, an unknown mode, fields
    that do not match, a damaged file) raises ``StorageError`` (or its
    subclass ``CorruptDatasetError``) with a message naming the dataset and
    what is wrong: dpx reports those as one line, not a traceback. Check one
    with :class:`dpx.testing.StorageChecks`.

    Example::

        @dpx.hookimpl
        def dpx_storage_backends():
            return {"hdf5": "dpx_hdf5.storage:HDF5Storage"}
    """


@hookspec
def dpx_runners():
    """Ways to run environments, for ``EnvironmentConfig(runner=...)``.

    The core ships ``inprocess`` (environments in the pipeline's own process)
    and ``multiprocess``. Each component is a class, best a subclass of
    :class:`dpx.core.runners.Runner` (or of :class:`~dpx.core.runners.RemoteRunner`
    for remote workers, which brings chunking and restarts), built as ``cls(config, key, on_wrong_sample=None,
    optional_fields=frozenset())``: ``start() -> {field: Field}``,
    ``produce(sample_ids, stream=0, pinned=False) -> {field: array}``,
    ``apply(predictions)``, ``connect(predictor)``, ``stats``, ``fields``,
    ``close()`` and use as a context manager. For ``load_samples``,
    ``feed(stored, sample_ids, stream=0, pinned=False)`` is ``produce`` with
    each environment stepping on its rows of ``stored``; for saved parameters,
    a ``stored_parameters`` attribute (set before ``start``) is handed to the
    environments, and ``saved_parameters`` (``{instance: {name: value}}``)
    holds what they saved once started (see :mod:`dpx.core.parameters`).
    Check one with :class:`dpx.testing.RunnerChecks` (``.feeds()``,
    ``.parameters()`` among its checks).

    Example::

        @dpx.hookimpl
        def dpx_runners():
            return {"ray": dpx.Component("dpx_ray.runner:RayRunner", "Ray actors")}
    """


@hookspec
def dpx_visualizers():
    """Viewers fed by the environments' visual objects, for
    ``EnvironmentConfig(visualizer="name", visualizer_kwargs={...})``.

    Each component is a class built as ``cls(**visualizer_kwargs)``:

    * ``add_scene(instance_id, {object_id: object})`` shows an environment's
      objects (dicts made by :class:`dpx.core.visual.VisualFactory`);
    * ``update(instance_id, {object_id: {key: value}})`` changes some of them,
      and must not slow the simulation down (drop frames rather than wait);
    * ``close()`` ends the viewer.

    Check one with :func:`dpx.testing.check_visualizer`.

    Example::

        @dpx.hookimpl
        def dpx_visualizers():
            return {"vedo": "dpx_vedo.viewer:VedoVisualizer"}
    """


@hookspec
def dpx_stats_writers():
    """Sinks for training curves, for ``Training(stats=[...])``.

    The core ships ``csv`` (:class:`dpx.core.stats.CsvStatsWriter`). Each
    component is a class built as ``cls(stats_dir)`` (the session's ``stats/``
    folder, a :class:`pathlib.Path`, possibly holding a previous run's files:
    append, do not overwrite):

    * ``scalar(tag, value, step)`` stores a finite float (tags such as
      ``loss/batch``, ``loss/epoch``, ``learning_rate``);
    * ``histogram(tag, values, step)`` stores an array's distribution (it may
      hold non-finite values; a writer may ignore histograms altogether);
    * ``flush()``, optional, is called at the end of every epoch;
    * ``close()`` ends the run.

    Check one with :func:`dpx.testing.check_stats_writer`.

    Stats writers stay a registry beside the lifecycle hooks: a run picks its
    writers by name (``stats=["csv", "tensorboard"]``), they receive histograms,
    and ``drop_after`` keeps a resumed training's curves exact. A sink that
    should follow every run of every pipeline, whatever the config says, is a
    lifecycle plugin instead (as dpx-mlflow is).

    Example::

        @dpx.hookimpl
        def dpx_stats_writers():
            return {"tensorboard": "dpx_tensorboard.writer:TensorBoardWriter"}
    """



# -- parameter samplers ------------------------------------------------------------------------


@hookspec
def dpx_samplers():
    """Which parameter vectors the simulations run, for ``DataGeneration(sampler="name",
    sampler_kwargs={...})`` and active learning's initial design and candidate pools.

    Only environments that declare parameters (``define_parameters``) are
    sampled. The core ships ``random`` (per sample id, like ``Environment.rng``),
    ``lhs``, ``sobol``, ``halton`` and ``grid`` (:mod:`dpx.core.sampling`). Each
    component is a class built as ``cls(space, seed=..., size=..., **sampler_kwargs)``
    (``space`` a :class:`dpx.core.space.ParameterSpace`, ``size`` the number
    of samples the run makes, or None):

    * ``ask(n)`` returns the next ``n`` parameter vectors: an ``(n, d)`` array
      of values in the space's column order, or ``{name: (n,) values}``; dpx
      refuses unknown names, values outside the bounds, non-integers for
      integer parameters;
    * ``tell(parameters, scores)`` feeds back scores (higher: more useful to
      simulate) of ``(m, d)`` parameter vectors; a fixed design ignores it;
    * ``state() -> dict`` (JSON) and ``restore(state)`` carry its position;
      dpx records the state in ``session.json`` and, resuming, restores it
      with ``"position"`` set to the number of samples already stored.

    The same seed and position must give the same vectors whatever ``n``
    the points are asked in (so batch size and worker count never change a
    dataset). Check one with :func:`dpx.testing.check_sampler`.

    Example::

        @dpx.hookimpl
        def dpx_samplers():
            return {"sobol": dpx.Component("dpx.core.sampling:SobolSampler", "scrambled Sobol' sequence")}
    """


# ---------------------------------------------------------------------------------------------
# Lifecycle hooks: events of a run, received by every installed plugin that implements them.
# ---------------------------------------------------------------------------------------------
#
# The pipelines call them; a plugin implements any of them with ``@dpx.hookimpl``, may order
# itself with ``@dpx.hookimpl(tryfirst=True)`` / ``trylast=True``, or wrap the others with
# ``@dpx.hookimpl(wrapper=True)`` (pluggy's options). Every installed plugin joins every run
# (the pytest convention) unless ``DPX_DISABLE_PLUGINS`` or the pipeline's ``disable_plugins``
# names it; ``session.json`` records which plugins joined, with their versions.
#
# Growing without breaking plugins: an implementation may take any subset of a spec's
# arguments, in any order, so a new argument breaks no existing plugin. To retire one, keep it
# and add it to the spec's ``warn_on_impl_args`` for a release; implementations still taking it
# then get a DeprecationWarning when they are registered::
#
#     @hookspec(warn_on_impl_args={"values": deprecated_argument("values", "metrics")})
#     def dpx_training_step_end(run, epoch, step, loss, values, metrics): ...
#
# Hooks called per step cost nothing when no plugin implements them: the pipelines check once
# per run which hooks have implementations (see dpx.core.lifecycle).

#: The plugin API this dpx implements. A plugin declares the one it was written for with a
#: module-level ``DPX_PLUGIN_API = 1``; one written for another API is an error row of
#: ``python -m dpx plugins`` instead of failing in the middle of a run. Omitting it means the
#: current API. The number changes only when a hook changes incompatibly (an argument removed
#: after its deprecation, a return value that means something else).
PLUGIN_API = 1
#: The plugin APIs this dpx still runs (older ones stay here during their deprecation period).
SUPPORTED_PLUGIN_APIS = frozenset({1})

#: Lifecycle hook name -> when the pipelines call it (for listings).
LIFECYCLE_HOOKS: dict[str, str] = {
    "dpx_run_start": "a run starts",
    "dpx_run_end": "a run ends",
    "dpx_batch_stored": "a generated batch is handed to storage",
    "dpx_training_step_end": "an optimisation step ends",
    "dpx_epoch_end": "a training epoch ends",
    "dpx_checkpoint_saved": "a network is saved",
    "dpx_prediction_step_end": "a prediction step ends",
}


def deprecated_argument(name: str, instead: str | None = None) -> DeprecationWarning:
    """The warning of a hook argument on its way out, for a spec's ``warn_on_impl_args``."""
    hint = f"; take {instead!r} instead" if instead else ""
    return DeprecationWarning(f"the dpx hook argument {name!r} is deprecated and will be removed{hint}")


@hookspec
def dpx_run_start(run):
    """A pipeline run starts: its session exists and ``session.json`` records it.

    ``run`` is a :class:`dpx.core.lifecycle.RunInfo`: ``pipeline``
    (``"DataGeneration"``, ``"Training"`` or ``"Prediction"``), ``run_id`` (unique,
    also in ``session.json``), ``session_path``, ``configs`` (the configs as
    ``session.json`` records them), ``seed``, ``plugins`` (the lifecycle plugins
    that joined, with their versions) and ``state``, a dict where plugins keep
    what they need until the run ends (under their own name). The same object
    is passed to every hook of the run. Raising here stops the run before its
    first sample or step.

    Example::

        @dpx.hookimpl
        def dpx_run_start(run):
            print(f"{run.pipeline} {run.run_id} in {run.session_path}")
    """


@hookspec
def dpx_run_end(run, outcome, summary, error):
    """A run ended: ``outcome`` is what ``session.json`` records (``"completed"``,
    ``"interrupted"`` or ``"failed: ..."``), ``summary`` the pipeline's summary
    (None when it failed) and ``error`` the exception that ended it (or None).

    Called whenever :func:`dpx_run_start` was, after the pipeline released its
    environments and files.

    Example::

        @dpx.hookimpl
        def dpx_run_end(run, outcome):
            notify(f"{run.pipeline} in {run.session_path}: {outcome}")
    """


@hookspec
def dpx_batch_stored(run, mode, sample_ids, batch):
    """DataGeneration handed a batch to storage: ``sample_ids`` (a NumPy array)
    of ``mode`` (``"training"``, ``"validation"``...), ``batch`` ``{field: array}``.

    The arrays are the runner's buffers, valid only during the call: copy what
    you keep. Samples are written in the background and committed by the end of
    the run.

    Example::

        @dpx.hookimpl
        def dpx_batch_stored(mode, sample_ids):
            print(f"{mode}: samples {sample_ids[0]}..{sample_ids[-1]}")
    """


@hookspec
def dpx_training_step_end(run, epoch, step, loss, values):
    """Training made optimisation step ``step`` (counted from 1 over the
    session) in ``epoch``, with batch loss ``loss``; ``values`` are what the
    stats writers log for it (``{"loss/batch": ..., "learning_rate": ...}``).

    Called on the training's hot path: keep it cheap. When no plugin
    implements it, dpx does not call it at all.

    Example::

        @dpx.hookimpl
        def dpx_training_step_end(step, loss):
            if step % 1000 == 0:
                print(step, loss)
    """


@hookspec(firstresult=True)
def dpx_epoch_end(run, epoch, loss, validation_loss, metrics):
    """Training finished ``epoch``: its mean training ``loss``, its
    ``validation_loss`` (None without validation data) and ``metrics`` (every
    epoch value the stats writers log, learning rate included).

    Return a reason (a non-empty string) to stop the training after this epoch:
    the first plugin answering one wins (``firstresult``); the epoch's network
    is saved first and the reason recorded in ``session.json``. Return None to
    let it go on.

    Example::

        @dpx.hookimpl
        def dpx_epoch_end(loss):
            if loss < 1e-4:
                return "the loss is below 1e-4"
    """


@hookspec
def dpx_checkpoint_saved(run, path, epoch, best):
    """Training saved a network: ``path`` (a :class:`pathlib.Path`) at the end of
    ``epoch`` (-1: before the first step of an online training); ``best`` is
    True for the best network so far (``which_network="best"``).

    Example::

        @dpx.hookimpl
        def dpx_checkpoint_saved(path, best):
            if best:
                shutil.copy(path, "/backups/")
    """


@hookspec
def dpx_prediction_step_end(run, step, inputs, prediction):
    """Prediction ran the network once for every environment: ``inputs``
    ``{field: array}`` and ``prediction`` (the target field's array, before it is
    applied), one row per environment, valid only during the call.

    Example::

        @dpx.hookimpl
        def dpx_prediction_step_end(step, prediction):
            trajectory.append(prediction.copy())
    """
