"""Models, objectives, datasets and optimizers from configs: a run's composed config, or the config
stored in a checkpoint.

A checkpoint is data, never code: nothing here hands a config to hydra's `instantiate`. A group's
`_target_` must name one of mindiff's own classes in ALLOWED, every other key must be a parameter of
that class, and every value plain data (numbers, strings, booleans, null, lists of them); the rest of
a stored config may hold plain mappings too, but no key such as `_target_`, `_args_` or `_partial_`
at any depth and no interpolation. Anything else is refused, naming the file and the key, before any
object is built.
"""

import inspect
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from mindiff import data, stored
from mindiff.checkpoint import CheckpointError, load_checkpoint
from mindiff.config import ConfigError
from mindiff.values import check_guidance
from mindiff.errors import first_line
from mindiff.models.autoencoder import Autoencoder
from mindiff.models.conv_adaln import ConvAdaLN
from mindiff.models.mlp2 import MLP2
from mindiff.objectives import AlphaBlend, InLatentSpace, Reconstruction
from mindiff.optim import Optimizer

ALLOWED = {  # group -> {_target_: what it builds}; a new model is one line here besides its file and YAML
    "dataset": {f"mindiff.data.{f.__name__}": f for f in (data.mnist, data.fashion_mnist, data.cifar10,
                                                            data.image_folder, data.tiny)},
    "model": {"mindiff.models.mlp2.MLP2": MLP2, "mindiff.models.autoencoder.Autoencoder": Autoencoder,
              "mindiff.models.conv_adaln.ConvAdaLN": ConvAdaLN},
    "schedule": {"mindiff.objectives.AlphaBlend": AlphaBlend, "mindiff.objectives.Reconstruction": Reconstruction},
    "optim": {"mindiff.optim.Optimizer": Optimizer},
}
PLAIN = (str, int, float, bool, type(None))
MAX_PARAMETERS = 10**9  # a bound on any model mindiff builds, typed or read from a file: counted before allocation


def _refused(source: Optional[str], why: str) -> Exception:
    if source is None:  # the run's own composed config
        return ConfigError(why)
    return CheckpointError(f"{source} was refused: {why} (a checkpoint is data; it may only name mindiff's own "
                           f"classes, with plain values)")


def _check_plain(value, key: str, source: Optional[str], mappings: bool = True) -> None:
    if isinstance(value, dict):
        if not mappings:
            raise _refused(source, f"{key} holds a mapping; a parameter takes numbers, strings, booleans, null or lists")
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("_"):
                raise _refused(source, f"{key}.{k} is not allowed: keys such as _target_, _args_ and _partial_ "
                                       f"name code to run")
            _check_plain(v, f"{key}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]", source, mappings)
    elif isinstance(value, str) and "${" in value:
        raise _refused(source, f"{key}={value!r} is an interpolation; a stored config holds resolved values only")
    elif not isinstance(value, PLAIN):
        raise _refused(source, f"{key} holds a {type(value).__name__}")


def check_node(node, group: str, source: Optional[str] = None, supplied: Sequence[str] = ()):
    """(the class `node` names, its keyword arguments), after checking both against the allowlist."""
    allowed = ALLOWED[group]
    if not isinstance(node, dict) or "_target_" not in node:
        raise _refused(source, f"{group} must be a mapping with a _target_ (one of {', '.join(allowed)})")
    target = node["_target_"]
    if not isinstance(target, str) or target not in allowed:
        raise _refused(source, f"{group}._target_={target!r} is not one of mindiff's own: {', '.join(allowed)}")
    params = inspect.signature(allowed[target]).parameters
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    for k, v in kwargs.items():
        if k not in params or k in supplied:
            raise _refused(source, f"{group}.{k} is not a setting of {target}")
        _check_plain(v, f"{group}.{k}", source, mappings=False)
    for name, param in params.items():
        required = param.default is param.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        if required and name not in kwargs and name not in supplied and name != "params":
            raise _refused(source, f"{group}.{name} is missing (a setting {target} needs)")
    return allowed[target], kwargs


