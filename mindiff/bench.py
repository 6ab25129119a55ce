"""`python -m mindiff.bench [cases=[mnist,ae,ldm,sample]] [steps=30] [precisions=[fp32,bf16]] [out=bench.json]`

Times mindiff's trainer against a plain PyTorch loop written the way reference scripts are
(torchvision dataset with ToTensor/Normalize per item, a DataLoader, fp32, the same model, batch
and optimizer) in the same run, and prints images/s, the ratio, achieved GFLOP/s against this
machine's matmul peak (fp32 and bf16, measured in the same run), peak memory, and the ops (kernels)
the model's forward+backward runs in each precision. mindiff runs
each precision as configured and again with the speed knobs in `tuned`, each measurement in a
fresh process (mindiff/bench_runs.py). Data: `data=DIR` (default $MINDIFF_DATA or ../shared/data)
holding MNIST/raw and cifar10-jpeg/train.

`python -m mindiff.bench suite=gpu`: the same table on a GPU against the reference loop as its author
runs it there (a DataLoader with min(16, cores) workers, pinned memory, fp32), mindiff as configured
and with trainer.speed=auto, then a 30-epoch MNIST toy run through the trainer, timed end to end. Where
there is no GPU it says so in one line and exits 2.
"""

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from mindiff.bench_runs import (RUN_EPOCHS, device_name, in_fresh_process, matmul_peak, mnist_run_wall_time,
                                run_baseline, run_mindiff, run_sampling)
from mindiff.cli import run_command
from mindiff.config import ConfigError, check_choice
from mindiff.files import save_text

CASES = ("mnist", "ae", "ldm", "sample")
GPU_STEPS = 300  # timed steps per row on a GPU: at ~1M img/s a row still takes a measurable time


@dataclass
class BenchArgs:
    cases: List[str] = field(default_factory=lambda: ["mnist", "ae", "ldm", "sample"])
    precisions: List[str] = field(default_factory=lambda: ["fp32", "bf16"])
    steps: int = 30
    data: str = field(default_factory=lambda: os.environ.get("MINDIFF_DATA", "../shared/data"))
    device: str = "auto"
    out: Optional[str] = "bench.json"
    baseline: bool = True
    overrides: List[str] = field(default_factory=list)  # for all of mindiff's runs, e.g. [trainer.channels_last=true]
    # the speed knobs, timed as extra rows (empty: none)
    tuned: List[str] = field(default_factory=lambda: ["optim.fused=true", "trainer.compile=true"])
    workers: int = 0  # the plain loop's DataLoader workers (with pinned memory on a GPU)
    suite: str = "cpu"  # cpu | gpu


def bench(args: BenchArgs) -> dict:
    check_choice("suite", args.suite, ("cpu", "gpu"))
    result = gpu_suite(args) if args.suite == "gpu" else table(args)
    if args.out:
        save_text(json.dumps(result, indent=2) + "\n", Path(args.out))
    return result


def table(args: BenchArgs) -> dict:
    """The table: each case's plain loop, then mindiff as configured and with `tuned`, per precision."""
    unknown = set(args.cases) - set(CASES)
    if unknown:
        raise ConfigError(f"cases has {sorted(unknown)}; choose from {', '.join(CASES)}")
    if not (Path(args.data) / "MNIST" / "raw").is_dir():
        raise ConfigError(f"data={args.data!r} holds no MNIST/raw: point it at the shared data folder")
    from mindiff.runtime import pick_device
    device = pick_device(args.device, key="device").type
    peaks = {p: matmul_peak(device, torch.bfloat16 if p == "bf16" else torch.float32) for p in ("fp32", "bf16")}
    print(f"device {device_name(device)}; matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if "ldm" in args.cases:  # the latent case needs an autoencoder checkpoint: a one-step AE run writes one
            in_fresh_process(run_mindiff, "ae", "bf16", 1, args.data, device, workdir)
            Path(workdir, "ae-bf16-mindiff").rename(Path(workdir, "ae"))
        for case in args.cases:
            if case == "sample":
                for precision in args.precisions:
                    r = in_fresh_process(run_sampling, precision, args.data, device, workdir)
                    rows.append({"case": case, "precision": precision, **r})
                    print(f"{'sample':>6} {precision}: {r['ms_per_euler_step']:.1f} ms per Euler step "
                          f"(16x16 grid), peak {r['peak_rss_mb']:.0f} MB")
                continue
            base = (in_fresh_process(run_baseline, case, args.steps, args.data, device, workdir, args.workers)
                    if args.baseline else None)
            if base:
                rows.append({"case": case, "impl": "baseline", "precision": "fp32", **base})
                print(f"{case:>6} {'baseline':<8} fp32 ({args.workers} workers): {base['images_per_s']:8.0f} img/s, peak {base['peak_rss_mb']:.0f} MB")
            variants = {"mindiff": args.overrides, **({"+tuned": [*args.overrides, *args.tuned]} if args.tuned else {})}
            for precision in args.precisions:
                for impl, overrides in variants.items():
                    r = in_fresh_process(run_mindiff, case, precision, args.steps, args.data, device, workdir,
                                         overrides, impl)
                    gflops = r["flops_per_image"] * r["images_per_s"] / 1e9
                    row = {"case": case, "impl": impl, "overrides": overrides, "precision": precision, **r,
                           "gflop_s": gflops, "peak_fraction": gflops / peaks[precision]}
                    if base:
                        row["ratio_vs_baseline_fp32"] = r["images_per_s"] / base["images_per_s"]
                    rows.append(row)
                    ratio = f"{row['ratio_vs_baseline_fp32']:.2f}x baseline" if base else ""
                    print(f"{case:>6} {impl:<8} {precision}: {r['images_per_s']:8.0f} img/s  {ratio:>14}  "
                          f"{gflops:6.0f} GFLOP/s ({100 * row['peak_fraction']:.0f}% of {precision} matmul peak), "
                          f"peak {r['peak_rss_mb']:.0f} MB")
            ops = ", ".join(f"{r['ops_per_step']} in {r['precision']}" for r in rows
                            if r["case"] == case and r["impl"] == "mindiff")
            print(f"{'':>6} ops (kernels) in the model's forward+backward: {ops}")
            if args.tuned:
                print(f"{'':>6} +tuned = {' '.join(args.tuned)}")
    return {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "matmul_peak_gflop_s": peaks, "steps": args.steps, "rows": rows}


def gpu_suite(args) -> dict:
    if not torch.cuda.is_available():
        raise ConfigError("suite=gpu needs a CUDA GPU and this machine has none (torch.cuda.is_available() is "
                          "False); run the CPU suite without suite=gpu")
    workers = min(16, os.cpu_count() or 1)
    rows = table(dataclasses.replace(args, device="cuda", steps=max(args.steps, GPU_STEPS), workers=workers,
                                     tuned=["trainer.speed=auto"]))
    with tempfile.TemporaryDirectory() as workdir:
        run = in_fresh_process(mnist_run_wall_time, args.data, workdir)
    print(f"MNIST toy, {RUN_EPOCHS} epochs through the trainer (speed=auto, bf16, grids and checkpoints, no eval): "
          f"{run['wall_s']:.1f} s wall, {run['images_per_s_last_epoch']:.0f} img/s in its last epoch")
    return {**rows, "suite": "gpu", "baseline_workers": workers, "mnist_30_epochs": run}


def main(argv=None) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the runs' progress bars; the bench prints one line per run
    run_command("mindiff.bench", BenchArgs, bench, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
