"""`python -m mindiff.bench [cases=[mnist,ae,ldm,sample]] [steps=30] [precisions=[fp32,bf16]] [out=bench.json]`

Times mindiff's trainer against a plain PyTorch loop written the way reference scripts are
(torchvision dataset with ToTensor/Normalize per item, a DataLoader, fp32, the same model, batch
and optimizer) in the same run, and prints images/s, the ratio, achieved GFLOP/s against this
machine's matmul peak (fp32 and bf16, measured in the same run) and peak memory. mindiff runs
each precision as configured and again with the speed knobs in `tuned`. Both loops run
WARMUP_STEPS untimed steps first, then `steps` timed ones. Each measurement runs in a fresh
process, so peak memory is its own. Data: `data=DIR` (default $MINDIFF_DATA or ../shared/data)
holding MNIST/raw and cifar10-jpeg/train.
"""

import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from mindiff.cli import run_command
from mindiff.config import ConfigError
from mindiff.files import save_text

CASES = ("mnist", "ae", "ldm", "sample")
WARMUP_STEPS = 10  # untimed: they pay one-off costs (compiling, kernel selection, optimizer state, workers)


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


def overrides_for(case: str, data: str, workdir: Path) -> List[str]:
    cifar = ["dataset=image_folder", f"dataset.root={data}/cifar10-jpeg/train", "dataset.hflip=true"]
    if case in ("mnist", "sample"):
        return [f"dataset.root={data}", "dataset.download=false"]
    if case == "ae":
        return ["experiment=cifar_ae", *cifar]
    return ["experiment=cifar_ldm", *cifar, f"autoencoder.ckpt={workdir / 'ae' / 'checkpoints' / 'last.pt'}"]


