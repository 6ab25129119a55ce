"""`python -m mindiff.train [overrides]`, or `-m` for a sweep: Hydra parses, `trainer.train` trains.
`torchrun --nproc-per-node=N -m mindiff.train [overrides]` trains data-parallel (mindiff.distributed).

In a sweep a failing run is recorded (`FAILED` in its run dir) and the others go on; the sweep
ends with a summary (mindiff.sweep.SweepSummary) and a non-zero exit if any run failed.
"""

import logging
import math
import os
import signal
import sys
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import mindiff.config  # noqa: F401  (registers the schemas)
from mindiff.config import CONF
from mindiff import errors
from mindiff.cli import exit_on_user_error, user_error
from mindiff.distributed import Dist, from_environment
from mindiff.files import RunDirBusy, check_run_dir_free, check_writable_dir, save_text
from mindiff.sweep import REFUSED
from mindiff.tracking import RunInfo
from mindiff.trainer import train

log = logging.getLogger(__name__)


def composition_error(e: BaseException) -> str:
    """Hydra's composition errors span lines (and name the available options); fold them into one."""
    lines = [ln for part in (e, e.__cause__) if part is not None for ln in errors.lines(part)]
    if "Available options" in " ".join(lines):
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        end = next((i for i, ln in enumerate(lines) if ln.startswith("Config search path")), len(lines))
        options = [o for o in lines[at + 1:end] if not o.endswith("_schema")]  # schemas are not choices
        return f"{lines[0]}; {lines[at].rstrip(':').lower()}: {', '.join(options)}"
    return " ".join(ln for ln in lines if not ln.startswith(("full_key", "object_type", "reference_type")))


def refuse(message: str) -> None:
    print(f"mindiff.train: error: {message}", file=sys.stderr)
    sys.exit(2)


def preflight(argv) -> None:
    """Compose the config as Hydra is about to, for every value of every sweep axis (each axis varied alone, the
    others at their first value), so that an override Hydra cannot parse, an unknown key, a wrong type, an unknown
    option or a bad value is one line and exit code 2 before any job starts."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as e:
        refuse(f"{composition_error(e)}; write overrides as key=value, and quote a value with spaces or brackets "
               f"(e.g. 'dataset.root=\"my data\"')")
    fixed, axes = [], []
    for o in parsed:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        try:
            axes.append((o.get_key_element(), list(o.sweep_string_iterator())))
        except Exception:  # interval sweeps (Optuna) have no values to try
            continue
    firsts = [f"{key}={values[0]}" for key, values in axes]
    variants = [firsts] + [[*firsts[:i], f"{key}={value}", *firsts[i + 1:]]
                           for i, (key, values) in enumerate(axes) for value in values[1:]]
    config_dir = Path(args.config_dir).resolve() if args.config_dir else CONF
    searchpath = [f"hydra.searchpath=[file://{CONF}]"] if args.config_dir else []
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        for variant in variants:
            try:
                cfg = compose(config_name=args.config_name or "config", overrides=[*searchpath, *fixed, *variant],
                              return_hydra_config=True)
                out_key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
                out_dir = Path(OmegaConf.select(cfg, out_key))
            except Exception as e:
                refuse(composition_error(e))
            with exit_on_user_error("mindiff.train"):
                check_writable_dir(out_dir, out_key, create=False)  # Hydra would fail there with a traceback
                if not args.multirun:  # a sweep job's busy run dir fails that job only
                    check_run_dir_free(out_dir)
                mindiff.config.validate(cfg)


def run_info(cfg: DictConfig, d: Dist) -> RunInfo:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = Path(hc.sweep.dir).name  # a sweep file's dir is its name; an ad-hoc -m run's is a timestamp
    group = (cfg.name if sweep == cfg.name else f"{cfg.name}-{sweep}") if multirun else None
    return RunInfo(run_dir=Path(d.broadcast(hc.runtime.output_dir)),  # every rank writes (if at all) where rank 0 does
                   name=hc.job.override_dirname or cfg.name,
                   group=group,
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


def spare_live_run_dirs() -> None:
    """Hydra opens a job's log and writes its .hydra/ (hydra.core.utils.run_job) before the job can see that a
    live training holds its run dir, as one may in a sweep. Such a job is refused (RunDirBusy) and must leave
    that run's record as it was: its config files are not written there, and it logs to the console only."""
    from hydra.core import utils
    save = getattr(utils, "_save_config", None)  # Hydra's own; should a release rename it, this guard is lost
    if save is None or getattr(save, "spares_live_run_dirs", False):
        return

    def save_unless_busy(cfg, filename: str, output_dir: Path) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
        try:
            check_run_dir_free(run_dir)
        except RunDirBusy:
            root = logging.getLogger()
            for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
                if Path(handler.baseFilename).resolve().parent == run_dir:
                    root.removeHandler(handler)
                    handler.close()
            return
        save(cfg, filename, output_dir)

    save_unless_busy.spares_live_run_dirs = True
    utils._save_config = save_unless_busy


spare_live_run_dirs()  # on import: a parallel launcher's worker imports this module (below) to run its jobs


def refused_marker() -> Path:
    """Where a sweep job refused for a busy run dir says so: in the sweep's folder, never the live run's."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) / REFUSED / str(hc.job.num)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> float:
    info = run_info(cfg, from_environment())
    share_machine()
    failed = info.run_dir / "FAILED"
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with exit_on_user_error("mindiff.train"):
            return train(cfg, info).get(cfg.eval.objective, math.nan)
    refused = refused_marker()
    try:
        metrics = train(cfg, info)
        failed.unlink(missing_ok=True)
        refused.unlink(missing_ok=True)
        return metrics.get(cfg.eval.objective, math.nan)
    except Exception as e:  # one failed run must not stop or lose the others
        cause = user_error(e)
        reason = errors.first_line(cause or f"{type(e).__name__}: {e}")
        log.error("run %s failed: %s", info.name, reason)
        if isinstance(cause, RunDirBusy):  # the dir is a live run's record: no FAILED of ours there, but the
            save_text(f"{info.run_dir}: {reason}\n", refused)  # sweep's own folder says so (SweepSummary)
            return math.nan
        info.run_dir.mkdir(parents=True, exist_ok=True)
        failed.write_text(reason + "\n\n" + traceback.format_exc())
        return math.nan


def cli() -> None:
    try:
        preflight(sys.argv[1:])
        if int(os.environ.get("RANK", "0")) > 0:  # torchrun's other ranks: rank 0 alone writes Hydra's outputs
            sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                         "hydra/hydra_logging=disabled"]
        main()
    except KeyboardInterrupt:  # Ctrl-C outside train() (which has its own handler): nothing to save, no traceback
        print("mindiff.train: stopped by SIGINT", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    # Run as the importable mindiff.train, not as __main__: joblib's and submitit's workers then unpickle the job
    # function's helpers by reference, importing this module, so spare_live_run_dirs holds in them too.
    from mindiff.train import cli as importable_cli
    importable_cli()
