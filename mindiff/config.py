"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/<name>.yaml` extends its schema (`defaults: [<name>_schema]`),
so a wrong type fails at composition with the key's name, before any work starts. The schemas hold
types only: every value, `_target_` included, has one home, the YAML option that sets it.
Value ranges that a type cannot express, and keys left `???`, are checked by `validate`.
"""

from pathlib import Path
from dataclasses import field, make_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mindiff.errors import first_line
from mindiff.values import (DEVICES, PRECISIONS, SAMPLERS, ConfigError, check_choice,  # noqa: F401 (re-exported)
                            check_values, check_leaves)

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


def check_device(requested: str, key: str = "trainer.device") -> None:
    """`key`: the setting's name as the user typed it (trainer.device, or a CLI's device)."""
    check_choice(key, requested, DEVICES)
    if requested == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}=cuda but no CUDA device is visible; use {key}=auto or {key}=cpu")


def validate(cfg: DictConfig) -> None:
    """Check a composed config's values, and what it asks of this machine, raising ConfigError naming the key."""
    if not OmegaConf.has_resolver("mindiff.input_shape"):  # a bug, not a user error: resolving needs them
        raise RuntimeError("validate resolves the config: import mindiff.build first (it registers mindiff's resolvers)")
    node = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    check_leaves(OmegaConf.to_container(node, resolve=False))  # ??? is named before resolving trips on it
    check_values(OmegaConf.to_container(node, resolve=True))
    trainer, optim = cfg.get("trainer", {}), cfg.get("optim", {})
    check_device(trainer.get("device") or "auto")
    compiled = [knob for knob, on in (("trainer.compile", trainer.get("compile")),
                                      ("optim.fused", optim.get("fused") and optim.get("algorithm") == "schedulefree_adamw"))
                if on]
    if compiled and trainer.get("device") != "cuda":
        import torch
        why = None if torch.cuda.is_available() and trainer.get("device") == "auto" else missing_cpp_compiler()
        if why:
            knobs = " and ".join(f"{k}=true" for k in compiled)
            raise ConfigError(f"{knobs} compile CPU kernels, which needs a C++ compiler ({why}); install one "
                              f"(e.g. apt-get install g++) or set {' and '.join(f'{k}=false' for k in compiled)}")


register_schemas()
