"""dpx: interface numerical simulations with deep learning, through plugins.

Importing ``dpx`` stays light (pluggy only): the user API below is imported on
first use, so that plugin entry-point modules can ``import dpx`` for
``dpx.hookimpl`` and ``dpx.Component`` at no cost.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dpx.hookspecs import hookimpl
from dpx.plugins import Component, PluginUnavailable

__version__ = "0.1.0"

_LAZY = {
    "Environment": "dpx.core.environment",
    "Field": "dpx.core.environment",
    "FieldError": "dpx.core.environment",
    "EnvironmentConfig": "dpx.core.config",
    "DatabaseConfig": "dpx.core.config",
    "ConfigError": "dpx.core.config",
    "NetworkConfig": "dpx.core.config",
    "DataGeneration": "dpx.core.generation",
    "Training": "dpx.core.training",
    "Prediction": "dpx.core.prediction",
    "Predictor": "dpx.core.predictor",
    "load_predictor": "dpx.core.predictor",
    "Database": "dpx.core.database",
    "open_database": "dpx.core.database",
    "Session": "dpx.core.session",
    "export": "dpx.core.export",
    "Parameter": "dpx.core.space",
    "ParameterSpace": "dpx.core.space",
    "ParameterError": "dpx.core.space",
}

__all__ = ["Component", "PluginUnavailable", "hookimpl", "__version__", *_LAZY]

if TYPE_CHECKING:
    from dpx.core.config import ConfigError, DatabaseConfig, EnvironmentConfig, NetworkConfig
    from dpx.core.database import Database, open_database
    from dpx.core.environment import Environment, Field, FieldError
    from dpx.core.generation import DataGeneration
    from dpx.core.prediction import Prediction
    from dpx.core.predictor import Predictor, load_predictor
    from dpx.core.training import Training
    from dpx.core.session import Session
    from dpx.core.export import export
    from dpx.core.space import Parameter, ParameterError, ParameterSpace


_SUBMODULES = ("checks", "testing", "plugins")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dpx.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dpx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