def check_config(config, source: Optional[str] = None) -> None:
    """A whole run config (resolved, as plain containers), checked at every depth."""
    if not isinstance(config, dict):
        raise _refused(source, "its config is not a mapping")
    for group in ALLOWED:
        if group not in config:
            raise _refused(source, f"its config has no {group}")
    for key, node in config.items():
        if not isinstance(key, str) or key.startswith("_"):
            raise _refused(source, f"{key} is not allowed: keys such as _target_ and _args_ name code to run")
        if key in ALLOWED:
            check_node(node, key, source, supplied=("params", "total_steps", "capturable") if key == "optim" else ())
        else:
            _check_plain(node, key, source)


def build(node: dict, group: str, source: Optional[str] = None, *args, **supplied):
    """The object a checked config node describes; `args`/`supplied`: what the caller provides. A model is
    first built on the meta device (no memory), so its size is known, and bounded, before it is allocated."""
    cls, kwargs = check_node(node, group, source, supplied=tuple(supplied))
    if group == "model":
        measure_model(cls, kwargs, source)
    return cls(*args, **kwargs, **supplied)


def measure_model(cls, kwargs: dict, source: Optional[str]) -> torch.nn.Module:
    """The model on the meta device: what it would allocate, refused past MAX_PARAMETERS or when its settings
    cannot build it (a width that its groups do not divide, say)."""
    try:
        with torch.device("meta"):
            model = cls(**kwargs)
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
        raise _refused(source, f"model: {cls.__name__} cannot be built from these settings ({first_line(e)}); "
                               f"change the model.* settings") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise _refused(source, f"model: these settings make a {cls.__name__} of {n:,} parameters, past mindiff's "
                               f"bound of {MAX_PARAMETERS:,} ({4 * MAX_PARAMETERS / 2**30:.0f} GiB of fp32 weights); "
                               f"make it smaller (model.hidden_dim, model.hidden, model.blocks)")
    return model


def read_checkpoint(path, kind: Optional[str] = None) -> dict:
    """A checkpoint whose config (and embedded autoencoder's) passed the allowlist, and whose every entry and
    config value passed the checks a typed one does (mindiff.stored)."""
    state = load_checkpoint(path, kind)
    check_config(state.get("config"), str(path))
    stored.check_state(state, str(path))
    autoencoder = state.get("autoencoder")
    if autoencoder is not None:
        source = f"{path} (its embedded autoencoder)"
        if not isinstance(autoencoder.get("model"), dict) or set(autoencoder) != {"config", "model"}:
            raise _refused(str(path), "its embedded autoencoder is not {config, model}")
        check_config(autoencoder.get("config"), source)
        stored.check_config_values(autoencoder["config"], source)
        stored.weights(autoencoder["model"], "model", source)
    return state


def model_with_weights(node: dict, weights: dict, source: str) -> torch.nn.Module:
    """The model a stored config describes, holding the stored weights; their names and shapes are checked
    against the meta-built model first, so nothing larger than the file is ever allocated."""
    cls, kwargs = check_node(node, "model", source)
    stored.check_shapes(measure_model(cls, kwargs, source).state_dict(), weights, source)
    model = cls(**kwargs)
    model.load_state_dict(weights)
    return model


def load_autoencoder(path) -> dict:
    """The frozen autoencoder of a latent run, as {"config", "model"} (what a denoiser's checkpoint embeds)."""
    state = read_checkpoint(path, kind="autoencoder")
    return {"config": state["config"], "model": state["model"]}


def autoencoder_model(autoencoder: dict, source: str) -> Autoencoder:
    """Rebuilt from the config saved with it, so its architecture is never repeated (and cannot disagree)."""
    node = autoencoder["config"]["model"]
    if ALLOWED["model"].get(node.get("_target_")) is not Autoencoder:
        raise CheckpointError(f"{source}: its model is a {node.get('_target_')}, not an autoencoder")
    return model_with_weights(node, autoencoder["model"], source)


