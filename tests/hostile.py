"""Hostile checkpoints, and every CLI that reads a checkpoint run on each in a worker process with a time and a
memory limit (tests/test_hostile_checkpoints.py). Its own module so that spawned workers can import it."""

import copy
import math
import os
import resource
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

MISSING = object()  # the substitution "this key is not there"
TIME_LIMIT_S = 60  # per case: generous for a loaded 2-core machine; refused cases take milliseconds
MEMORY_LIMIT = 8 * 2**30  # address space of a worker (torch alone maps ~2 GiB)
MAX_GROWTH = 1 * 2**30  # no case may raise a worker's peak resident memory by more


def hostile_values(value) -> dict:
    """0, -1, nan, inf, 10**12, a value of the wrong type, and a missing key."""
    wrong = [1, 2] if isinstance(value, str) else "not a number"
    return {"0": 0, "-1": -1, "nan": math.nan, "inf": math.inf, "1e12": 10**12, "wrong type": wrong,
            "missing": MISSING}


def leaves(node, path=()):
    """The paths of every leaf of a plain config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path


def substitute(state: dict, path: tuple, value) -> dict:
    """A copy of `state` with `value` at `path` (only the containers along the path are copied)."""
    state = copy.copy(state)
    parent = state
    for key in path[:-1]:
        parent[key] = copy.copy(parent[key])
        parent = parent[key]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return state


def at(state: dict, path: tuple):
    for key in path:
        state = state[key]
    return state


# ---- in the worker ----

_STATES: dict = {}


def start_worker(genuine: str, cache: str) -> None:
    import torch
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.environ.update(MINDIFF_CACHE=cache, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="hostile-"))
    quiet = os.open(os.devnull, os.O_WRONLY)  # thousands of one-line refusals; the outcome says what matters
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    from PIL import Image
    Image.new("L", (12, 12), 128).save("image.png")
    _STATES["root"] = Path(genuine)


def _state(run: str) -> dict:
    if run not in _STATES:
        from mindiff.checkpoint import load_checkpoint
        _STATES[run] = load_checkpoint(_STATES["root"] / run / "checkpoints" / "last.pt")
    return _STATES[run]


_COMPOSED: dict = {}


def _train(ckpt_key: str, ckpt: Path, run_dir: Path, *overrides: str) -> None:
    """`python -m mindiff.train overrides ckpt_key=ckpt`, in this process: the CLI's preflight and composition
    (once per command line: only the checkpoint differs between cases), then train()."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from mindiff.cli import exit_on_user_error
    from mindiff.config import CONF
    from mindiff.tracking import RunInfo
    from mindiff.train import preflight
    from mindiff.trainer import train
    if overrides not in _COMPOSED:
        genuine = _STATES["root"] / ("ae" if ckpt_key == "autoencoder.ckpt" else "mlp2") / "checkpoints/last.pt"
        argv = [*overrides, f"{ckpt_key}={genuine}", f"hydra.run.dir={run_dir}"]
        preflight(argv)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            _COMPOSED[overrides] = compose(config_name="config", overrides=argv)
    cfg = copy.deepcopy(_COMPOSED[overrides])
    OmegaConf.update(cfg, ckpt_key, str(ckpt))
    with exit_on_user_error("mindiff.train"):
        train(cfg, RunInfo(run_dir=run_dir, name="hostile"))


def _cli(module: str, *args: str) -> None:
    import importlib
    importlib.import_module(f"mindiff.{module}").main(list(args))


def run_entry(entry: str, ckpt: Path, work: Path) -> None:
    from conftest import GENUINE, LDM, QUIET, TINY_RUN
    if entry == "sample":
        _cli("sample", f"ckpt={ckpt}", "n=4", "batch_size=4", f"out={work / 's.npz'}")
    elif entry == "evaluate":
        _cli("evaluate", f"ckpt={ckpt}", "n=4", f"out={work / 'm.json'}")
    elif entry == "reconstruct":
        _cli("reconstruct", f"ckpt={ckpt}", "image=image.png", f"out={work / 'r.png'}")
    elif entry.startswith("resume"):
        _train("trainer.resume", ckpt, work / "run", *GENUINE[entry.split()[1]], "trainer.epochs=2",
               "trainer.max_steps=9", "trainer.sample_grid=2",
               *([f"autoencoder.ckpt={_STATES['root'] / 'ae/checkpoints/last.pt'}"] if "ldm" in entry else []))
    elif entry == "autoencoder.ckpt":
        _train("autoencoder.ckpt", ckpt, work / "run", *TINY_RUN, *LDM, *QUIET, "trainer.max_steps=1",
               "trainer.sample_grid=2")
    else:
        raise ValueError(entry)


class TimeLimit(BaseException):
    pass


def _alarm(signum, frame):
    raise TimeLimit()


def run_variant(variant: tuple) -> list:
    """A hostile checkpoint, written once, and each of its readers on it: [(case, outcome, detail, seconds)],
    outcome the exit code (0 or 2 are the allowed ones), 'traceback', 'time' or 'memory'."""
    import torch
    run, path, label, entries = variant
    state = _state(run)
    work = Path(tempfile.mkdtemp(prefix="case-", dir="."))
    ckpt = work / "hostile.pt"
    torch.save(substitute(state, path, hostile_values(at(state, path))[label]), ckpt)
    try:
        return [run_case((run, path, label, entry), ckpt, work) for entry in entries]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_case(case: tuple, ckpt: Path, work: Path) -> tuple:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        run_entry(case[3], ckpt, work)
        outcome, detail = 0, ""
    except SystemExit as e:
        outcome, detail = (e.code or 0), ""
    except TimeLimit:
        outcome, detail = "time", f"past {TIME_LIMIT_S} s"
    except MemoryError:
        outcome, detail = "memory", "MemoryError"
    except BaseException:
        outcome, detail = "traceback", traceback.format_exc()[-1500:]
    finally:
        signal.alarm(0)
        shutil.rmtree(work / "run", ignore_errors=True)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak
    if growth > MAX_GROWTH:
        outcome, detail = "memory", f"peak memory grew by {growth / 2**30:.1f} GiB"
    return case, outcome, detail, time.monotonic() - start
