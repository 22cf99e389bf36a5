"""``fc``: a fully connected network from flattened input to reshaped output."""

from __future__ import annotations

import math

import torch
from torch import nn

from dpx_torch.network import Network

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
               "prelu": nn.PReLU}
#: Activations learning one slope per unit (as DeepPhysX's FC does), built with their layer's width.
PER_UNIT = {"prelu"}


class FC(Network):
    """A multilayer perceptron.

    ``dim_layers`` lists every layer width, input and output included (as in
    DeepPhysX); give only ``hidden`` and the ends come from the data. The
    input sample is flattened and the output reshaped to the target's shape.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (),
        output_shape: tuple[int, ...] = (),
        dim_layers: list[int] | None = None,
        hidden: list[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_shape, output_shape)
        n_in, n_out = math.prod(self.input_shape), math.prod(self.output_shape)
        if dim_layers is None:
            dim_layers = [n_in, *(hidden if hidden is not None else [64, 64]), n_out]
        elif input_shape and dim_layers[0] != n_in:
            raise ValueError(
                f"fc: dim_layers starts with {dim_layers[0]} inputs but the input field's samples have shape "
                f"{self.input_shape} ({n_in} values)"
            )
        elif output_shape and dim_layers[-1] != n_out:
            raise ValueError(
                f"fc: dim_layers ends with {dim_layers[-1]} outputs but the target field's samples have shape "
                f"{self.output_shape} ({n_out} values)"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"fc: unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"fc: dropout={dropout!r} must be in [0, 1)")
        self.output_shape = self.output_shape or (dim_layers[-1],)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dim_layers[:-1], dim_layers[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dim_layers) - 2:
                layers.append(ACTIVATIONS[activation](b) if activation in PER_UNIT else ACTIVATIONS[activation]())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.dim_layers = list(dim_layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = self.layers(input.flatten(1))
        # a flat target already has the layers' shape: a view would cost an autograd node every step
        return output if len(self.output_shape) == 1 else output.view(-1, *self.output_shape)
