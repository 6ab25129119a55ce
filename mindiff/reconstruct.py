"""`python -m mindiff.reconstruct ckpt=PATH image=IN.png out=OUT.png`

Encodes and decodes one image of any size with a trained autoencoder (it is fully convolutional:
a 32x32-trained model runs on a 1024x1024 photo). The image is cropped to a multiple of the
autoencoder's factor; `out` shows the input and its reconstruction side by side.
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
from mindiff.objectives import psnr
from mindiff.files import check_writable_file
from mindiff.images import save_grid
from mindiff.runtime import pick_device


@dataclass
class ReconstructArgs:
    ckpt: str
    image: str
    out: str = "reconstruction.png"
    device: str = "auto"


def reconstruct(args: ReconstructArgs) -> dict:
    if not Path(args.image).is_file():
        raise ConfigError(f"image={args.image!r}: no such file")
    device = pick_device(args.device, key="device")
    out = check_writable_file(args.out, "out")
    state = read_checkpoint(args.ckpt, kind="autoencoder")
    model, _, cfg = from_checkpoint(state, args.ckpt, device)
    mode = "RGB" if cfg.model.in_channels == 3 else "L"
    try:
        with Image.open(args.image) as im:
            pixels = pil_to_tensor(im.convert(mode))
    except OSError as e:
        raise ConfigError(f"cannot read image {args.image}: {e}") from None
    h, w = (s - s % model.factor for s in pixels.shape[1:])
    if h == 0 or w == 0:
        raise ConfigError(f"{args.image} is smaller than the autoencoder's factor {model.factor}")
    x = to_unit_range(pixels[:, :h, :w]).unsqueeze(0).to(device)
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
