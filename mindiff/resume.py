"""What a resume may change. A checkpoint records everything that defines its run; a resume that
changes any of it would silently train another run (a new optim.lr, say, is overwritten by the
optimizer state it loads), so it is refused, listing old -> new. The keys below may change, and
then take effect from the resumed step on: how long to train, how often to log, sample, evaluate and
save, where the data and caches live, the device and the speed knobs that do not change the math.
"""

from fnmatch import fnmatchcase
from typing import List, Tuple

from mindiff.config import ConfigError
from mindiff.data import DatasetError

MAY_CHANGE = (
    "name", "trainer.epochs", "trainer.max_steps", "trainer.resume", "trainer.device", "trainer.compile",
    "trainer.channels_last", "trainer.log_every", "trainer.sample_every", "trainer.sample_epochs",
    "trainer.sample_grid", "trainer.sample_seed", "trainer.ckpt_every", "trainer.keep_last", "optim.fused",
    "schedule.sample_steps", "schedule.sampler", "schedule.guidance", "dataset.root", "dataset.download",
    "dataset.cache_dir", "dataset.test_root",
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


def check_position(step: int, epoch: int, steps_per_epoch: int, ckpt) -> None:
    """A checkpoint's step must fall inside its epoch for this run's batches, else the loop could skip
    every batch forever (the dataset changed size under the same settings)."""
    if not 0 <= step - epoch * steps_per_epoch < steps_per_epoch:
        raise ConfigError(f"resuming {ckpt}: it stopped at step {step} of epoch {epoch + 1}, which does not fit "
                          f"{steps_per_epoch} steps per epoch; was the data at dataset.root changed? Point "
                          f"dataset.root at the data the run started with")
