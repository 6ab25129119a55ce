"""A plain stack of AdaLN-modulated residual conv blocks for latents: no UNet, no attention.

    c = Mish(Linear(concat(t, LayerNorm(Embedding(class)))))       (classes=None: Mish(Linear(t)))
    Conv3x3 (in -> hidden) -> ConvAdaNorm(c) x blocks -> Mish -> GroupNorm -> Conv3x3 (hidden -> in, zero-init)

    ConvAdaNorm(h, c): GroupNorm -> Conv3x3 -> h * (1 + scale) + shift -> Mish -> GroupNorm -> Conv3x3 (zero-init),
                       residual add; scale, shift = Linear(c) (zero-init)

At the defaults with classes=10 (+ the null class of classifier-free guidance) and in_channels=8:
10,609,160 parameters.
"""

from typing import Optional

import torch
import torch.nn as nn

from mindiff.models.class_embedding import ClassEmbedding
from mindiff.models.mish import Mish


class ConvAdaNorm(nn.Module):
    def __init__(self, channels: int, cond_dim: int, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.modulation = nn.Linear(cond_dim, 2 * channels)
        self.act = Mish()
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        # zero modulation makes h * (1 + scale) + shift the identity; the zero conv2 makes the whole block one
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        scale, shift = self.modulation(c)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
        h = self.conv2(self.norm2(self.act(h)))
        return x + h


class ConvAdaLN(nn.Module):
    def __init__(self, in_channels: int, hidden: int = 256, blocks: int = 8, class_embed_dim: int = 256,
                 classes: Optional[int] = None, groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.classes = classes
        if classes is not None:
            self.class_embed = ClassEmbedding(classes, class_embed_dim)
        cond_in = 1 + (class_embed_dim if classes is not None else 0)
        self.cond = nn.Sequential(nn.Linear(cond_in, hidden), Mish())
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(ConvAdaNorm(hidden, hidden, groups) for _ in range(blocks))
        self.head = nn.Sequential(Mish(), nn.GroupNorm(groups, hidden), nn.Conv2d(hidden, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [t.to(x.dtype).view(-1, 1)]
        if self.classes is not None:
            if y is None:
                raise ValueError("this model is class-conditional (model.classes is set): pass class labels")
            parts.append(self.class_embed(y).to(x.dtype))
        c = self.cond(torch.cat(parts, dim=1))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, c)
        return self.head(h)
