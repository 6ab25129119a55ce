"""Checkpoints: written atomically, loaded with weights_only=True, and self-describing.

A checkpoint carries the resolved config that built it, so sampling, evaluation and later
stages rebuild the model from the file alone.
"""

import os
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

FORMAT = "mindiff-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write to a temp file, flush it to disk, then rename: a kill at any moment leaves either
    the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # e.g. no space left on the device
        tmp.unlink(missing_ok=True)
        previous = "the previous checkpoint there is intact" if path.exists() else "nothing was saved"
        raise CheckpointError(f"could not write {path} ({e}); {previous}. Free some space and resume with "
                              f"trainer.resume=auto") from None
    os.replace(tmp, path)
    return path


def save_cache(obj, path: Path) -> None:
    """A cache file that parallel sweep jobs may write at once: each writes its own temp file and
    renames it into place, so a reader sees a whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass the path of a .pt file a run wrote under checkpoints/")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path} was refused: it holds more than tensors and plain values, and loading it "
                              f"could run code ({first_line})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mindiff checkpoint (no '{FORMAT}' marker)")
    return state


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    last = run_dir / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def load_autoencoder(path) -> dict:
    """The frozen autoencoder of a latent run, as {"config", "model"}: rebuilt from the config saved
    in its own checkpoint, so its architecture is never repeated (and cannot disagree)."""
    state = load_checkpoint(path)
    if state.get("kind") != "autoencoder":
        raise CheckpointError(f"{path} is a {state.get('kind', 'unknown')} checkpoint, not an autoencoder: "
                              f"autoencoder.ckpt takes a checkpoint written by a model=autoencoder run "
                              f"(experiment=cifar_ae)")
    return {"config": state["config"], "model": state["model"]}


def build_autoencoder(autoencoder: dict) -> torch.nn.Module:
    model = instantiate(OmegaConf.create(autoencoder["config"]).model)
    model.load_state_dict(autoencoder["model"])
    return model


def build_objective(schedule_cfg, autoencoder: Optional[dict] = None):
    """The run's objective; with an autoencoder, the same diffusion on its latents."""
    from mindiff.objectives import InLatentSpace  # objectives import data; keep this module light

    objective = instantiate(schedule_cfg)
    return InLatentSpace(objective, build_autoencoder(autoencoder)) if autoencoder is not None else objective


def build_from_checkpoint(state: dict, device="cpu"):
    """Rebuild (model with inference weights, objective, config) from a loaded checkpoint."""
    cfg = OmegaConf.create(state["config"])
    model = instantiate(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit the model its config builds: {e}") from None
    return model.to(device).eval(), build_objective(cfg.schedule, state.get("autoencoder")), cfg
