"""`python -m mindiff.train [overrides]`, or `-m` for a sweep: Hydra parses, `trainer.train` trains.
`torchrun --nproc-per-node=N -m mindiff.train [overrides]` trains data-parallel (mindiff.distributed).

In a sweep a failing run is recorded (`FAILED` in its run dir) and the others go on; the sweep
ends with a summary (mindiff.sweep.SweepSummary) and a non-zero exit if any run failed.
"""

import logging
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import mindiff.config  # noqa: F401  (registers the schemas)
from mindiff.cli import exit_on_user_error, user_error
from mindiff.distributed import Dist, from_environment
from mindiff.trainer import RunInfo, train

log = logging.getLogger(__name__)


def run_info(cfg: DictConfig, d: Dist) -> RunInfo:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return RunInfo(run_dir=Path(d.broadcast(hc.runtime.output_dir)),  # every rank writes (if at all) where rank 0 does
                   name=hc.job.override_dirname or cfg.name,
                   group=f"{cfg.name}-{Path(hc.sweep.dir).name}" if multirun else None,
                   tags=list(hc.overrides.task)[:20], dist=d)


def share_machine() -> None:
    """Parallel sweep jobs (joblib launcher) split the cores, and the GPUs one each, instead of all
    using every one."""
    hc = HydraConfig.get()
    n_jobs = hc.launcher.get("n_jobs")
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(hc.job.num) % torch.cuda.device_count())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    info = run_info(cfg, from_environment())
    share_machine()
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
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun's other ranks: rank 0 alone writes Hydra's outputs
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled"]
    main()
