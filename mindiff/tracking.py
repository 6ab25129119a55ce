"""Weights & Biases: the mode is chosen before `wandb.init`, so a run never waits on the network."""

import functools
import logging
import netrc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import wandb

from mindiff import errors
from mindiff.config import ConfigError
from mindiff.distributed import Dist

log = logging.getLogger(__name__)
INIT_TIMEOUT_S = 5  # an unreachable server must not hold up training for long


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def choose_mode(requested: str) -> str:
    """`auto`: $WANDB_MODE if set, else online with an API key, else offline."""
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in ("online", "offline", "disabled", "dryrun", "run"):
        raise ConfigError(f"the environment variable WANDB_MODE={env!r} is not a W&B mode; unset it or set it to "
                          f"online, offline or disabled")
    if requested != "auto":
        return requested
    if env is not None:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if has_api_key() else "offline"


def not_fatal(method):
    """A failing W&B call (a full disk under wandb/, a broken upload) is logged once; training goes on."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with errors.not_fatal(f"W&B {method.__name__}", self.failed):
            return method(self, *args, **kwargs)
    return guarded


@dataclass
class RunInfo:
    """Where a run writes and how it is labelled in W&B (the CLI derives these from Hydra)."""
    run_dir: Path
    name: str
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    dist: Dist = Dist()  # this process's rank; rank 0 alone writes checkpoints, grids and W&B


class Tracker:
    """One W&B run per training run; resumed by id when the training run is resumed. `logger`: the
    config's logger group (project, entity; its group and tags come before the run's own)."""

    def __init__(self, mode: str, info: RunInfo, config: dict, logger, run_id: Optional[str] = None):
        self.mode = mode  # from choose_mode, called before any work starts
        self.failed = set()  # the calls that failed (each is reported once)
        tags = [*logger.tags, *info.tags]
        kwargs = dict(project=logger.project, entity=logger.entity, dir=str(info.run_dir), config=config,
                      name=info.name, group=logger.group or info.group,
                      tags=[t if len(t) <= 64 else t[:61] + "..." for t in tags],  # W&B allows 64 chars
                      id=run_id, resume="allow" if run_id else None, reinit="finish_previous",
                      settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off", silent=True))
        why = "no API key configured"
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception as e:  # network or credentials trouble must not stop training
            if self.mode != "online":
                raise
            why = f"W&B could not be reached: {errors.first_line(e)[:200]}"
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        if self.mode == "offline":
            log.info("W&B is offline (%s); training goes on. Upload later with: wandb sync %s", why,
                     Path(self.run.dir).parent)

    @property
    def run_id(self) -> Optional[str]:
        return None if self.mode == "disabled" else self.run.id

    @not_fatal
    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    @not_fatal
    def log_image(self, key: str, path: Path, step: int, caption: str = "") -> None:
        self.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)

    @not_fatal
    def log_video(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: wandb.Video(str(path), format="gif")}, step=step)

    @not_fatal
    def log_checkpoint(self, path: Path, aliases: Sequence[str]) -> None:
        if self.mode == "disabled":
            return
        artifact = wandb.Artifact(f"{self.run.id}-checkpoint", type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases))

    @not_fatal
    def summary(self, values: dict) -> None:
        self.run.summary.update(values)

    @not_fatal
    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class Throughput:
    """Images/s of an epoch from its first host sync (the first loss log) on: the steps before it pay
    one-off costs (compiling, kernel selection, optimizer state) that would swamp short runs."""

    def __init__(self, batch_size: int):
        self.batch_size, self.start, self.mark = batch_size, time.perf_counter(), None

    def synced(self, steps: int) -> None:
        if self.mark is None:
            self.mark = (time.perf_counter(), steps)

    def images_per_s(self, steps: int) -> float:
        since, done = self.mark if self.mark and steps > self.mark[1] else (self.start, 0)
        return (steps - done) * self.batch_size / (time.perf_counter() - since)
