"""The MNIST toy: two Linear layers and a class embedding.

    concat(x_flat, t, LayerNorm(Embedding(class))) -> Linear -> Mish -> LayerNorm -> Linear (zero-init)

The embedding has one row more than the classes: the null class of classifier-free guidance.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from mindiff.models.class_embedding import ClassEmbedding
from mindiff.models.mish import Mish


class MLP2(nn.Module):
    def __init__(self, image_shape: Sequence[int], hidden_dim: int = 4096, class_embed_dim: int = 239,
                 classes: Optional[int] = None):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(self.image_shape)
        self.classes = classes
        if classes is not None:
            self.class_embed = ClassEmbedding(classes, class_embed_dim)
        in_dim = pixels + 1 + (class_embed_dim if classes is not None else 0)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = Mish()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, pixels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [x.flatten(1), t.to(x.dtype).view(-1, 1)]
        if self.classes is not None:
            if y is None:
                raise ValueError("this model is class-conditional (model.classes is set): pass class labels")
            parts.append(self.class_embed(y).to(x.dtype))
        h = torch.cat(parts, dim=1)
        h = self.norm(self.act(self.fc1(h)))
        return self.fc2(h).view(-1, *self.image_shape)
