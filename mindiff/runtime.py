"""Where and how tensors run: the device, the autocast precision, and the RNG state a resume restores."""

import contextlib

import torch

from mindiff.config import check_device


def pick_device(requested: str, key: str = "trainer.device") -> torch.device:
    """`key`: the setting's name as the user typed it, so an error names what to change."""
    check_device(requested, key)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def side_effect_free(device: torch.device):
    """Grids and evaluations must not draw from the training RNG: a run that evaluates (or is
    stopped and resumed) trains exactly like one that does not."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