def compose(overrides: List[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import mindiff.config  # noqa: F401
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(device, dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_image(cfg, device) -> float:
    """FLOPs of one forward+backward of the model per image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from mindiff.build import build, input_shape, plain
    model = build(plain(cfg)["model"], "model").to(device)
    shape = input_shape(cfg.autoencoder.ckpt, cfg.dataset.channels, cfg.dataset.image_size)
    x, t, y = torch.randn(8, *shape, device=device), torch.rand(8, device=device), torch.zeros(8, dtype=torch.long,
                                                                                               device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, y).float().square().mean().backward()  # every mindiff model is called as model(x, t, y)
    return counter.get_total_flops() / 8


def run_mindiff(case: str, precision: str, steps: int, data: str, device: str, workdir: str,
                overrides: List[str] = (), variant: str = "mindiff") -> dict:
    """mindiff's own trainer, as `python -m mindiff.train` runs it, stopped after WARMUP_STEPS + `steps`
    steps; its images/s counts the steps after its first loss log, which comes after WARMUP_STEPS."""
    from mindiff.tracking import RunInfo
    from mindiff.trainer import train
    workdir = Path(workdir)
    cfg = compose([*overrides_for(case, data, workdir), f"trainer.max_steps={WARMUP_STEPS + steps}",
                   f"trainer.precision={precision}", f"trainer.device={device}", "logger.mode=disabled",
                   "eval.every=null", "trainer.sample_grid=2", f"trainer.log_every={WARMUP_STEPS}", *overrides])
    metrics = train(cfg, RunInfo(workdir / f"{case}-{precision}-{variant}", case))
    return {"images_per_s": metrics["images_per_s"], "peak_rss_mb": peak_rss_mb(),
            "flops_per_image": train_flops_per_image(cfg, device)}


def run_baseline(case: str, steps: int, data: str, device: str, workdir: str) -> dict:
    """The plain loop: per-item ToTensor/Normalize through a DataLoader, fp32, the same model, batch,
    optimizer and loss."""
    import schedulefree
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    from mindiff.build import autoencoder_model, build, load_autoencoder, objective_for, plain
    cfg = compose(overrides_for(case, data, Path(workdir)))
    resolved = plain(cfg)
    channels = cfg.dataset.channels
    normalize = T.Normalize([0.5] * channels, [0.5] * channels)
    if case == "mnist":
        ds = torchvision.datasets.MNIST(data, train=True, transform=T.Compose([T.ToTensor(), normalize]))
    else:
        ds = torchvision.datasets.ImageFolder(f"{data}/cifar10-jpeg/train", transform=T.Compose(
            [T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    loader = DataLoader(ds, batch_size=cfg.trainer.batch_size, shuffle=True, drop_last=True)
    model = build(resolved["model"], "model").to(device)
    ckpt = cfg.autoencoder.ckpt
    encoder = autoencoder_model(load_autoencoder(ckpt), ckpt).to(device) if case == "ldm" else None
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                         weight_decay=cfg.optim.weight_decay, warmup_steps=cfg.optim.warmup_steps)
    opt.train()
    objective = objective_for(resolved["schedule"])  # the same loss as mindiff's, so only the loop differs
    n, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == WARMUP_STEPS:
            sync(device)
            start, n = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        if encoder is not None:  # a plain latent script encodes every batch
            with torch.no_grad():
                x = encoder.encode(x)
        loss, _ = objective.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # as a reference script's logging does
        n += len(x)
        if i == WARMUP_STEPS + steps - 1:
            break
    sync(device)
    return {"images_per_s": n / (time.perf_counter() - start), "peak_rss_mb": peak_rss_mb()}


def run_sampling(precision: str, data: str, device: str, workdir: str, grid: int = 16) -> dict:
    """ms per Euler step for a grid x grid sample grid of the MNIST toy; on a GPU it also proves the loop
    has no host sync."""
    from mindiff.build import build, plain
    from mindiff.runtime import autocast
    resolved = plain(compose(overrides_for("sample", data, Path(workdir))))
    model = build(resolved["model"], "model").to(device).eval()
    objective = build(resolved["schedule"], "schedule")
    noise = torch.randn(grid * grid, 1, 28, 28, device=device)
    labels = torch.arange(grid * grid, device=device) % 10
    cuda = torch.device(device).type == "cuda"
    with autocast(torch.device(device), precision):
        objective.sample(model, noise, labels, steps=2)
        sync(device)
        start = time.perf_counter()
        if cuda:  # a host sync inside the Euler loop raises here
            torch.cuda.set_sync_debug_mode("error")
        objective.sample(model, noise, labels, steps=32)
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        sync(device)
    return {"ms_per_euler_step": (time.perf_counter() - start) / 32 * 1000, "peak_rss_mb": peak_rss_mb()}


def in_fresh_process(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def bench(args: BenchArgs) -> dict:
    unknown = set(args.cases) - set(CASES)
    if unknown:
        raise ConfigError(f"cases has {sorted(unknown)}; choose from {', '.join(CASES)}")
    if not (Path(args.data) / "MNIST" / "raw").is_dir():
        raise ConfigError(f"data={args.data!r} holds no MNIST/raw: point it at the shared data folder")
    from mindiff.runtime import pick_device
    device = pick_device(args.device, key="device").type
    peaks = {p: matmul_peak(device, torch.bfloat16 if p == "bf16" else torch.float32) for p in ("fp32", "bf16")}
    print(f"device {device}; matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
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
            base = in_fresh_process(run_baseline, case, args.steps, args.data, device, workdir) if args.baseline else None
            if base:
                rows.append({"case": case, "impl": "baseline", "precision": "fp32", **base})
                print(f"{case:>6} {'baseline':<8} fp32: {base['images_per_s']:8.0f} img/s, peak {base['peak_rss_mb']:.0f} MB")
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
            if args.tuned:
                print(f"{'':>6} +tuned = {' '.join(args.tuned)}")
    result = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "matmul_peak_gflop_s": peaks, "steps": args.steps, "rows": rows}
    if args.out:
        save_text(json.dumps(result, indent=2) + "\n", Path(args.out))
    return result


def main(argv=None) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the runs' progress bars; the bench prints one line per run
    run_command("mindiff.bench", BenchArgs, bench, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
