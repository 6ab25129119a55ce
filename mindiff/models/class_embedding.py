"""LayerNorm(Embedding(class)), the class conditioning every mindiff denoiser uses, with one more
learned row: the null class (label NULL_CLASS, "no class"). Classifier-free guidance trains it by
dropping labels (schedule.label_dropout) and samples against it (schedule.guidance)."""

import torch
import torch.nn as nn

NULL_CLASS = -1


class ClassEmbedding(nn.Sequential):
    def __init__(self, classes: int, dim: int):
        super().__init__(nn.Embedding(classes + 1, dim), nn.LayerNorm(dim))  # row `classes`: the null class
        self.classes = classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.where(y == NULL_CLASS, self.classes, y))
