"""FLOPs of one forward pass of the small UNet that :class:`synthloop.models.diffusion.UNetSpec`
builds, from its shape alone: planning a budget in FLOPs needs no torch and no UNet.

The count is the one ``torch.utils.flop_counter.FlopCounterMode`` reports for one image on CPU,
which ``forward_flops`` measures and the ledger charges: 2 x multiply-adds of every convolution and
linear layer (bias, normalisation, activations and the time-step sinusoids are not counted). It
leaves out the attention product of the middle block (Q K^T and the weighted sum, 4 S^2 C for S
positions of C channels), because the fused CPU attention kernel has no FLOP formula in torch.
``tests/test_diffusion.py`` checks the formula against ``FlopCounterMode`` on every example's UNet,
so a torch or diffusers release that counts differently fails there instead of skewing plans.

>>> unet_forward_flops(sample_size=8, channels=1, block_out_channels=(32, 64), layers_per_block=1)
30531584
"""

from __future__ import annotations

from collections.abc import Sequence

#: forward + backward of one trained image, in forward-pass FLOPs (backward ~ 2 forwards).
TRAIN_FLOPS_FACTOR = 3.0


def conv_flops(size: int, c_in: int, c_out: int, *, kernel: int = 3) -> int:
    """A stride-1, same-padded convolution on a size x size map."""
    return 2 * size * size * c_out * c_in * kernel * kernel


def resnet_flops(size: int, c_in: int, c_out: int, *, time_channels: int) -> int:
    """diffusers' ResnetBlock2D: two 3x3 convolutions, the time-embedding projection, and a 1x1
    shortcut where the width changes."""
    flops = conv_flops(size, c_in, c_out) + 2 * time_channels * c_out + conv_flops(size, c_out, c_out)
    return flops + (conv_flops(size, c_in, c_out, kernel=1) if c_in != c_out else 0)


def unet_forward_flops(*, sample_size: int, channels: int, block_out_channels: Sequence[int],
                       layers_per_block: int) -> int:
    """``UNet2DModel`` with DownBlock2D / UpBlock2D levels, one attention middle block and the
    library's defaults otherwise (the model ``UNetSpec.build`` makes)."""
    widths = list(block_out_channels)
    time_channels = 4 * widths[0]
    size = sample_size
    flops = 2 * widths[0] * time_channels + 2 * time_channels**2 + conv_flops(size, channels, widths[0])
    sizes, skips, c_in = [], [widths[0]], widths[0]
    for level, width in enumerate(widths):  # down: layers_per_block resnets, then a stride-2 conv
        sizes.append(size)
        for layer in range(layers_per_block):
            flops += resnet_flops(size, c_in if layer == 0 else width, width, time_channels=time_channels)
        skips += [width] * layers_per_block
        c_in = width
        if level < len(widths) - 1:
            size = (size + 1) // 2
            flops += conv_flops(size, width, width)  # stride 2: priced at the output size
            skips.append(width)
    positions = size * size  # middle: resnet, attention (Q, K, V, out projections), resnet
    flops += 2 * resnet_flops(size, widths[-1], widths[-1], time_channels=time_channels)
    flops += 4 * 2 * positions * widths[-1] ** 2
    previous = widths[-1]
    for level, width in enumerate(reversed(widths)):  # up: layers_per_block + 1 resnets on skips
        size = sizes[len(widths) - 1 - level]
        for layer in range(layers_per_block + 1):
            c_in = (previous if layer == 0 else width) + skips.pop()
            flops += resnet_flops(size, c_in, width, time_channels=time_channels)
        previous = width
        if level < len(widths) - 1:  # nearest-neighbour upsampling, then a 3x3 conv
            flops += conv_flops(sizes[len(widths) - 2 - level], width, width)
    return flops + conv_flops(sizes[0], widths[0], channels)
