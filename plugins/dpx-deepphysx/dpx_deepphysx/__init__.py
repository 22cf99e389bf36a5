"""dpx-deepphysx: bring DeepPhysX 22.12 sessions to dpx.

Train on a DeepPhysX dataset as it is (``DatabaseConfig(existing_dir=...,
storage="deepphysx")``) or convert a whole session (dataset, facts, FC
network) with ``python -m dpx import deepphysx PATH``. Arrays are read by an
unpickler that runs no code from the files.

dpx imports this module whenever it lists plugins, so it imports nothing but
``dpx``.
"""

import dpx


@dpx.hookimpl
def dpx_storage_backends() -> dict[str, dpx.Component]:
    return {
        "deepphysx": dpx.Component(
            "dpx_deepphysx.storage:DeepPhysXStorage",
            "DeepPhysX 22.12 datasets (SQLite rows of pickled arrays), read-only, no code run from them",
        ),
    }


@dpx.hookimpl
def dpx_importers() -> dict[str, dpx.Component]:
    return {
        "deepphysx": dpx.Component(
            "dpx_deepphysx.importer:DeepPhysXImporter",
            "DeepPhysX 22.12 sessions: dataset, info.txt facts, FC networks, curves (`dpx import deepphysx PATH`)",
        ),
    }
