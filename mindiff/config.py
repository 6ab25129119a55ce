"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/<name>.yaml` extends its schema (`defaults: [<name>_schema]`),
so a wrong type fails at composition with the key's name, before any work starts. The schemas hold
types only: every value, `_target_` included, has one home, the YAML option that sets it.
Value ranges that a type cannot express, and keys left `???`, are checked by `validate`.
"""

import math
from pathlib import Path
from dataclasses import field, make_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mindiff.errors import UserError, first_line

CONF = Path(__file__).resolve().parents[1] / "conf"  # the config groups' YAML files


def schema(name: str, *bases: type, **types: Any) -> type:
    """A dataclass of types only: every field MISSING, so its one value lives in the YAML option(s) that extend it."""
    return make_dataclass(name, [(key, t, field(default=MISSING)) for key, t in types.items()], bases=bases)


DatasetConfig = schema("DatasetConfig", _target_=str, channels=int, image_size=int, num_classes=int, hflip=bool)
TorchvisionDatasetConfig = schema("TorchvisionDatasetConfig", DatasetConfig, root=str, download=bool)
ImageFolderConfig = schema("ImageFolderConfig", DatasetConfig, root=str, test_root=Optional[str], test_fraction=float,
                           resolution=int, cache_dir=str, seed=int)
TinyDatasetConfig = schema("TinyDatasetConfig", DatasetConfig, train_size=int, test_size=int, seed=int)

MLP2Config = schema("MLP2Config", _target_=str, image_shape=List[int], hidden_dim=int, class_embed_dim=int,
                    classes=Optional[int])
AutoencoderConfig = schema("AutoencoderConfig", _target_=str, in_channels=int, hidden=List[int], latent_channels=int,
                           groups=int)
ConvAdaLNConfig = schema("ConvAdaLNConfig", _target_=str, in_channels=int, hidden=int, blocks=int, class_embed_dim=int,
                         classes=Optional[int], groups=int)

AlphaBlendConfig = schema("AlphaBlendConfig", _target_=str, t_sampling=str, loss_terms=List[str], sample_steps=int,
                          sampler=str, guidance=float, label_dropout=float)
ReconstructionConfig = schema("ReconstructionConfig", _target_=str, ssim_weight=float, eval_images=int)

OptimConfig = schema("OptimConfig", _target_=str, algorithm=str, lr=float, betas=List[float], weight_decay=float,
                     warmup_steps=int, decay=str, min_lr=float, fused=bool, ema=Optional[float])
TrainerConfig = schema("TrainerConfig", epochs=int, batch_size=int, max_steps=Optional[int], device=str, precision=str,
                       channels_last=bool, compile=bool, speed=str, cuda_graph=bool, tf32=bool, seed=int,
                       sample_every=int, sample_epochs=List[int], sample_grid=int, sample_seed=int, ckpt_every=int,
                       keep_last=Optional[int], log_every=int, resume=Optional[str])
EvalConfig = schema("EvalConfig", every=Optional[int], at_max_steps=bool, n=int, seed=int, classifier_epochs=int,
                    min_classifier_accuracy=Optional[float], fid=bool, inception_weights=Optional[str], cache_dir=str,
                    objective=str)
LoggerConfig = schema("LoggerConfig", mode=str, project=str, entity=Optional[str], group=Optional[str], tags=List[str],
                      log_checkpoints=bool)


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
SAMPLERS = ("euler", "heun")
CHOICES = {
    ("trainer", "device"): DEVICES,
    ("trainer", "precision"): PRECISIONS,
    ("trainer", "speed"): ("manual", "auto"),
    ("logger", "mode"): ("auto", "online", "offline", "disabled"),
    ("optim", "algorithm"): ("schedulefree_adamw", "adamw"),
    ("optim", "decay"): ("none", "cosine"),
    ("schedule", "t_sampling"): ("uniform", "logit_normal"),
    ("schedule", "sampler"): SAMPLERS,
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
                ("schedule", "ssim_weight"), ("schedule", "guidance")]
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
        return first_line(e)
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


def _leaves(node, key: str = ""):
    """(dotted key, value) of every leaf of a plain container."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def _check_leaves(cfg: DictConfig) -> None:
    """nan and inf pass every range check (nan <= 0 is False), so every float is checked for them; a key
    left ??? (no YAML gave it a value) is named here rather than read as the text '???'."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
        if value == MISSING and not key.startswith("hydra."):
            raise ConfigError(f"{key} has no value; set it, e.g. {key}=...")


def validate(cfg: DictConfig) -> None:
    """Check the value ranges of a composed config, raising ConfigError naming the key."""

    def get(group: str, key: str) -> Any:
        return cfg.get(group, {}).get(key) if group in cfg else None

    _check_leaves(cfg)
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
    ema = get("optim", "ema")
    if ema is not None and not 0 < ema < 1:
        raise ConfigError(f"optim.ema={ema} must be a decay in (0, 1), e.g. 0.999, or null for no EMA")
    floor = get("eval", "min_classifier_accuracy")
    if floor is not None and not 0 <= floor <= 1:
        raise ConfigError(f"eval.min_classifier_accuracy={floor} must be in [0, 1]: a held-out accuracy (0: no floor)")
    dropout = get("schedule", "label_dropout")
    if dropout is not None and not 0 <= dropout < 1:
        raise ConfigError(f"schedule.label_dropout={dropout} must be in [0, 1): the share of labels replaced by "
                          f"the null class")
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
