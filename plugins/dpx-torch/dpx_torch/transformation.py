"""Data transformations at the three points of DeepPhysX's ``DataTransformation``."""

from __future__ import annotations

import torch

from dpx.core.config import NetworkConfig


class DataTransformation:
    """Identity at every point; subclass and override what you need.

    ``transform_before_prediction`` reshapes or augments the network input;
    ``transform_before_loss`` adapts prediction and ground truth before the
    loss (e.g. masking); ``transform_before_apply`` turns the prediction into
    what the environment receives.
    """

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config

    def transform_before_prediction(self, input: torch.Tensor) -> torch.Tensor:
        return input

    def transform_before_loss(
        self, prediction: torch.Tensor, ground_truth: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return prediction, ground_truth

    def transform_before_apply(self, prediction: torch.Tensor) -> torch.Tensor:
        return prediction
