"""What a checkpoint may hold. A file is untrusted data: build.py lets its config name only mindiff's own
classes; here every value in that config passes the checks a typed one does (the schema's types, then
values.check_values), and every top-level entry has a type and bounds. Nothing is built before this passes;
each refusal is one line naming the file and the key (CheckpointError: exit code 2)."""

import math
import re
from dataclasses import fields
from typing import Callable, Dict

import torch
from omegaconf import OmegaConf

from mindiff import config as schemas
from mindiff.checkpoint import KIND_USES, CheckpointError
from mindiff.errors import first_line
from mindiff.values import ConfigError, check_values

TORCHVISION = schemas.TorchvisionDatasetConfig
SCHEMA_OF_TARGET = {
    "mindiff.data.mnist": TORCHVISION, "mindiff.data.fashion_mnist": TORCHVISION, "mindiff.data.cifar10": TORCHVISION,
    "mindiff.data.image_folder": schemas.ImageFolderConfig, "mindiff.data.tiny": schemas.TinyDatasetConfig,
    "mindiff.models.mlp2.MLP2": schemas.MLP2Config, "mindiff.models.autoencoder.Autoencoder": schemas.AutoencoderConfig,
    "mindiff.models.conv_adaln.ConvAdaLN": schemas.ConvAdaLNConfig,
    "mindiff.objectives.AlphaBlend": schemas.AlphaBlendConfig,
    "mindiff.objectives.Reconstruction": schemas.ReconstructionConfig, "mindiff.optim.Optimizer": schemas.OptimConfig,
}
SCHEMA_OF_GROUP = {"trainer": schemas.TrainerConfig, "eval": schemas.EvalConfig, "logger": schemas.LoggerConfig}
READ = ("channels", "image_size", "num_classes")  # the dataset keys the sampling CLIs read from a stored config
MAX_ENTRIES = 100_000  # tensors in a state dict, metrics in a record: far past any mindiff model
MAX_COUNT = 10**12  # epochs, steps, images
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def refused(source, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{source} was refused: {key} {why} (a value read from a file passes the same checks as "
                           f"one typed)")


def typed_group(group: str, node: dict, source) -> dict:
    """`node`'s values through the group's schema: the type each key has on the command line."""
    schema = SCHEMA_OF_GROUP.get(group) or SCHEMA_OF_TARGET.get(node.get("_target_"))
    if schema is None:
        return node
    names = {f.name for f in fields(schema)}
    typed = OmegaConf.structured(schema)
    for key, value in node.items():
        if key not in names:
            raise refused(source, f"{group}.{key}", "is not a setting mindiff knows")
        try:
            typed[key] = value
        except Exception as e:  # OmegaConf's ValidationError: the value cannot have the key's type
            raise refused(source, f"{group}.{key}={value!r}", f"has the wrong type ({first_line(e)})") from None
    return {key: OmegaConf.to_container(typed, resolve=False)[key] for key in node}


def check_config_values(config: dict, source) -> None:
    """A stored config (already past build.check_config) checked as a typed one: types, then values."""
    typed = {group: typed_group(group, node, source) if isinstance(node, dict) else node
             for group, node in config.items()}
    dataset = typed.get("dataset", {})
    for key in READ:
        if key not in dataset:
            raise refused(source, f"dataset.{key}", "is missing")
    try:
        check_values(typed)
    except ConfigError as e:
        raise CheckpointError(f"{source} was refused: {e} (a value read from a file passes the same checks as one "
                              f"typed)") from None


def count(value, key: str, source, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_COUNT:
        raise refused(source, f"{key}={value!r}", f"must be a whole number from {least} to {MAX_COUNT:g}")


def weights(value, key: str, source) -> None:
    """A state dict: names to tensors, nothing else."""
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise refused(source, key, "must be a state dict (names to tensors)")
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise refused(source, f"{key}[{name!r}]", "must be a tensor")


def check_shapes(expected: Dict[str, torch.Tensor], stored: dict, source, key: str = "model") -> None:
    """The stored weights have exactly the names and shapes of the model the stored config builds (`expected`,
    built on the meta device): checked before a real model is allocated, so memory is what the file holds."""
    missing, extra = expected.keys() - stored.keys(), stored.keys() - expected.keys()
    if missing or extra:
        names = ", ".join(sorted(missing)[:3] + sorted(extra)[:3])
        raise refused(source, key, f"does not fit the model its config builds (names differ: {names})")
    for name, tensor in expected.items():
        if tuple(stored[name].shape) != tuple(tensor.shape) or not stored[name].dtype.is_floating_point:
            raise refused(source, f"{key}[{name!r}]", f"is {stored[name].dtype} {tuple(stored[name].shape)}, but its "
                                                       f"config builds {tuple(tensor.shape)}")


def rng(value, key: str, source) -> None:
    size = torch.get_rng_state().shape
    cpu = value.get("cpu") if isinstance(value, dict) else None
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8 or cpu.shape != size:
        raise refused(source, key, f"must hold the CPU generator's state (uint8, {tuple(size)})")
    cuda = value.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                       for t in cuda) or len(cuda) > 1024:
        raise refused(source, f"{key}.cuda", "must be a list of CUDA generator states")


def metrics(value, key: str, source) -> None:
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise refused(source, key, "must be a mapping of metric names to numbers")
    for name, number in value.items():
        if not isinstance(name, str) or not isinstance(number, (int, float, str, type(None))):
            raise refused(source, f"{key}[{name!r}]", "must be a number or a word")


def run_id(value, key: str, source) -> None:
    if value is not None and not (isinstance(value, str) and RUN_ID.fullmatch(value)):
        raise refused(source, f"{key}={value!r}", "must be a W&B run id (letters, digits, - and _)")


def optional(check: Callable) -> Callable:
    return lambda value, key, source: None if value is None else check(value, key, source)


def kind(value, key: str, source) -> None:
    if not isinstance(value, str) or value not in KIND_USES:
        raise refused(source, f"{key}={value!r}", f"must be one of {', '.join(KIND_USES)}")


def mapping(value, key: str, source) -> None:
    if not isinstance(value, dict):
        raise refused(source, key, "must be a mapping")


def finite(value, key: str, source) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise refused(source, f"{key}={value!r}", "must be a finite number")


def partial_sums(value, key: str, source) -> None:
    """An epoch's sums so far (resume.EpochSums.state): its loss, steps, and each term's sum or per-t-bin sums."""
    if not isinstance(value, dict) or set(value) != {"loss", "steps", "terms"} or not isinstance(value["terms"], dict):
        raise refused(source, key, "must be {loss, steps, terms}")
    finite(value["loss"], f"{key}.loss", source)
    count(value["steps"], f"{key}.steps", source)
    for name, total in value["terms"].items():
        rows = total if isinstance(total, list) else [[total]]
        if not isinstance(name, str) or len(rows) > 2 or not all(isinstance(r, list) and len(r) <= 1000 for r in rows):
            raise refused(source, f"{key}.terms[{name!r}]", "must be a number or two rows of numbers")
        for row in rows:
            for number in row:
                finite(number, f"{key}.terms[{name!r}]", source)


ENTRIES: Dict[str, Callable] = {  # every top-level entry a checkpoint may hold (config: build.check_config)
    "format": lambda value, key, source: None, "config": lambda value, key, source: None,
    "kind": kind,
    "autoencoder": optional(mapping), "model": weights, "train_model": optional(weights), "optimizer": mapping,
    "epoch": count, "step": count, "rng": rng, "wandb_run_id": run_id,
    "parameters": count, "metrics": metrics, "train_images": lambda value, key, source: count(value, key, source, 1),
    "epoch_partial": optional(lambda value, key, source: partial_sums(value, key, source)),
}
REQUIRED = ("format", "kind", "config", "model", "train_model", "optimizer", "epoch", "step", "rng", "wandb_run_id")


def check_entries(state: dict, source) -> None:
    for key in REQUIRED:
        if key not in state:
            raise refused(source, key, "is missing")
    for key, value in state.items():
        if key not in ENTRIES:
            raise refused(source, repr(key), "is not an entry of a mindiff checkpoint")
        ENTRIES[key](value, key, source)
    if isinstance(state.get("step"), int) and state["epoch"] > state["step"]:
        raise refused(source, f"epoch={state['epoch']}", f"is past step={state['step']}: each epoch takes a step")


def like(value, reference, key: str, source) -> None:
    """`value` has the structure and types of `reference` (what this run's own optimizer writes), with finite
    numbers and tensors of the same shape, so loading it cannot fail or misbehave later, mid-run."""
    if isinstance(reference, dict):
        if not isinstance(value, dict) or not reference.keys() <= value.keys():
            raise refused(source, key, f"must be a mapping with {', '.join(map(str, reference))}")
        for k, v in value.items():
            if k in reference:
                like(v, reference[k], f"{key}.{k}", source)
            elif not isinstance(v, (bool, int, float)) or (isinstance(v, float) and not math.isfinite(v)):
                raise refused(source, f"{key}.{k}", "must be a finite number")
    elif isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            raise refused(source, key, f"must be a list of {len(reference)}")
        for i, (v, r) in enumerate(zip(value, reference)):
            like(v, r, f"{key}[{i}]", source)
    elif isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
            raise refused(source, key, f"must be a tensor of shape {tuple(reference.shape)}")
    elif isinstance(reference, bool) or reference is None or isinstance(reference, str):
        if type(value) is not type(reference):
            raise refused(source, f"{key}={value!r}", f"must be {type(reference).__name__}")
    elif isinstance(reference, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or abs(value) > MAX_COUNT or (isinstance(reference, int) and not isinstance(value, int)):
            raise refused(source, f"{key}={value!r}", f"must be a finite {type(reference).__name__}")


def check_optimizer_state(saved, reference: dict, params, source) -> None:
    """A stored optimizer state against the state this run's optimizer writes: its groups, schedule and EMA like
    the reference's, and every per-parameter tensor shaped like its parameter."""
    mapping(saved, "optimizer", source)
    like({k: v for k, v in saved.items() if k != "optimizer"}, {k: v for k, v in reference.items() if k != "optimizer"},
         "optimizer", source)
    inner, ref = saved.get("optimizer"), reference["optimizer"]
    mapping(inner, "optimizer.optimizer", source)
    like({"param_groups": inner.get("param_groups")}, {"param_groups": ref["param_groups"]}, "optimizer.optimizer",
         source)
    for i, (group, ref_group) in enumerate(zip(inner["param_groups"], ref["param_groups"])):
        if list(group["params"]) != list(ref_group["params"]):
            raise refused(source, f"optimizer.optimizer.param_groups[{i}].params", "must list this model's parameters")
    state = inner.get("state", {})
    shapes = [p.shape for p in params]
    if not isinstance(state, dict):
        raise refused(source, "optimizer.optimizer.state", "must be a mapping")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(shapes) or not isinstance(entry, dict):
            raise refused(source, f"optimizer.optimizer.state[{index!r}]", "is not a parameter's state")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.numel() != 1 and value.shape != shapes[index]:
                raise refused(source, f"optimizer.optimizer.state[{index}].{name}",
                              f"is {tuple(value.shape)}, not its parameter's {tuple(shapes[index])}")
            if not isinstance(value, torch.Tensor):
                like(value, 0.0, f"optimizer.optimizer.state[{index}].{name}", source)


def check_state(state: dict, source) -> None:
    """Every entry of a checkpoint that build.check_config passed, and its config's values."""
    check_entries(state, source)
    check_config_values(state["config"], source)
