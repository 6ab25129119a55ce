"""trainer.speed=auto: the speed knobs that measured faster on the device kind a run lands on.

A knob that helps a CPU can slow a GPU, so each device kind has its own choice, and each choice
rests on a figure in the README's speed table:
- cpu: optim.fused and trainer.compile (MNIST toy bf16 1.27x, autoencoder 1.20x, latent denoiser
  1.14x on a 2-core CPU; they need a C++ compiler, and without one stay off);
- cuda: trainer.cuda_graph, and optim.fused/trainer.compile off (on an H100 they made the eager
  MNIST step slower: 157k against 178k img/s fp32, 112k against 159k bf16; one captured step ran
  at 1.09M img/s). With more than one process, or a plain AdamW, the step is not captured.
The choice is written into the run's config before anything is built, so the checkpoint and W&B
record the knobs the run really used.
"""

import logging
from typing import Dict

import torch
from omegaconf import DictConfig, open_dict

from mindiff.config import ConfigError, missing_cpp_compiler

log = logging.getLogger(__name__)

PROFILES: Dict[str, Dict[str, bool]] = {
    "cpu": {"optim.fused": True, "trainer.compile": True, "trainer.cuda_graph": False},
    "cuda": {"optim.fused": False, "trainer.compile": False, "trainer.cuda_graph": True},
}


def choose_knobs(device: torch.device, world: int, algorithm: str) -> Dict[str, bool]:
    knobs = dict(PROFILES.get(device.type, {}))
    if device.type == "cpu" and missing_cpp_compiler():
        knobs.update({"optim.fused": False, "trainer.compile": False})
    if knobs.get("trainer.cuda_graph") and (world > 1 or algorithm != "schedulefree_adamw"):
        knobs["trainer.cuda_graph"] = False
    return knobs


def apply_speed(cfg: DictConfig, device: torch.device, world: int) -> None:
    """Resolve trainer.speed=auto into the knobs themselves (in place), check the captured step's needs, and
    turn on trainer.tf32."""
    tc = cfg.trainer
    if tc.speed == "auto":
        knobs = choose_knobs(device, world, cfg.optim.algorithm)
        with open_dict(cfg):
            for key, on in knobs.items():
                group, name = key.split(".")
                cfg[group][name] = on
        chosen = " ".join(f"{k}={str(v).lower()}" for k, v in knobs.items())
        log.info("trainer.speed=auto on %s: %s", device.type, chosen)
    if tc.cuda_graph:
        if device.type != "cuda":
            raise ConfigError(f"trainer.cuda_graph=true needs a CUDA GPU, and this run is on {device.type}; set "
                              f"trainer.cuda_graph=false (or trainer.speed=auto, which uses it only on a GPU)")
        if world > 1:
            raise ConfigError(f"trainer.cuda_graph=true captures one process's step; with {world} processes set "
                              f"trainer.cuda_graph=false")
        if cfg.optim.algorithm != "schedulefree_adamw":
            raise ConfigError(f"trainer.cuda_graph=true needs optim.algorithm=schedulefree_adamw (its update is "
                              f"capturable), not {cfg.optim.algorithm}")
    if tc.tf32 and device.type == "cuda":
        use_tf32()


def use_tf32() -> None:
    """TF32 for fp32 matmuls (and convolutions, PyTorch's default) on CUDA, Ampere and newer: 10 mantissa
    bits instead of 23 inside the products."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
