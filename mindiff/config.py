"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/<name>.yaml` extends its schema (`defaults: [<name>_schema]`),
so a wrong type fails at composition with the key's name, before any work starts.
Value ranges that a type cannot express are checked by `validate`.
"""

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mindiff.errors import UserError


# ---- dataset ---------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    _target_: str = MISSING
    channels: int = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING
    hflip: bool = False


@dataclass
class TorchvisionDatasetConfig(DatasetConfig):
    root: str = "data"
    download: bool = True


@dataclass
class ImageFolderConfig(DatasetConfig):
    root: str = MISSING
    test_root: Optional[str] = None
    test_fraction: float = 0.1
    resolution: int = 32
    cache_dir: str = "~/.cache/mindiff"
    seed: int = 0


@dataclass
class TinyDatasetConfig(DatasetConfig):
    train_size: int = 512
    test_size: int = 128
    seed: int = 0


# ---- model -----------------------------------------------------------------------------------
@dataclass
class MLP2Config:
    _target_: str = "mindiff.models.mlp2.MLP2"
    image_shape: List[int] = MISSING
    hidden_dim: int = 4096
    class_embed_dim: int = 239
    classes: Optional[int] = None


@dataclass
class AutoencoderConfig:
    _target_: str = "mindiff.models.autoencoder.Autoencoder"
    in_channels: int = 3
    hidden: List[int] = field(default_factory=lambda: [32, 64, 128])
    latent_channels: int = 8
    groups: int = 8


@dataclass
class ConvAdaLNConfig:
    _target_: str = "mindiff.models.conv_adaln.ConvAdaLN"
    in_channels: int = MISSING
    hidden: int = 256
    blocks: int = 8
    class_embed_dim: int = 256
    classes: Optional[int] = None
    groups: int = 32


# ---- schedule (what is learned and how it is sampled) ----------------------------------------
@dataclass
class AlphaBlendConfig:
    _target_: str = "mindiff.objectives.AlphaBlend"
    t_sampling: str = "uniform"  # uniform | logit_normal
    loss_terms: List[str] = field(default_factory=lambda: ["target", "eps", "x0"])
    sample_steps: int = 32


@dataclass
class ReconstructionConfig:
    _target_: str = "mindiff.objectives.Reconstruction"
    ssim_weight: float = 1.0
    eval_images: int = 2000


# ---- optim -----------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    _target_: str = "mindiff.optim.Optimizer"
    algorithm: str = MISSING  # schedulefree_adamw | adamw
    lr: float = 2e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 0
    decay: str = "none"  # none | cosine
    min_lr: float = 0.0
    fused: bool = False


# ---- trainer ---------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    epochs: int = 100
    batch_size: int = 512
    max_steps: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    sample_every: int = 1
    sample_epochs: List[int] = field(default_factory=list)
    sample_grid: int = 16  # the grid is sample_grid x sample_grid images
    sample_seed: int = 0  # noise bank for grids: the same for every epoch and every run
    ckpt_every: int = 10
    keep_last: Optional[int] = None  # epoch snapshots to keep (plus sample_epochs'); null: all
    log_every: int = 10  # steps between host syncs for the loss log
    resume: Optional[str] = None  # null | auto | PATH


# ---- eval ------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    every: Optional[int] = 1  # epochs between evaluations; null: never
    n: int = 1000
    seed: int = 0
    classifier_epochs: int = 3
    fid: bool = False
    inception_weights: Optional[str] = None  # PATH | download | null (torch hub cache)
    cache_dir: str = "~/.cache/mindiff"
    objective: str = "final_loss"  # the metric train() returns, e.g. for Optuna: final_loss | eval/fld | ...


# ---- logger ----------------------------------------------------------------------------------
@dataclass
class LoggerConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "mindiff"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_checkpoints: bool = False


SCHEMAS = {
    "dataset": {"torchvision_schema": TorchvisionDatasetConfig, "image_folder_schema": ImageFolderConfig,
                "tiny_schema": TinyDatasetConfig},
    "model": {"mlp2_schema": MLP2Config, "autoencoder_schema": AutoencoderConfig, "conv_adaln_schema": ConvAdaLNConfig},
    "schedule": {"alpha_blend_schema": AlphaBlendConfig, "reconstruction_schema": ReconstructionConfig},
    "optim": {"optim_schema": OptimConfig},
    "trainer": {"trainer_schema": TrainerConfig},
    "eval": {"eval_schema": EvalConfig},
    "logger": {"wandb_schema": LoggerConfig},
}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
CHOICES = {
    ("trainer", "device"): DEVICES,
    ("trainer", "precision"): PRECISIONS,
    ("logger", "mode"): ("auto", "online", "offline", "disabled"),
    ("optim", "algorithm"): ("schedulefree_adamw", "adamw"),
    ("optim", "decay"): ("none", "cosine"),
    ("schedule", "t_sampling"): ("uniform", "logit_normal"),
}
POSITIVE = [
    ("trainer", "epochs"), ("trainer", "batch_size"), ("trainer", "max_steps"),
    ("trainer", "sample_every"), ("trainer", "sample_grid"), ("trainer", "ckpt_every"),
    ("trainer", "log_every"), ("optim", "lr"), ("schedule", "sample_steps"), ("eval", "every"), ("eval", "n"),
    ("eval", "classifier_epochs"), ("trainer", "keep_last"),
    ("dataset", "channels"), ("dataset", "image_size"), ("dataset", "num_classes"), ("dataset", "resolution"),
    ("dataset", "train_size"), ("dataset", "test_size"),
]
NOT_NEGATIVE = [("optim", "weight_decay"), ("optim", "min_lr"), ("optim", "warmup_steps"),
                ("schedule", "ssim_weight")]
LOSS_TERMS = ("target", "eps", "x0", "ssim")


class ConfigError(UserError, ValueError):
    """A config value that has the right type but cannot work; the message says what to change."""


def missing_cpp_compiler() -> Optional[str]:
    """Why torch.compile cannot build CPU kernels on this machine, or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: torch.compile reports it itself
        return None
    try:
        get_cpp_compiler()
    except Exception as e:
        return str(e).splitlines()[0]
    return None


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def check_device(requested: str, key: str = "trainer.device") -> None:
    """`key`: the setting's name as the user typed it (trainer.device, or a CLI's device)."""
    check_choice(key, requested, DEVICES)
    if requested == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}=cuda but no CUDA device is visible; use {key}=auto or {key}=cpu")


