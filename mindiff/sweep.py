"""Reading a sweep's run dirs back: what each run changed, how it ended, its final metrics.
Used by the end-of-sweep summary (a Hydra callback) and by `mindiff.compare`."""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from mindiff.errors import first_line, one_line

log = logging.getLogger(__name__)
REFUSED = ".refused"  # a sweep's jobs refused because a live training held their run dir (mindiff.train.main)


@dataclass
class RunRecord:
    path: Path
    overrides: List[str]
    status: str  # finished | stopped | failed | running or killed
    reason: str = ""
    metrics: dict = field(default_factory=dict)

    def changes(self, common: set, sep: str = ",") -> str:
        """What this run set that not every run of its sweep did."""
        return sep.join(o for o in self.overrides if o not in common) or "(defaults)"


def read_run(run_dir: Path) -> RunRecord:
    """A run dir as its record; a file there that cannot be read (torn, edited, not what a run writes) makes
    the run's status say so, for that run alone."""
    overrides = _read_overrides(run_dir / ".hydra" / "overrides.yaml")
    metrics_file, failed = run_dir / "metrics.json", run_dir / "FAILED"
    if overrides is None:
        return RunRecord(run_dir, [], "unreadable overrides.yaml", f"{run_dir / '.hydra/overrides.yaml'} is not a "
                                                                   f"list of overrides")
    if failed.is_file():
        return RunRecord(run_dir, overrides, "failed", first_line(failed.read_text(errors="replace")))
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            if not isinstance(metrics, dict):
                raise ValueError(f"a JSON {type(metrics).__name__}, not an object")
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return RunRecord(run_dir, overrides, "unreadable metrics.json",
                             f"{metrics_file} cannot be read ({one_line(e)[:120]}); the run's final metrics are also "
                             f"in its checkpoints/last.pt")
        return RunRecord(run_dir, overrides, str(metrics.pop("status", "finished")), metrics=metrics)
    return RunRecord(run_dir, overrides, "running or killed", "no metrics.json: resume it with trainer.resume=auto")


def _read_overrides(path: Path) -> Optional[List[str]]:
    """The overrides a run was started with ([] without the file), or None when the file is not a list."""
    if not path.is_file():
        return []
    try:
        overrides = OmegaConf.load(path)
    except Exception:  # YAML errors, bad bytes, an unreadable file: the run says so
        return None
    return [str(o) for o in overrides] if OmegaConf.is_list(overrides) else None


def find_runs(sweep_dir: Path) -> List[RunRecord]:
    """The run dirs under a multirun dir (or the dir itself if it is one run), in job order."""
    dirs = [sweep_dir] if (sweep_dir / ".hydra" / "overrides.yaml").is_file() else [
        p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]

    def job_number(p: Path):
        head = p.name.split("_", 1)[0]
        return (int(head), p.name) if head.isdigit() else (sys.maxsize, p.name)

    return [read_run(d) for d in sorted(dirs, key=job_number)]


def common_overrides(runs: List[RunRecord]) -> set:
    sets = [set(r.overrides) for r in runs]
    return set.intersection(*sets) if len(sets) > 1 else set()


class SweepSummary(Callback):
    """At the end of a multirun: one line per run, and a non-zero exit if any run failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs = find_runs(sweep_dir)
        failed = [r for r in runs if r.status == "failed"]
        refused = sorted((sweep_dir / REFUSED).glob("*")) if (sweep_dir / REFUSED).is_dir() else []
        lines = [f"sweep {sweep_dir}: {len(runs) - len(failed)} of {len(runs)} runs ok"]
        for r in runs:
            detail = r.reason or (f"final_loss {r.metrics['final_loss']:.4f}" if "final_loss" in r.metrics else "")
            lines.append(f"  {r.status:<9} {r.path.name}  {detail}")
        lines += [f"  refused   job {p.name}: {first_line(p.read_text(errors='replace'))}" for p in refused]
        log.info("\n".join(lines))
        if failed or refused:
            sys.exit(1)


def summary_table(runs: List[RunRecord], keys: Optional[List[str]] = None) -> List[dict]:
    keys = keys or sorted({k for r in runs for k in r.metrics if k != "status"})
    common = common_overrides(runs)
    return [{"run": r.path.name, "overrides": r.changes(common),
             "status": r.status, **{k: r.metrics.get(k) for k in keys}} for r in runs]
