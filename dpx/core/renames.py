"""DeepPhysX's parameter names, so that its users' configs work or say what to write.

A name with the same meaning under another name in dpx is accepted by the
configs' constructors and in TOML files; a DeepPhysX parameter whose meaning
changed is refused with what to write instead. The README's "Coming from
DeepPhysX" table lists the same renames (a test keeps them in step).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

#: Config class -> {DeepPhysX name: dpx name} of parameters that mean the same.
RENAMED: dict[str, dict[str, str]] = {
    "NetworkConfig": {
        "optimization_class": "optimization",
        "data_transformation_class": "data_transformation",
    },
    "EnvironmentConfig": {
        "number_of_thread": "workers",
    },
}

#: Config class -> {DeepPhysX name: what to write in dpx} where the meaning changed.
REPLACED: dict[str, dict[str, str]] = {
    "NetworkConfig": {
        "network_type": "network_class names the architecture ('fc', 'unet') or gives its class",
    },
    "EnvironmentConfig": {
        "as_tcp_ip_client": "runner='multiprocess' runs the environments in worker processes (runner='inprocess' in "
        "the pipeline's own)",
        "ip_address": "runner_kwargs={'host': ...} of the multiprocess runner",
        "port": "runner_kwargs={'port': ...} of the multiprocess runner",
    },
}

#: Every public name of DeepPhysX 22.12 (core, DeepPhysX.Torch and DeepPhysX.Sofa): classes, config
#: parameters, pipeline and environment methods, attributes. The README's "Coming from DeepPhysX" table
#: gives each its dpx equivalent or why dpx does not need it (a test keeps them in step).
DEEPPHYSX_NAMES: dict[str, tuple[str, ...]] = {
    "configs": (
        "BaseEnvironmentConfig", "SofaEnvironmentConfig", "environment_class", "as_tcp_ip_client",
        "number_of_thread", "ip_address", "port", "simulations_per_step", "max_wrong_samples_per_step",
        "load_samples", "only_first_epoch", "always_produce", "visualizer", "record_wrong_samples", "env_kwargs",
        "create_server", "start_server", "start_client", "create_environment",
        "BaseDatabaseConfig", "existing_dir", "mode", "max_file_size", "shuffle", "normalize",
        "recompute_normalization",
        "BaseNetworkConfig", "TorchNetworkConfig", "network_class", "optimization_class", "data_transformation_class",
        "network_dir", "network_name", "network_type", "which_network", "save_each_epoch", "data_type", "lr",
        "require_training_stuff", "loss", "optimizer",
        "FCConfig", "dim_layers", "dim_output", "biases",
        "UNetConfig", "input_size", "nb_dims", "nb_input_channels", "nb_first_layer_channels", "nb_output_channels",
        "nb_steps", "two_sublayers", "border_mode", "skip_merge", "data_scale",
    ),
    "pipelines": (
        "BaseDataGeneration", "BaseTraining", "BasePrediction", "SofaPrediction", "session_dir", "session_name",
        "new_session", "batch_nb", "batch_size", "epoch_nb", "step_nb", "record", "debug", "execute",
        "data_generation_begin", "batch_condition", "batch_begin", "batch_produce", "batch_count", "batch_end",
        "data_generation_end", "train_begin", "epoch_condition", "epoch_begin", "optimize", "epoch_count",
        "epoch_end", "train_end", "save_info_file", "prediction_begin", "prediction_condition", "sample_begin",
        "predict", "sample_end", "prediction_end",
        "get_network_manager", "get_data_manager", "get_stats_manager", "get_database_manager",
        "get_environment_manager", "DataManager", "DatabaseManager", "EnvironmentManager", "NetworkManager",
        "StatsManager",
    ),
    "environments": (
        "BaseEnvironment", "SofaEnvironment", "AbstractEnvironment", "create", "init", "init_database",
        "init_visualization", "step", "check_sample", "apply_prediction", "close", "define_training_fields",
        "define_additional_fields", "set_training_data", "set_additional_data", "get_prediction",
        "update_visualisation", "save_parameters", "load_parameters", "instance_id", "instance_nb",
        "sample_training", "sample_additional", "update_line", "compute_training_data", "get_database_handler",
        "environment_manager", "tcp_ip_client", "TcpIpServer", "TcpIpClient", "TcpIpObject", "BytesConverter",
        "launcherBaseEnvironment",
    ),
    "database": (
        "DatabaseHandler", "load", "get_fields", "get_line", "get_lines", "add_data", "add_batch", "update",
        "create_fields", "get_partitions", "get_exchange", "get_database_dir",
    ),
    "networks": (
        "BaseNetwork", "TorchNetwork", "forward", "set_train", "set_eval", "set_device", "get_parameters",
        "nb_parameters", "numpy_to_tensor", "tensor_to_numpy", "BaseOptimization", "TorchOptimization", "set_loss",
        "compute_loss", "transform_loss", "set_optimizer", "BaseTransformation", "TorchTransformation",
        "UnetTransformation", "transform_before_prediction", "transform_before_loss", "transform_before_apply",
        "check_type", "FC", "UNet", "EncoderDecoder",
    ),
    "visualisation and stats": (
        "VedoVisualizer", "render_instance", "offscreen", "VedoFactory", "render", "SampleVisualizer", "GridMapping",
        "barycentric_mapping", "add_train_batch_loss", "add_train_epoch_loss", "add_test_loss", "add_custom_scalar",
        "add_values_multi_plot", "add_3D_point_cloud", "add_3D_mesh", "add_network_weight_grad", "Utils",
    ),
}

Config = TypeVar("Config", bound=type)


def translate(config: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with DeepPhysX's names replaced by dpx's; a replaced one raises ConfigError."""
    from dpx.core.config import ConfigError

    renamed, replaced = RENAMED.get(config, {}), REPLACED.get(config, {})
    result = dict(parameters)
    for old, new in renamed.items():
        if old in result:
            if new in result:
                raise ConfigError(f"{config}: {old} is DeepPhysX's name for {new}; give only one of them")
            result[new] = result.pop(old)
    for old, instead in replaced.items():
        if old in result:
            raise ConfigError(f"{config}: {old}={result[old]!r} is DeepPhysX's; in dpx, {instead}")
    return result


def deepphysx_names(cls: Config) -> Config:
    """Let a config's constructor take DeepPhysX's names (see :data:`RENAMED`)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **translate(cls.__name__, kwargs))

    cls.__init__ = __init__
    return cls


def hint(config: str, name: str) -> str | None:
    """What to write instead of DeepPhysX's ``name`` in ``config``, for an unknown-parameter error."""
    if name in RENAMED.get(config, {}):
        return f"DeepPhysX's name for {RENAMED[config][name]!r}"
    if name in REPLACED.get(config, {}):
        return f"DeepPhysX's; in dpx, {REPLACED[config][name]}"
    return None