def _check_finite(node, key: str = "") -> None:
    """nan and inf pass every range check (nan <= 0 is False), so every float is checked for them."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} must be a finite number")


def validate(cfg: DictConfig) -> None:
    """Check the value ranges of a composed config, raising ConfigError naming the key."""

    def get(group: str, key: str) -> Any:
        return cfg.get(group, {}).get(key) if group in cfg else None

    _check_finite(OmegaConf.to_container(cfg, resolve=False))
    for (group, key), allowed in CHOICES.items():
        value = get(group, key)
        if value is not None:
            check_choice(f"{group}.{key}", value, allowed)
    for group, key in POSITIVE:
        value = get(group, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{group}.{key}={value} must be > 0")
    for group, key in NOT_NEGATIVE:
        value = get(group, key)
        if value is not None and value < 0:
            raise ConfigError(f"{group}.{key}={value} must be >= 0")
    for i, beta in enumerate(get("optim", "betas") or []):
        if not 0 <= beta < 1:
            raise ConfigError(f"optim.betas[{i}]={beta} must be in [0, 1)")
    fraction = get("dataset", "test_fraction")
    if fraction is not None and not 0 < fraction < 1:
        raise ConfigError(f"dataset.test_fraction={fraction} must be between 0 and 1")
    check_device(get("trainer", "device") or "auto")
    for term in get("schedule", "loss_terms") or []:
        if term not in LOSS_TERMS:
            raise ConfigError(f"schedule.loss_terms has {term!r}; each term must be one of {', '.join(LOSS_TERMS)}")
    compiled = [knob for knob, on in (("trainer.compile", get("trainer", "compile")),
                                      ("optim.fused", get("optim", "fused") and get("optim", "algorithm") == "schedulefree_adamw"))
                if on]
    if compiled and get("trainer", "device") != "cuda":
        import torch
        why = None if torch.cuda.is_available() and get("trainer", "device") == "auto" else missing_cpp_compiler()
        if why:
            knobs = " and ".join(f"{k}=true" for k in compiled)
            raise ConfigError(f"{knobs} compile CPU kernels, which needs a C++ compiler ({why}); install one "
                              f"(e.g. apt-get install g++) or set {' and '.join(f'{k}=false' for k in compiled)}")


register_schemas()
