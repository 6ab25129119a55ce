"""Checkpoints: written atomically and durably, loaded with weights_only=True, and self-describing.

A checkpoint carries the resolved config that built it, so sampling, evaluation and later stages
rebuild the model from the file alone (mindiff.build, through its allowlist: the file is data).
"""

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch

from mindiff.errors import UserError, first_line
from mindiff.files import atomic_write

log = logging.getLogger(__name__)
FORMAT = "mindiff-checkpoint-v1"
KIND_USES = {  # what each kind of checkpoint is for, for the message when another kind is given
    "diffusion": "sample and evaluate a denoiser's checkpoint (a model=mlp2 or model=conv_adaln run)",
    "autoencoder": "autoencoder.ckpt and mindiff.reconstruct take a model=autoencoder run's checkpoint "
                   "(experiment=cifar_ae)",
}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def save_checkpoint(state: dict, path: Path) -> Path:
    """A kill at any moment leaves either the old file or the new one, never a torn one."""
    try:
        return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    except (OSError, RuntimeError) as e:  # e.g. no space left on the device
        previous = "the previous checkpoint there is intact" if path.exists() else "nothing was saved"
        raise CheckpointError(f"could not write {path} ({getattr(e, 'reason', e)}); {previous}. Free some space "
                              f"and resume with trainer.resume=auto") from None


def load_checkpoint(path, kind: Optional[str] = None) -> dict:
    """The checkpoint's contents (tensors and plain values only); `kind`: refuse any other kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass the path of a .pt file a run wrote under checkpoints/")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} was refused: it holds more than tensors and plain values, and loading it "
                              f"could run code ({first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mindiff checkpoint (no '{FORMAT}' marker)")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path} is {_a(state.get('kind', 'unknown'))} checkpoint, not {_a(kind)}: "
                              f"{KIND_USES[kind]}")
    return state


def _a(word) -> str:
    word = str(word) if isinstance(word, str) and word else "unknown"  # a file's kind may be anything
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def checkpoint_to_resume(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """trainer.resume: null (start fresh), auto (this run dir's last.pt, if any) or a path."""
    if resume != "auto":
        return Path(resume) if resume else None
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        log.info("trainer.resume=auto: no checkpoint in %s yet, starting fresh", last.parent)
        return None
    return last


def prune_snapshots(ckpt_dir: Path, keep_last: Optional[int], keep_epochs) -> None:
    """Keep the newest `keep_last` epoch snapshots, plus those at the epochs a sweep asked for."""
    if keep_last is None:
        return
    kept = {f"epoch_{e:04d}.pt" for e in keep_epochs}
    snapshots = sorted(p for p in ckpt_dir.glob("epoch_*.pt") if p.name not in kept)
    for old in snapshots[: max(0, len(snapshots) - keep_last)]:
        old.unlink()
