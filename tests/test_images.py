"""Sample grids: the layout of torchvision's make_grid, written as a PNG."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from mindiff.images import grid, save_grid


@pytest.mark.parametrize("n,channels,nrow", [(16, 1, 4), (10, 3, 4), (7, 1, 16), (2, 1, 1), (256, 1, 16)])
def test_grid_lays_images_out_like_torchvision(n, channels, nrow):
    images = torch.randint(0, 256, (n, channels, 5, 7), dtype=torch.uint8)
    assert torch.equal(grid(images, nrow), make_grid(images, nrow=nrow, padding=2, pad_value=0).permute(1, 2, 0))


def test_save_grid_writes_the_grid_as_an_rgb_png(tmp_path):
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    path = save_grid(images, tmp_path / "g.png", nrow=3)
    with Image.open(path) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), grid(images, 3).numpy())
