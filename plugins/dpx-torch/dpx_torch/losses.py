"""Losses dpx-torch adds to torch's own."""

import torch
from torch import nn


class RelativeL2Loss(nn.Module):
    """``||prediction - target|| / ||target||`` per sample, averaged: scale-free,
    so large and small displacements weigh alike."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = (prediction - target).flatten(1).norm(dim=1)
        return (error / (target.flatten(1).norm(dim=1) + self.eps)).mean()
