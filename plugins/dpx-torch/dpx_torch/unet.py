"""``unet``: a 2D or 3D U-Net for fields on grids (channels first)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dpx_torch.network import Network


def _block(dims: int, channels_in: int, channels_out: int) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return nn.Sequential(
        conv(channels_in, channels_out, 3, padding=1), norm(channels_out), nn.ReLU(inplace=True),
        conv(channels_out, channels_out, 3, padding=1), norm(channels_out), nn.ReLU(inplace=True),
    )


class UNet(Network):
    """Encoder-decoder with skip connections (Ronneberger et al., 2015).

    Samples are ``(channels, *grid)`` with a 2D or 3D grid; the dimension is
    read from the input shape unless ``dimension`` is given. ``depth`` levels
    each halve the grid and double the channels, from ``first_channels``.
    Grids whose size is not a multiple of ``2**depth`` are padded, and the
    output cropped back.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (),
        output_shape: tuple[int, ...] = (),
        dimension: int | None = None,
        depth: int = 3,
        first_channels: int = 16,
        in_channels: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__(input_shape, output_shape)
        dims = dimension if dimension is not None else len(self.input_shape) - 1
        if dims not in (2, 3):
            raise ValueError(
                f"unet: samples must be (channels, height, width) or (channels, depth, height, width); "
                f"the input field's samples have shape {self.input_shape}"
            )
        if depth < 1 or first_channels < 1:
            raise ValueError(f"unet: depth={depth} and first_channels={first_channels} must be at least 1")
        in_channels = in_channels if in_channels is not None else self.input_shape[0]
        out_channels = out_channels if out_channels is not None else (self.output_shape or self.input_shape)[0]
        if output_shape and self.output_shape[1:] != self.input_shape[1:]:
            raise ValueError(
                f"unet: the target field's grid {self.output_shape[1:]} must match the input field's grid "
                f"{self.input_shape[1:]}"
            )
        self.dims, self.depth = dims, depth
        widths = [first_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList([_block(dims, in_channels, widths[0])])
        self.down.extend(_block(dims, widths[i], widths[i + 1]) for i in range(depth))
        transpose = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up = nn.ModuleList(transpose(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_block(dims, 2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = (nn.Conv2d if dims == 2 else nn.Conv3d)(widths[0], out_channels, 1)
        self.pool = F.max_pool2d if dims == 2 else F.max_pool3d

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        grid = input.shape[2:]
        multiple = 2**self.depth
        padding: list[int] = []
        for size in reversed(grid):
            padding += [0, (-size) % multiple]
        x = F.pad(input, padding) if any(padding) else input
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        x = self.head(x)
        return x[(..., *(slice(0, size) for size in grid))]
