"""Latents of a frozen autoencoder, encoded once and kept across runs.

A latent run encodes every training image (and its mirror) before its first step: minutes on a CPU.
The result depends only on the autoencoder's weights and config, the images, the flips and the
precision, so it is cached under a hash of exactly those; a retrained autoencoder, other data or
another precision gets its own file. The file holds tensors only and is read with weights_only.
"""

import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch

from mindiff.data import Dataset
from mindiff.files import TensorSpec, check_writable_dir, load_cache, save_cache
from mindiff.objectives import LatentBatches

log = logging.getLogger(__name__)


def _hash_tensor(h, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    h.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")  # the buffer itself, not a copy


def latent_key(autoencoder: dict, data: Dataset, precision: str) -> str:
    """A hash of what the latents are a function of: the autoencoder (config and every weight), the
    training images and labels, whether mirrors are encoded too, and the precision they were encoded in."""
    h = hashlib.sha256(repr((autoencoder["config"].get("model"), data.hflip, precision)).encode())
    for name in sorted(autoencoder["model"]):
        h.update(name.encode())
        _hash_tensor(h, autoencoder["model"][name])
    _hash_tensor(h, data.train.images)
    _hash_tensor(h, data.train.labels)
    return h.hexdigest()[:20]


def cached_inputs(objective, data: Dataset, device: torch.device, autoencoder: Optional[dict],
                  cache_dir: Optional[str], precision: str):
    """`objective.inputs(data, device)`, from the cache when the same latents were encoded before. Pixel
    runs (no autoencoder) and `cache_dir=null` encode as always."""
    if autoencoder is None or not cache_dir:
        return objective.inputs(data, device)
    folder = Path(cache_dir).expanduser()
    path = folder / f"latents-{latent_key(autoencoder, data, precision)}.pt"
    views = 2 if data.hflip else 1
    expected = TensorSpec((views, len(data.train), *objective.sample_shape(data.image_shape)), torch.float32)
    saved = load_cache(path, {"latents": expected}, "latent cache", redo="encoding again")
    if saved is not None:
        return LatentBatches(saved["latents"].to(device), data.train.labels.to(device))
    check_writable_dir(folder, "autoencoder.latent_cache (or $MINDIFF_CACHE)")  # before minutes of encoding
    inputs = objective.inputs(data, device)
    save_cache({"latents": inputs.latents.cpu()}, path)
    log.info("latents cached in %s: later runs with this autoencoder, data and precision skip encoding", path)
    return inputs
