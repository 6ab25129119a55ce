"""`python -m mindiff.reconstruct ckpt=PATH image=IN.png out=OUT.png [max_pixels=4194304 device=auto]`

Encodes and decodes one image of any size with a trained autoencoder (it is fully convolutional:
a 32x32-trained model runs on a 1024x1024 photo). The image is cropped to a multiple of the
autoencoder's factor; `out` (.png, or another picture suffix: images.FORMATS) shows the input and
its reconstruction side by side. An image over `max_pixels` is refused before it is decoded: the
reference autoencoder takes about 640 bytes of memory a pixel (2.7 GB at the default 2048x2048).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from mindiff.build import from_checkpoint, read_checkpoint
from mindiff.cli import run_command
from mindiff.config import ConfigError
from mindiff.data import to_uint8, to_unit_range
from mindiff.errors import one_line
from mindiff.objectives import psnr
from mindiff.files import check_writable_file
from mindiff.images import FORMATS, image_format, save_grid
from mindiff.runtime import pick_device


MAX_PIXELS = 2048 * 2048
BYTES_PER_PIXEL = 640  # measured: the reference F4-C8 autoencoder's peak memory per pixel of its input, no_grad


@dataclass
class ReconstructArgs:
    ckpt: str
    image: str
    out: str = "reconstruction.png"
    device: str = "auto"
    max_pixels: int = MAX_PIXELS  # a larger image is refused before it is decoded


def check_out(out: str) -> None:
    if image_format(out) is None:
        others = ", ".join(s for s in FORMATS if s != ".png" and image_format(f"out{s}"))
        raise ConfigError(f"out={out!r}: end it in .png (or {others}): it is written as a picture")


def check_image_size(image: str, max_pixels: int) -> None:
    """Refuse, from the header alone (PIL reads no pixels on open), an image too large to reconstruct."""
    if not Path(image).is_file():
        raise ConfigError(f"image={image!r}: no such file")
    try:
        with Image.open(image) as im:
            width, height = im.size
    except (OSError, Image.DecompressionBombError) as e:
        raise ConfigError(f"cannot read image {image}: {one_line(e)}") from None
    if width * height > max_pixels:
        raise ConfigError(
            f"image={image} is {width}x{height} = {width * height:,} pixels, more than max_pixels={max_pixels:,} "
            f"(about {BYTES_PER_PIXEL * max_pixels / 1e9:.1f} GB of memory for the reference autoencoder): resize "
            f"or crop it, or raise max_pixels knowingly")


def read_image(image: str, mode: str) -> torch.Tensor:
    try:
        with Image.open(image) as im:
            return pil_to_tensor(im.convert(mode))
    except (OSError, Image.DecompressionBombError) as e:
        raise ConfigError(f"cannot read image {image}: {one_line(e)}") from None


def reconstruct(args: ReconstructArgs) -> dict:
    check_out(args.out)
    if args.max_pixels <= 0:
        raise ConfigError(f"max_pixels={args.max_pixels} must be > 0")
    check_image_size(args.image, args.max_pixels)
    device = pick_device(args.device, key="device")
    out = check_writable_file(args.out, "out")
    state = read_checkpoint(args.ckpt, kind="autoencoder")
    model, _, cfg = from_checkpoint(state, args.ckpt, device)
    pixels = read_image(args.image, "RGB" if cfg.model.in_channels == 3 else "L")
    h, w = (s - s % model.factor for s in pixels.shape[1:])
    if h == 0 or w == 0:
        raise ConfigError(f"{args.image} is smaller than the autoencoder's factor {model.factor}")
    x = to_unit_range(pixels[:, :h, :w]).unsqueeze(0).to(device)
    del pixels
    with torch.no_grad():
        latent = model.encode(x)
        recon = model.decode(latent).float().clamp(-1, 1)
    out = save_grid(to_uint8(torch.cat([x, recon])), out, nrow=2)
    return {"out": out, "latent_shape": tuple(latent.shape[1:]), "psnr": psnr(recon, x).item()}


def main(argv=None) -> None:
    result = run_command("mindiff.reconstruct", ReconstructArgs, reconstruct, argv, __doc__)
    print(f"wrote {result['out']}: latent {result['latent_shape']}, PSNR {result['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
