"""The F4-C8 convolutional autoencoder: pixels <-> standardised latents for a latent-space denoiser.

    encoder  [Conv, Conv, Down]*n + [Conv, Conv]      3 -> 32 -> 64, Down, 64 -> 64 -> 128, Down, 128 -> 128 -> 8
    decoder  [Conv, Conv] + [Up, Conv, Conv]*n        8 -> 128 -> 128, Up, 128 -> 64 -> 64, Up, 64 -> 32 -> 3

with n = len(hidden) - 1. Conv is a 3x3 conv, GroupNorm, Mish; the convs into the latent and into the pixels are plain.
Down is a 2x2 average pool, Up a nearest x2. Channels widen on the conv before each Down and narrow on the conv after
each Up, so the decoder mirrors the encoder conv for conv. The latent is standardised per sample over (C, H, W).
At the defaults: 287,816 encoder + 287,811 decoder = 575,627 parameters.
"""

from typing import Sequence, Tuple

import torch
import torch.nn as nn

from mindiff.models.mish import Mish


def conv(in_channels: int, out_channels: int, groups: int, plain: bool = False) -> nn.Module:
    layer = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return layer if plain else nn.Sequential(layer, nn.GroupNorm(groups, out_channels), Mish())


class Autoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, hidden: Sequence[int] = (32, 64, 128), latent_channels: int = 8,
                 groups: int = 8):
        super().__init__()
        hidden = list(hidden)
        n = len(hidden) - 1
        self.factor = 2 ** n
        self.latent_channels = latent_channels
        # outer[i]: channels entering encoder stage i, and leaving the decoder stage that mirrors it
        outer = [in_channels, *hidden[1:-1]]
        enc = []
        for i in range(n):
            enc += [conv(outer[i], hidden[i], groups), conv(hidden[i], hidden[i + 1], groups), nn.AvgPool2d(2)]
        enc += [conv(hidden[-1], hidden[-1], groups), conv(hidden[-1], latent_channels, groups, plain=True)]
        self.encoder = nn.Sequential(*enc)
        dec = [conv(latent_channels, hidden[-1], groups), conv(hidden[-1], hidden[-1], groups)]
        for i in reversed(range(n)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), conv(hidden[i + 1], hidden[i], groups),
                    conv(hidden[i], outer[i], groups, plain=i == 0)]
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, int, int]:
        _, height, width = image_shape
        if height % self.factor or width % self.factor:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder factor {self.factor}")
        return self.latent_channels, height // self.factor, width // self.factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        mean = z.mean(dim=(1, 2, 3), keepdim=True)
        std = z.std(dim=(1, 2, 3), keepdim=True)
        return (z - mean) / (std + 1e-5)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, t=None, y=None) -> torch.Tensor:
        # t and y are ignored: they keep the model(x, t, y) signature every mindiff model has
        return self.decode(self.encode(x))
