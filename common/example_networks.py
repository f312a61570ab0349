"""The network of the example models (``modelrunner.example_models``): a small U-Net, 2-D or
3-D.

This file goes into each example package as it is (its ``pytorch_state_dict`` weights name
``UNet`` in it as their architecture), so it imports torch alone.
"""

import torch


class _Block(torch.nn.Module):
    """Two 3x3 (3x3x3) convolutions with 'same' padding, each followed by a ReLU."""

    def __init__(self, dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.layers = torch.nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1),
            torch.nn.ReLU(),
            conv(out_channels, out_channels, 3, padding=1),
            torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UNet(torch.nn.Module):
    """A U-Net (Ronneberger et al., 2015) of ``depth`` poolings by 2 and ``base`` features at
    full resolution, doubled at each level; y and x must be multiples of ``2**depth`` (3-D: z
    is never pooled, so it takes any size).
    Returns logits (the package's postprocessing applies the sigmoid)."""

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        base: int = 8,
        depth: int = 2,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims={dims}: 2 or 3")
        widths = [base * 2**level for level in range(depth + 1)]
        self.down = torch.nn.ModuleList(
            [_Block(dims, in_channels, widths[0])]
            + [_Block(dims, widths[i], widths[i + 1]) for i in range(depth)]
        )
        # 3-D: y and x only, as z steps are coarser than pixels; z keeps any size
        if dims == 2:
            self.pool: torch.nn.Module = torch.nn.MaxPool2d(2)
            self.up = torch.nn.ModuleList(
                [
                    torch.nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                    for i in reversed(range(depth))
                ]
            )
        else:
            self.pool = torch.nn.MaxPool3d((1, 2, 2))
            self.up = torch.nn.ModuleList(
                [
                    torch.nn.ConvTranspose3d(widths[i + 1], widths[i], (1, 2, 2), stride=(1, 2, 2))
                    for i in reversed(range(depth))
                ]
            )
        self.merge = torch.nn.ModuleList(
            [_Block(dims, 2 * widths[i], widths[i]) for i in reversed(range(depth))]
        )
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.head = conv(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):  # noqa: B905 - TorchScript: no strict=
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
