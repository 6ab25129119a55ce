"""The small CNN whose features score samples (the "Fréchet LeNet distance" of MNIST work).

    [Conv3x3, GroupNorm, Mish, AvgPool2]*2 -> Flatten -> Linear (features) -> Mish -> Linear (classes)
"""

import torch
import torch.nn as nn

from mindiff.models.mish import Mish


class Classifier(nn.Module):
    def __init__(self, in_channels: int, image_size: int, classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(8, width), Mish(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), Mish(), nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim),
        )
        self.head = nn.Sequential(Mish(), nn.Linear(feature_dim, classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
