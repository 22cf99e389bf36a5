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
Every hook here is a *registry*: it takes no argument and returns a mapping
``{name: component}`` where a component is either an import path
``"package.module:Attribute"`` or a :class:`dpx.Component` carrying that path and
a one-line summary. dpx imports the path only when a pipeline actually uses the
name, so listing plugins stays fast even when a plugin wraps PyTorch or Ray.

Names are dotted by convention (``toy.mean``, ``sofa.beam``) so that a plugin's
offers group together. If two plugins offer the same name, using the bare name
is an error that names both; a user picks one as ``plugin:name``.

Each hook documents what the imported object must be. dpx checks the contract
when it loads the object, not when it lists it.
"""

from __future__ import annotations

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
}


@hookspec
def dpx_environments():
    """Simulators that produce samples.

    Each component is a subclass of :class:`dpx.Environment`. dpx builds it with
    the ``env_kwargs`` of the :class:`~dpx.EnvironmentConfig`, then calls
    ``create``, ``init``, ``init_database`` and, when a viewer is configured,
    ``init_visualization`` before stepping it.

    Example::

        @dpx.hookimpl
        def dpx_environments():
            return {"toy.mean": "dpx_toy.mean:MeanEnvironment"}
    """


@hookspec
def dpx_network_backends():
    """AI framework adapters (e.g. ``torch``).

    Each component is a class that builds networks by architecture name, runs
    the optimisation, and converts NumPy arrays to and from the framework's
    tensors. The core never imports an AI framework itself; it talks to the
    backend named in :class:`~dpx.NetworkConfig`.

    Example::

        @dpx.hookimpl
        def dpx_network_backends():
            return {"torch": dpx.Component("dpx_torch.backend:TorchBackend", "PyTorch")}
    """


@hookspec
def dpx_losses():
    """Named loss functions, for ``NetworkConfig(loss=...)``.

    Each component is a callable or class understood by the network backend
    that declares it (a ``torch.nn.Module`` class for the torch backend).

    Example::

        @dpx.hookimpl
        def dpx_losses():
            return {"relative_l2": "my_plugin.losses:RelativeL2"}
    """


@hookspec
def dpx_transforms():
    """Named data transformations, for ``NetworkConfig(data_transformation=...)``.

    A transformation acts at three points: before prediction, before the loss,
    and before the prediction is applied to the environment.

    Example::

        @dpx.hookimpl
        def dpx_transforms():
            return {"flatten": "my_plugin.transforms:Flatten"}
    """


@hookspec
def dpx_storage_backends():
    """Dataset storage engines, for ``DatabaseConfig(storage=...)``.

    Each component is a class storing samples field by field on disk. The core
    ships ``memmap`` (fixed-size memory-mapped NumPy partitions, crash-safe);
    plugins may add export formats such as HDF5 or zarr. The class follows
    :class:`dpx.core.storage.MemmapStorage`:

    * ``cls(path, *, readonly, max_file_bytes)`` opens or creates a dataset;
    * ``modes``, ``layout(mode)``, ``count(mode)`` describe it, ``metadata``
      is a JSON dict kept with it (normalisation, provenance);
    * ``add_mode(mode, {field: (dtype, shape)})``, ``append(mode, arrays)``
      and ``commit(force=False, metadata=None)`` write: appended samples become
      visible to readers only once committed, and a writer killed at any point
      must leave only whole committed samples;
    * ``read(mode, field, indices, out=None)``, ``reader(mode, field)`` (a fast
      ``(indices, out) -> out`` gather) and ``refresh()`` read, while a writer
      may still be appending;
    * ``close()`` commits and releases files.

    Example::

        @dpx.hookimpl
        def dpx_storage_backends():
            return {"hdf5": "dpx_hdf5.storage:HDF5Storage"}
    """


@hookspec
def dpx_runners():
    """Ways to run environments, for ``EnvironmentConfig(runner=...)``.

    The core ships ``inprocess`` (environments in the pipeline's own process);
    other runners use worker processes or a cluster.

    Example::

        @dpx.hookimpl
        def dpx_runners():
            return {"ray": dpx.Component("dpx_ray.runner:RayRunner", "Ray actors")}
    """


@hookspec
def dpx_visualizers():
    """Viewers fed by the environments' visual objects, for
    ``EnvironmentConfig(visualizer=...)``.

    Example::

        @dpx.hookimpl
        def dpx_visualizers():
            return {"vedo": "dpx_vedo.viewer:VedoVisualizer"}
    """


@hookspec
def dpx_stats_writers():
    """Sinks for training curves (losses, learning rate, extra values).

    The core ships ``csv``, a plain file in the session's ``stats/`` folder.

    Example::

        @dpx.hookimpl
        def dpx_stats_writers():
            return {"tensorboard": "dpx_tensorboard.writer:TensorBoardWriter"}
    """
