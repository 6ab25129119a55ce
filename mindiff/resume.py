"""What a resume may change. A checkpoint records everything that defines its run; a resume that
changes any of it would silently train another run (a new optim.lr, say, is overwritten by the
optimizer state it loads), so it is refused, listing old -> new. The keys below may change, and
then take effect from the resumed step on: how long to train, how often to log, sample, evaluate and
save, where the data and caches live, the device and the speed knobs that do not change the math.

Then restoring the run: its weights, optimizer and RNG, and the sums of the epoch it stopped in, so that
a stop never changes a reported number; a run found finished writes the metrics.json a kill cost it.
"""

import json
import logging
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from mindiff.config import ConfigError
from mindiff.data import DatasetError
from mindiff.errors import last_line
from mindiff.files import save_text

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


def resume_point(resume: Optional[str], run_dir: Path, resolved: dict) -> Tuple[Optional[Path], Optional[dict]]:
    """The checkpoint trainer.resume names (its path and contents), or (None, None): start fresh. One that
    defines another run than `resolved` is refused."""
    from mindiff.build import read_checkpoint
    from mindiff.checkpoint import checkpoint_to_resume
    path = checkpoint_to_resume(resume, run_dir)
    state = read_checkpoint(path) if path else None
    if state is not None:
        check_same_run(state["config"], resolved, path)
    return path, state


def kept_checkpoint(ckpt_dir: Path) -> str:
    """What a run that stops now leaves to resume from, in words."""
    last = ckpt_dir / "last.pt"
    return f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"


def already_finished(state: dict, epochs: int, run_dir: Path, writes: bool) -> Optional[dict]:
    """A checkpoint at `epochs` or past it: nothing to train. A kill between its last checkpoint and
    metrics.json left the run reading as running; metrics.json is then written from the checkpoint."""
    if state["epoch"] < epochs:
        return None
    log.info("%s already finished its %d epochs; nothing to train", run_dir, epochs)
    metrics = {**state.get("metrics", {}), "status": "finished"}
    if writes and not (run_dir / "metrics.json").is_file():
        save_text(json.dumps(metrics, indent=2) + "\n", run_dir / "metrics.json")
    return {**metrics, "status": "already finished"}


def restore(state: dict, path, model, optimizer, steps_per_epoch: int) -> Tuple[int, int, dict, "EpochSums"]:
    """Load a checkpoint's training weights, optimizer and RNG state into a built run; returns its
    (epoch, step, metrics) and the sums of the epoch it stopped in (empty at an epoch's end, or from a
    checkpoint written before they were kept)."""
    from mindiff.checkpoint import CheckpointError
    from mindiff.runtime import set_rng_state
    from mindiff.stored import check_optimizer_state
    try:
        model.load_state_dict(state["train_model"] if state["train_model"] is not None else state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this run's model (was it written with another "
                              f"model config?): {last_line(e)}") from None
    check_optimizer_state(state["optimizer"], optimizer.state_dict(), list(model.parameters()), path)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    epoch, step = state["epoch"], state["step"]
    check_position(step, epoch, steps_per_epoch, path)
    log.info("resumed from %s at epoch %d, step %d", path, epoch, step)
    sums = EpochSums.from_state(state.get("epoch_partial"))
    return epoch, step, state.get("metrics", {}), sums if sums.steps == step - epoch * steps_per_epoch else EpochSums()


class EpochSums:
    """An epoch's loss and loss terms, summed step by step in the order they came. A mid-epoch checkpoint
    keeps them ("epoch_partial": floats and ints), so an epoch stopped and resumed reports the numbers an
    uninterrupted one does, to the last bit."""

    def __init__(self, loss: float = 0.0, steps: int = 0, terms: Optional[Dict[str, object]] = None):
        self.loss, self.steps, self.terms = loss, steps, dict(terms or {})

    def add(self, losses: List[float]) -> None:
        for value in losses:
            self.loss += value
        self.steps += len(losses)

    def add_terms(self, terms: Dict[str, torch.Tensor]) -> None:
        """Summed on the device (read once, at the end of the pass); restored sums become tensors of the
        terms' own dtype, which holds them exactly."""
        for name, value in terms.items():
            total = self.terms.get(name, 0)
            if isinstance(total, (float, list)):  # restored from a checkpoint
                total = torch.tensor(total, dtype=value.dtype, device=value.device)
            self.terms[name] = total + value

    @property
    def mean_loss(self) -> float:
        return self.loss / max(1, self.steps)

    def state(self) -> dict:
        return {"loss": self.loss, "steps": self.steps,
                "terms": {name: t.tolist() if isinstance(t, torch.Tensor) else t for name, t in self.terms.items()}}

    @classmethod
    def from_state(cls, state: Optional[dict]) -> "EpochSums":
        return cls(state["loss"], state["steps"], state["terms"]) if state else cls()


def check_position(step: int, epoch: int, steps_per_epoch: int, ckpt) -> None:
    """A checkpoint's step must fall inside its epoch for this run's batches, else the loop could skip
    every batch forever (the dataset changed size under the same settings)."""
    if not 0 <= step - epoch * steps_per_epoch < steps_per_epoch:
        raise ConfigError(f"resuming {ckpt}: it stopped at step {step} of epoch {epoch + 1}, which does not fit "
                          f"{steps_per_epoch} steps per epoch; was the data at dataset.root changed? Point "
                          f"dataset.root at the data the run started with")
