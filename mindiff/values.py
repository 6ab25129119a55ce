"""What a config value may be: choices, ranges, upper bounds and the settings that must agree. The same checks
run on a run's composed config and on a config read back from a checkpoint (mindiff.stored), so a file can ask
nothing of this machine that the command line could not."""

import math
from typing import Any, Optional

from omegaconf import MISSING

from mindiff.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
SAMPLERS = ("euler", "heun")
OBJECTIVES = ("final_loss", "eval/fld", "eval/class_accuracy", "eval/fld_floor", "eval/psnr", "eval/ssim", "eval/fid")
CHOICES = {
    ("trainer", "device"): DEVICES,
    ("trainer", "precision"): PRECISIONS,
    ("trainer", "speed"): ("manual", "auto"),
    ("logger", "mode"): ("auto", "online", "offline", "disabled"),
    ("optim", "algorithm"): ("schedulefree_adamw", "adamw"),
    ("optim", "decay"): ("none", "cosine"),
    ("schedule", "t_sampling"): ("uniform", "logit_normal"),
    ("schedule", "sampler"): SAMPLERS,
    ("eval", "objective"): OBJECTIVES,
    ("dataset", "channels"): (1, 3),
}
POSITIVE = [
    ("trainer", "epochs"), ("trainer", "batch_size"), ("trainer", "max_steps"),
    ("trainer", "sample_every"), ("trainer", "sample_grid"), ("trainer", "ckpt_every"),
    ("trainer", "log_every"), ("optim", "lr"), ("schedule", "sample_steps"), ("eval", "every"), ("eval", "n"),
    ("eval", "classifier_epochs"), ("trainer", "keep_last"), ("schedule", "eval_images"),
    ("dataset", "image_size"), ("dataset", "num_classes"), ("dataset", "resolution"),
    ("dataset", "train_size"), ("dataset", "test_size"),
    ("model", "hidden_dim"), ("model", "class_embed_dim"), ("model", "classes"), ("model", "in_channels"),
    ("model", "latent_channels"), ("model", "groups"), ("model", "hidden"), ("model", "blocks"),
]
NOT_NEGATIVE = [("optim", "weight_decay"), ("optim", "min_lr"), ("optim", "warmup_steps"),
                ("schedule", "ssim_weight"), ("schedule", "guidance"), ("trainer", "seed"), ("trainer", "sample_seed"),
                ("eval", "seed"), ("dataset", "seed")]
# Upper bounds: what a run, or a file read back, may ask of this machine's time and memory. The model's own size is
# bounded by MAX_PARAMETERS (build.py), counted before any weight is allocated.
AT_MOST = {
    ("trainer", "epochs"): 10**7, ("trainer", "batch_size"): 2**20, ("trainer", "max_steps"): 10**10,
    ("trainer", "sample_grid"): 64, ("trainer", "seed"): 2**32 - 1, ("trainer", "sample_seed"): 2**32 - 1,
    ("optim", "lr"): 10.0, ("optim", "warmup_steps"): 10**10, ("schedule", "sample_steps"): 10_000,
    ("schedule", "guidance"): 100.0, ("schedule", "eval_images"): 10**6, ("schedule", "ssim_weight"): 1000.0,
    ("eval", "n"): 10**6, ("eval", "classifier_epochs"): 1000, ("eval", "seed"): 2**32 - 1,
    ("dataset", "image_size"): 1024, ("dataset", "resolution"): 1024, ("dataset", "num_classes"): 100_000,
    ("dataset", "train_size"): 10**6, ("dataset", "test_size"): 10**6, ("dataset", "seed"): 2**32 - 1,
    ("model", "classes"): 100_000, ("model", "blocks"): 1000,
}
LOSS_TERMS = ("target", "eps", "x0", "ssim")


class ConfigError(UserError, ValueError):
    """A config value that has the right type but cannot work; the message says what to change."""


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


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


def check_leaves(config: dict) -> None:
    """nan and inf pass every range check (nan <= 0 is False), so every float is checked for them; a key
    left ??? (no YAML gave it a value) is named here rather than read as the text '???'."""
    for key, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
        if value == MISSING and not key.startswith("hydra."):
            raise ConfigError(f"{key} has no value; set it, e.g. {key}=...")


