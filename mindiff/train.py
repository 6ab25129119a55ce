"""`python -m mindiff.train [overrides]`, or `-m` for a sweep: Hydra parses, `trainer.train` trains.

In a sweep a failing run is recorded (`FAILED` in its run dir) and the others go on; the sweep
ends with a summary (mindiff.sweep.SweepSummary) and a non-zero exit if any run failed.
"""

import logging
import math
import os
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import mindiff.config  # noqa: F401  (registers the schemas)
from mindiff.cli import exit_on_user_error, user_error
from mindiff.trainer import RunInfo, train

log = logging.getLogger(__name__)


def run_info(cfg: DictConfig) -> RunInfo:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return RunInfo(run_dir=Path(hc.runtime.output_dir), name=hc.job.override_dirname or cfg.name,
                   group=f"{cfg.name}-{Path(hc.sweep.dir).name}" if multirun else None,
                   tags=list(hc.overrides.task)[:20])


def share_threads() -> None:
    """Parallel sweep jobs (joblib launcher) split the cores instead of all using every one."""
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    info = run_info(cfg)
    share_threads()
    failed = info.run_dir / "FAILED"
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with exit_on_user_error("mindiff.train"):
            return train(cfg, info).get(cfg.eval.objective, math.nan)
    try:
        metrics = train(cfg, info)
        failed.unlink(missing_ok=True)
        return metrics.get(cfg.eval.objective, math.nan)
    except Exception as e:  # one failed run must not stop or lose the others
        reason = str(user_error(e) or f"{type(e).__name__}: {e}").strip().splitlines()[0]
        log.error("run %s failed: %s", info.name, reason)
        info.run_dir.mkdir(parents=True, exist_ok=True)
        failed.write_text(reason + "\n\n" + traceback.format_exc())
        return math.nan


if __name__ == "__main__":
    main()
