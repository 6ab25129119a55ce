"""`python -m mindiff.train [overrides]`, or `-m` for a sweep: Hydra parses, `trainer.train` trains."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import mindiff.config  # noqa: F401  (registers the schemas)
from mindiff.cli import exit_on_user_error
from mindiff.trainer import RunInfo, train


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    group = f"{cfg.name}-{Path(hc.sweep.dir).name}" if hc.mode == RunMode.MULTIRUN else None
    info = RunInfo(run_dir=Path(hc.runtime.output_dir), name=hc.job.override_dirname or cfg.name, group=group)
    with exit_on_user_error("mindiff.train"):
        return train(cfg, info)["final_loss"]


if __name__ == "__main__":
    main()
