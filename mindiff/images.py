"""Pictures: sample grids as PNG and the grids over training as an animated GIF."""

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision.utils import make_grid

from mindiff.files import atomic_write


def save_grid(images_uint8: torch.Tensor, path: Path, nrow: int) -> Path:
    """Write N x C x H x W uint8 images as one PNG grid, `nrow` images per row."""
    grid = make_grid(images_uint8.cpu(), nrow=nrow, padding=2, pad_value=0)
    return atomic_write(path, lambda f: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(f, format="PNG"))


def save_gif(frames: Sequence[Path], path: Path, seconds_per_frame: float = 0.4) -> Path:
    """Animate the PNG grids in order, holding the last one longer."""
    images = [Image.open(f).convert("RGB") for f in frames]
    durations = [int(seconds_per_frame * 1000)] * len(images)
    durations[-1] *= 5
    return atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                       duration=durations, loop=0))