def _numbers(value) -> list:
    return value if isinstance(value, list) else [value]


def check_values(config: dict) -> None:
    """The value checks of a config (a run's composed one, or one read from a file), as plain containers: every
    leaf finite and set, choices, ranges, bounds and the settings that must agree. Raises ConfigError naming the key."""

    def get(group: str, key: str) -> Any:
        node = config.get(group)
        return node.get(key) if isinstance(node, dict) else None

    check_leaves(config)
    for (group, key), allowed in CHOICES.items():
        value = get(group, key)
        if value is not None:
            check_choice(f"{group}.{key}", value, allowed)
    for group, key in POSITIVE:
        for value in _numbers(get(group, key)):
            if value is not None and value <= 0:
                raise ConfigError(f"{group}.{key}={get(group, key)} must be > 0")
    for group, key in NOT_NEGATIVE:
        value = get(group, key)
        if value is not None and value < 0:
            raise ConfigError(f"{group}.{key}={value} must be >= 0")
    for (group, key), bound in AT_MOST.items():
        value = get(group, key)
        if value is not None and value > bound:
            raise ConfigError(f"{group}.{key}={value} is past mindiff's bound of {bound:g}; lower it")
    for epoch in get("trainer", "sample_epochs") or []:
        if not 0 < epoch <= 10**7:
            raise ConfigError(f"trainer.sample_epochs has {epoch}; each must be an epoch number from 1")
    for key in ("image_shape",):
        for size in get("model", key) or []:
            if not 0 < size <= 4096:
                raise ConfigError(f"model.{key}={get('model', key)}: each size must be in 1..4096")
    betas = get("optim", "betas")
    if betas is not None:
        if len(betas) != 2:
            raise ConfigError(f"optim.betas={betas} must be two numbers, e.g. [0.9,0.999]")
        for i, beta in enumerate(betas):
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
    check_objective(config)
    if dropout is not None:  # a CLI's guidance alone is checked against its checkpoint's dropout (build.py)
        check_guidance(get("schedule", "guidance"), dropout)
    for term in get("schedule", "loss_terms") or []:
        if term not in LOSS_TERMS:
            raise ConfigError(f"schedule.loss_terms has {term!r}; each term must be one of {', '.join(LOSS_TERMS)}")


SCORED_BY = {"eval/psnr": "mindiff.objectives.Reconstruction", "eval/ssim": "mindiff.objectives.Reconstruction",
             "eval/class_accuracy": "mindiff.objectives.AlphaBlend"}


def check_objective(config: dict) -> None:
    """What a run returns to a sweeper must be a number the run produces, never a NaN the sweeper ranks."""
    ev, schedule = config.get("eval") or {}, config.get("schedule") or {}
    objective = ev.get("objective") if isinstance(ev, dict) else None
    if not isinstance(objective, str) or not objective.startswith("eval/"):
        return
    if "every" in ev and ev["every"] is None:
        raise ConfigError(f"eval.objective={objective} is a score, but eval.every=null never scores; set eval.every, "
                          f"or eval.objective=final_loss")
    target = schedule.get("_target_") if isinstance(schedule, dict) else None
    if objective in SCORED_BY and target is not None and target != SCORED_BY[objective]:
        raise ConfigError(f"eval.objective={objective} is not scored for {target}; choose one of "
                          f"{', '.join(k for k, v in SCORED_BY.items() if v == target)}, eval/fld or final_loss")
    if objective == "eval/fid" and ev.get("fid") is False:
        raise ConfigError("eval.objective=eval/fid needs eval.fid=true")


def check_guidance(guidance: Optional[float], label_dropout: Optional[float], key: str = "schedule.guidance") -> None:
    """Guidance mixes in the null class's prediction, which only a model trained with label dropout has learned."""
    if guidance is not None and guidance != 1 and not label_dropout:
        raise ConfigError(f"{key}={guidance} needs a model trained with schedule.label_dropout > 0 (this one: "
                          f"{label_dropout or 0}); use guidance 1, or train with e.g. schedule.label_dropout=0.1")
