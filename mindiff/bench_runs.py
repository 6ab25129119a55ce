"""What the bench times (`python -m mindiff.bench`), each call made in a fresh process so that its peak
memory is its own: mindiff's trainer, the plain reference loop, the Euler sampler, a whole MNIST run,
and the machine's matmul peak. Both loops run WARMUP_STEPS untimed steps first, then `steps` timed ones.
"""

import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WARMUP_STEPS = 10  # untimed: they pay one-off costs (compiling, kernel selection, optimizer state, workers)
RUN_EPOCHS = 30  # the GPU suite's whole MNIST run


def overrides_for(case: str, data: str, workdir: Path) -> List[str]:
    cifar = ["dataset=image_folder", f"dataset.root={data}/cifar10-jpeg/train", "dataset.hflip=true"]
    if case in ("mnist", "sample"):
        return [f"dataset.root={data}", "dataset.download=false"]
    if case == "ae":
        return ["experiment=cifar_ae", *cifar]
    return ["experiment=cifar_ldm", *cifar, f"autoencoder.ckpt={workdir / 'ae' / 'checkpoints' / 'last.pt'}"]


def compose(overrides: List[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from mindiff.config import CONF  # importing it registers the schemas
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
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


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that reach a kernel (autocast's casts and autograd's backward included, views
    not): at a small batch a GPU step is bound by how many kernels it launches, not by its FLOPs."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def step_counts(cfg, device, precision: str) -> dict:
    """Per forward+backward of the model under the run's autocast: FLOPs per image (torch's
    FlopCounterMode) and the ops it runs (OpCounter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mindiff.build import build, input_shape, plain
    from mindiff.runtime import autocast
    model = build(plain(cfg)["model"], "model").to(device)
    shape = input_shape(cfg.autoencoder.ckpt, cfg.dataset.channels, cfg.dataset.image_size)
    x, t, y = torch.randn(8, *shape, device=device), torch.rand(8, device=device), torch.zeros(8, dtype=torch.long,
                                                                                               device=device)
    with FlopCounterMode(display=False) as flops, OpCounter() as ops:
        with autocast(torch.device(device), precision):
            loss = model(x, t, y).float().square().mean()  # every mindiff model is called as model(x, t, y)
        loss.backward()
    return {"flops_per_image": flops.get_total_flops() / 8, "ops_per_step": ops.ops}


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
            **step_counts(cfg, device, precision)}


def run_baseline(case: str, steps: int, data: str, device: str, workdir: str, workers: int = 0) -> dict:
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
    loader = DataLoader(ds, batch_size=cfg.trainer.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device == "cuda", persistent_workers=workers > 0)
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
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
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


def mnist_run_wall_time(data: str, workdir: str) -> dict:
    """The trainer's 30-epoch MNIST toy, speed=auto, bf16: seconds from the call to the last checkpoint."""
    from mindiff.tracking import RunInfo
    from mindiff.trainer import train
    cfg = compose([*overrides_for("mnist", data, Path(workdir)), f"trainer.epochs={RUN_EPOCHS}", "trainer.speed=auto",
                   "trainer.precision=bf16", "trainer.device=cuda", "logger.mode=disabled", "eval.every=null",
                   "trainer.sample_every=10"])
    start = time.perf_counter()
    metrics = train(cfg, RunInfo(Path(workdir) / "mnist-30", "mnist"))
    torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - start, "images_per_s_last_epoch": metrics["images_per_s"]}
