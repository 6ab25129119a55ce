"""`python -m mindiff.sample ckpt=PATH n=1000 out=samples.npz [steps= sampler= guidance= seed=0 classes=null]`

Writes `images` (uint8, N x C x H x W) and `labels` (int64, N; the classes the samples were
conditioned on, cycling 0..9 unless `classes` lists some) to an .npz, or a grid if `out` is .png.
steps, sampler (euler | heun) and guidance default to the run's own schedule settings.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from mindiff.build import from_checkpoint, read_checkpoint
from mindiff.cli import check_cli_values, run_command, sampling_overrides
from mindiff.config import PRECISIONS, ConfigError, check_choice
from mindiff.files import atomic_write, check_writable_file
from mindiff.images import save_grid
from mindiff.runtime import autocast, pick_device


MAX_BATCH = 10**6


@dataclass
class SampleArgs:
    ckpt: str
    n: int = 1000
    out: str = "samples.npz"
    steps: Optional[int] = None  # default: the run's schedule.sample_steps
    sampler: Optional[str] = None  # default: the run's schedule.sampler
    guidance: Optional[float] = None  # default: the run's schedule.guidance
    seed: int = 0
    classes: Optional[List[int]] = None  # cycle through these; default: all classes
    batch_size: int = 500
    device: str = "auto"
    precision: str = "fp32"


def sample(args: SampleArgs) -> dict:
    check_cli_values("eval", n=args.n, seed=args.seed)  # the bounds of eval.n and eval.seed
    if not 0 < args.batch_size <= MAX_BATCH:
        raise ConfigError(f"batch_size={args.batch_size} must be in 1..{MAX_BATCH:,}")
    schedule = sampling_overrides(args.steps, args.sampler, args.guidance)
    if Path(args.out).suffix.lower() not in (".npz", ".png"):
        raise ConfigError(f"out={args.out!r}: end it in .npz (arrays) or .png (a grid)")
    check_choice("precision", args.precision, PRECISIONS)
    device = pick_device(args.device, key="device")
    out = check_writable_file(args.out, "out")
    state = read_checkpoint(args.ckpt, kind="diffusion")
    model, objective, cfg = from_checkpoint(state, args.ckpt, device, schedule)
    num_classes = cfg.dataset.num_classes
    classes = torch.tensor(args.classes if args.classes else list(range(num_classes)), dtype=torch.long)
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ConfigError(f"classes={args.classes}: this model knows classes 0..{num_classes - 1}")
    labels = classes[torch.arange(args.n) % len(classes)]
    image_shape = (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    with autocast(device, args.precision):
        images = objective.generate(model, labels, image_shape, args.seed, args.batch_size, progress=True)
    if out.suffix.lower() == ".png":
        save_grid(images, out, nrow=len(classes) if len(classes) > 1 else int(math.sqrt(args.n)))
    else:  # whole or not at all: a failed write leaves the previous file as it was (files.atomic_write)
        atomic_write(out, lambda f: np.savez_compressed(f, images=images.numpy(), labels=labels.numpy()))
    return {"images": images, "labels": labels, "out": out}


def main(argv=None) -> None:
    result = run_command("mindiff.sample", SampleArgs, sample, argv, __doc__)
    print(f"wrote {len(result['images'])} samples to {result['out']}")


if __name__ == "__main__":
    main()
