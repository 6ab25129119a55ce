"""Pictures: sample grids as PNG and the grids over training as an animated GIF."""

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image

from mindiff.files import atomic_write

# The picture files a grid may be written as, by suffix (lower case); a suffix not here is written as PNG.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}


def image_format(path) -> Optional[str]:
    """The format PIL writes for `path`'s suffix, or None when it is no picture suffix PIL can write here."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is not None:
        Image.init()  # registers the writers PIL has (WEBP only with libwebp)
    return fmt if fmt in Image.SAVE else None


def save_grid(images_uint8: torch.Tensor, path: Path, nrow: int) -> Path:
    """Write N x C x H x W uint8 images as one grid picture (PNG, or the format of the suffix: FORMATS),
    `nrow` images per row, 2 black pixels apart."""
    fmt = image_format(path) or "PNG"
    return atomic_write(path, lambda f: Image.fromarray(grid(images_uint8.cpu(), nrow).numpy()).save(f, format=fmt))


def grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """N x C x H x W -> one H' x W' (x 3 for colour) image, rows of `nrow`, the last row padded with black
    (the layout of torchvision's make_grid, without importing torchvision for it)."""
    n, c, h, w = images.shape
    nrow = min(nrow, n)
    rows = -(-n // nrow)
    cells = images.new_zeros(rows * nrow, c, h + padding, w + padding)
    cells[:n, :, padding:, padding:] = images
    out = cells.view(rows, nrow, c, h + padding, w + padding).permute(0, 3, 1, 4, 2)
    out = out.reshape(rows * (h + padding), nrow * (w + padding), c)
    out = torch.nn.functional.pad(out.permute(2, 0, 1), (0, padding, 0, padding)).permute(1, 2, 0)
    return (out.expand(*out.shape[:2], 3) if c == 1 else out).contiguous()


def save_gif(frames: Sequence[Path], path: Path, seconds_per_frame: float = 0.4) -> Path:
    """Animate the PNG grids in order, holding the last one longer."""
    images = [Image.open(f).convert("RGB") for f in frames]
    durations = [int(seconds_per_frame * 1000)] * len(images)
    durations[-1] *= 5
    return atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                       duration=durations, loop=0))
