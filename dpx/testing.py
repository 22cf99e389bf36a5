"""A kit for plugin authors: conformance checks and pytest helpers.

* :func:`check_environment` builds an environment the way a pipeline does,
  produces a few samples twice from the same seed, and fails with a message
  saying what is wrong (undeclared or missing fields, shapes changing, NaN,
  randomness not drawn from ``self.rng``...), in the spirit of Gymnasium's
  ``check_env``.
* :func:`assert_light_import` checks, in a fresh interpreter, that importing a
  plugin's entry-point module pulls in no heavy library.
* The ``dpx_plugin`` pytest fixture registers a plugin for one test. It is
  available in every test once dpx is installed (dpx registers this module as
  a pytest plugin).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

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
    return first


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
