"""What a resume may change. A checkpoint records everything that defines its run; a resume that
changes any of it would silently train another run (a new optim.lr, say, is overwritten by the
optimizer state it loads), so it is refused, listing old -> new. The keys below may change, and
then take effect from the resumed step on: how long to train, how often to log, sample, evaluate and
save, where the data and caches live, the device and the speed knobs that do not change the math.
"""

import logging
from fnmatch import fnmatchcase
from typing import List, Tuple

from mindiff.config import ConfigError
from mindiff.data import DatasetError
from mindiff.errors import last_line

log = logging.getLogger(__name__)

MAY_CHANGE = (
    "name", "trainer.epochs", "trainer.max_steps", "trainer.resume", "trainer.device", "trainer.compile",
    "trainer.channels_last", "trainer.speed", "trainer.cuda_graph", "trainer.tf32", "trainer.log_every",
    "trainer.sample_every", "trainer.sample_epochs",
    "trainer.sample_grid", "trainer.sample_seed", "trainer.ckpt_every", "trainer.keep_last", "optim.fused",
    "schedule.sample_steps", "schedule.sampler", "schedule.guidance", "dataset.root", "dataset.download",
    "dataset.cache_dir", "dataset.test_root", "autoencoder.latent_cache",
    "eval.*", "logger.*",
)
ABSENT = "(absent)"


def flatten(config, prefix: str = "") -> dict:
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def defining_changes(saved: dict, now: dict) -> List[Tuple[str, object, object]]:
    """(key, saved value, new value) for every key that defines the run and differs."""
    old, new = flatten(saved), flatten(now)
    return [(key, old.get(key, ABSENT), new.get(key, ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, ABSENT) != new.get(key, ABSENT)
            and not any(fnmatchcase(key, pattern) for pattern in MAY_CHANGE)]


def check_same_run(saved: dict, now: dict, ckpt) -> None:
    changes = defining_changes(saved, now)
    if changes:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        raise ConfigError(f"resuming {ckpt} with settings that define another run ({listed}); set them back, "
                          f"or start a new run in another hydra.run.dir")


def check_same_data(state: dict, train_images: int, ckpt) -> None:
    """The number of training images is recorded too: the data may move (dataset.root), not change."""
    if state.get("train_images", train_images) != train_images:
        raise DatasetError(f"resuming {ckpt}: the run trained on {state['train_images']} images, but the dataset "
                           f"now has {train_images}; point dataset.root at the data it started with")


def restore(state: dict, path, model, optimizer, steps_per_epoch: int) -> Tuple[int, int, dict]:
    """Load a checkpoint's training weights, optimizer and RNG state into a built run; returns its
    (epoch, step, metrics)."""
    from mindiff.checkpoint import CheckpointError
    from mindiff.runtime import set_rng_state
    try:
        model.load_state_dict(state["train_model"] if state["train_model"] is not None else state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this run's model (was it written with another "
                              f"model config?): {last_line(e)}") from None
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    epoch, step = state["epoch"], state["step"]
    check_position(step, epoch, steps_per_epoch, path)
    log.info("resumed from %s at epoch %d, step %d", path, epoch, step)
    return epoch, step, state.get("metrics", {})


def check_position(step: int, epoch: int, steps_per_epoch: int, ckpt) -> None:
    """A checkpoint's step must fall inside its epoch for this run's batches, else the loop could skip
    every batch forever (the dataset changed size under the same settings)."""
    if not 0 <= step - epoch * steps_per_epoch < steps_per_epoch:
        raise ConfigError(f"resuming {ckpt}: it stopped at step {step} of epoch {epoch + 1}, which does not fit "
                          f"{steps_per_epoch} steps per epoch; was the data at dataset.root changed? Point "
                          f"dataset.root at the data the run started with")