def input_shape(autoencoder_ckpt: Optional[str], channels: int, image_size: int) -> List[int]:
    """The shape a denoiser sees: the image's, or the latent's when it trains on an autoencoder's latents
    (read from that checkpoint's own config, so the user never repeats it). The YAML asks for it through
    the `mindiff.input_shape` / `mindiff.input_channels` resolvers registered below."""
    if not autoencoder_ckpt:
        return [channels, image_size, image_size]
    path = Path(autoencoder_ckpt)
    mtime = path.stat().st_mtime_ns if path.is_file() else None  # a missing file fails with its message below
    return list(_latent_shape(str(path), mtime, (channels, image_size, image_size)))


@lru_cache(maxsize=8)
def _latent_shape(path: str, mtime: Optional[int], image_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Cached per checkpoint version: the interpolation resolves several times per run."""
    autoencoder = autoencoder_model(load_autoencoder(path), path)
    if image_shape[1] % autoencoder.factor or image_shape[2] % autoencoder.factor:
        raise ConfigError(f"dataset.image_size={image_shape[1]} is not a multiple of the autoencoder's factor "
                          f"{autoencoder.factor} ({path}); use e.g. dataset.image_size="
                          f"{max(1, image_shape[1] // autoencoder.factor) * autoencoder.factor}")
    return tuple(autoencoder.latent_shape(image_shape))


OmegaConf.register_new_resolver("mindiff.input_shape", input_shape, replace=True)
OmegaConf.register_new_resolver("mindiff.input_channels", lambda *a: input_shape(*a)[0], replace=True)


def objective_for(schedule: dict, autoencoder: Optional[dict] = None, source: Optional[str] = None):
    """The run's objective; with an autoencoder, the same diffusion on its latents."""
    built = build(schedule, "schedule", source)
    if autoencoder is None:
        return built
    return InLatentSpace(built, autoencoder_model(autoencoder, source or "autoencoder.ckpt"))


def from_checkpoint(state: dict, source, device="cpu", schedule: Optional[dict] = None
                    ) -> Tuple[torch.nn.Module, object, DictConfig]:
    """(model with inference weights, objective, config) from a checkpoint that read_checkpoint passed;
    `schedule`: settings that replace the run's own (a CLI's steps, sampler, guidance), checked alike."""
    config = state["config"]
    if schedule and "guidance" in schedule:
        check_guidance(schedule["guidance"], config["schedule"].get("label_dropout", 0.0), key="guidance")
    model = model_with_weights(config["model"], state["model"], str(source))
    objective = objective_for({**config["schedule"], **(schedule or {})}, state.get("autoencoder"),
                              f"{source} (its embedded autoencoder)")
    ds = config["dataset"]
    image_shape = (ds["channels"], ds["image_size"], ds["image_size"])
    check_fits(config["model"], objective.kind,
               image_shape if objective.kind == "autoencoder" else objective.sample_shape(image_shape), str(source))
    return model.to(device).eval(), objective, OmegaConf.create(config)


def plain(cfg: DictConfig) -> dict:
    """A composed config as resolved plain containers, checked as a stored one would be, and its model checked
    to fit its data."""
    config = OmegaConf.to_container(cfg, resolve=True)
    check_config(config)
    ds = config["dataset"]
    check_fits(config["model"], ALLOWED["schedule"][config["schedule"]["_target_"]].kind,
               input_shape(config["autoencoder"]["ckpt"], ds["channels"], ds["image_size"]))
    return config


def check_fits(node: dict, kind: str, shape, source: Optional[str] = None) -> None:
    """One batch of `shape` through the model `node` describes, on the meta device (no memory, no time): a model
    whose channels or sizes do not fit the data is refused before any work, not minutes in."""
    model = measure_model(*check_node(node, "model", source), source)
    x = torch.zeros(2, *shape, device="meta")
    try:
        if kind == "autoencoder":
            out = model(x)
        else:
            out = model(x, torch.zeros(2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
        if out.shape != x.shape:
            raise ValueError(f"it returns {tuple(out.shape[1:])}")
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise _refused(source, f"model does not fit the data: {node['_target_']} on {tuple(shape)} inputs fails "
                               f"({first_line(e)}); make model.* agree with dataset.channels and dataset.image_size"
                       ) from None
