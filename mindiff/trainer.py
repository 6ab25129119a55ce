"""THE training loop. It knows nothing about which model it trains: the objective says what the
loss is, what to batch from, how progress looks and how it is scored; the loop steps, logs,
writes grids and checkpoints."""

import itertools
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mindiff.build import build, load_autoencoder, objective_for, plain, read_checkpoint
from mindiff.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from mindiff.config import ConfigError, validate
from mindiff.data import DatasetError, epoch_batches, to_uint8
from mindiff.distributed import Dist
from mindiff.errors import not_fatal
from mindiff.files import check_writable_dir, lock_run_dir
from mindiff.images import save_gif, save_grid
from mindiff.metrics import Evaluator
from mindiff.resume import check_position, check_same_run
from mindiff.runtime import autocast, pick_device, rng_state, set_rng_state
from mindiff.tracking import Tracker, choose_mode

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """Where a run writes and how it is labelled in W&B (the CLI derives these from Hydra)."""
    run_dir: Path
    name: str
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    dist: Dist = Dist()  # this process's rank; rank 0 alone writes checkpoints, grids and W&B


class NonFiniteLoss(FloatingPointError):
    pass


def checkpoint_to_resume(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    if resume == "auto":
        found = latest_checkpoint(run_dir)
        if found is None:
            log.info("trainer.resume=auto: no checkpoint in %s yet, starting fresh", run_dir / "checkpoints")
        return found
    return Path(resume) if resume else None


class StopSignal:
    """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to stop after the current step; the run
    then saves a checkpoint, closes its W&B run and exits non-zero."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        return self

    def request(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def prune_snapshots(ckpt_dir: Path, keep_last: Optional[int], keep_epochs) -> None:
    """Keep the newest `keep_last` epoch snapshots, plus those at the epochs a sweep asked for."""
    if keep_last is None:
        return
    kept = {f"epoch_{e:04d}.pt" for e in keep_epochs}
    snapshots = sorted(p for p in ckpt_dir.glob("epoch_*.pt") if p.name not in kept)
    for old in snapshots[: max(0, len(snapshots) - keep_last)]:
        old.unlink()


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


def write_metrics(run_dir: Path, metrics: dict) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """This process alone trains in `run_dir` (a second gets one line, exit code 2); temp files that a
    killed write left in it are removed; the evaluation cache, written after the first epoch, is checked
    before any work."""
    lock_run_dir(run_dir)
    for stale in (run_dir / "checkpoints").glob("*.tmp"):
        stale.unlink()
    if cfg.eval.every:
        check_writable_dir(cfg.eval.cache_dir, "eval.cache_dir (or $MINDIFF_CACHE)")


def train(cfg: DictConfig, info: RunInfo) -> dict:
    """Train the model the config describes; returns the final metrics (also in run_dir/metrics.json)."""
    validate(cfg)
    resolved = plain(cfg)  # what the checkpoint records; every object is built from it, through the allowlist
    wandb_mode = choose_mode(cfg.logger.mode)
    tc, d = cfg.trainer, info.dist
    if tc.batch_size % d.world:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} (the global batch) must divide evenly over "
                          f"{d.world} processes")
    device = pick_device(tc.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    if d.main:
        claim_run_dir(info.run_dir, cfg)
    ckpt_path = checkpoint_to_resume(tc.resume, info.run_dir)
    state = read_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None:
        check_same_run(state["config"], resolved, ckpt_path)
        if state["epoch"] >= tc.epochs:
            log.info("%s already finished its %d epochs; nothing to train", info.run_dir, tc.epochs)
            return {**state.get("metrics", {}), "status": "already finished"}

    torch.manual_seed(tc.seed)
    autoencoder = load_autoencoder(cfg.autoencoder.ckpt) if cfg.autoencoder.ckpt else None
    objective = objective_for(resolved["schedule"], autoencoder)
    data = build(resolved["dataset"], "dataset")
    if len(data.train) < tc.batch_size:
        raise DatasetError(f"trainer.batch_size={tc.batch_size} is larger than the dataset "
                           f"({len(data.train)} images); lower it")
    if state is not None and state.get("train_images", len(data.train)) != len(data.train):
        raise DatasetError(f"resuming {ckpt_path}: the run trained on {state['train_images']} images, but the "
                           f"dataset now has {len(data.train)}; point dataset.root at the data it started with")
    model = build(resolved["model"], "model").to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if tc.compile else model  # shares its parameters with `model`
    if d.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = autocast(device, tc.precision)
    with amp:  # latents of a frozen autoencoder are encoded once, in the run's precision
        inputs = objective.inputs(data, device)
    steps_per_epoch = len(inputs) // tc.batch_size
    shard = d.shard(tc.batch_size)  # this process's slice of every global batch
    optimizer = build(resolved["optim"], "optim", None, model.parameters(), total_steps=steps_per_epoch * tc.epochs)
    n_params = sum(p.numel() for p in model.parameters())

    epoch, step, run_id, metrics = 0, 0, None, {}
    if state is not None:
        try:
            model.load_state_dict(state["train_model"] if state["train_model"] is not None else state["model"])
        except RuntimeError as e:
            detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
            raise CheckpointError(f"{ckpt_path} does not fit this run's model (was it written with another "
                                  f"model config?): {detail}") from None
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        epoch, step, run_id, metrics = state["epoch"], state["step"], state["wandb_run_id"], state.get("metrics", {})
        check_position(step, epoch, steps_per_epoch, ckpt_path)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, epoch, step)

    lc = cfg.logger
    tracker = Tracker(wandb_mode if d.main else "disabled", info.run_dir, resolved, info.name, lc.group or info.group, lc.project, lc.entity,
                      [*lc.tags, *info.tags], run_id=run_id)
    tracker.summary({"parameters": n_params})
    log.info("model: %s parameters; %d steps/epoch of %d images; device %s, %s", f"{n_params:,}",
             steps_per_epoch, tc.batch_size, device, tc.precision)

    bank = objective.preview_bank(data, tc.sample_grid, torch.Generator().manual_seed(tc.sample_seed), device)
    samples_dir, ckpt_dir = info.run_dir / "samples", info.run_dir / "checkpoints"

    ec, evaluator = cfg.eval, None

    def side_effect_free():
        """Grids and evaluations must not draw from the training RNG: a run that evaluates (or is
        stopped and resumed) trains exactly like one that does not."""
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def write_samples(tag: str) -> None:
        if not d.main:
            return
        with side_effect_free(), optimizer.averaged(model), amp:
            path = save_grid(to_uint8(objective.preview(model, bank)), samples_dir / f"{tag}.png", nrow=tc.sample_grid)
        tracker.log_image("samples", path, step, caption=tag)

    def evaluate(tag: str) -> None:
        nonlocal evaluator
        if not d.main:
            return
        with side_effect_free():
            if evaluator is None:  # trains the scoring classifier the first time a dataset is seen
                evaluator = Evaluator(data, device, ec.cache_dir, ec.classifier_epochs, ec.inception_weights, ec.fid)
        with side_effect_free(), optimizer.averaged(model), amp:
            scores = {f"eval/{k}": v for k, v in objective.evaluate(model, data, evaluator, ec.n, ec.seed).items()}
        tracker.log(scores, step=step)
        metrics.update(scores)
        with open(info.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "step": step, **scores}) + "\n")
        log.info("%s  %s", tag, "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    def write_checkpoint(*names: str) -> None:
        if not d.main:
            return
        with optimizer.averaged(model) as train_weights:
            snapshot = {"config": resolved, "kind": objective.kind, "autoencoder": autoencoder,
                        "model": model.state_dict(), "train_model": train_weights,
                        "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "rng": rng_state(),
                        "wandb_run_id": tracker.run_id, "parameters": n_params, "metrics": dict(metrics),
                        "train_images": len(data.train)}
            for name in names:
                save_checkpoint(snapshot, ckpt_dir / name)

    def flush(pending: list) -> list:
        losses = d.mean(torch.stack(pending).tolist())  # the one host sync per log_every steps
        first = step - len(losses) + 1
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                last = ckpt_dir / "last.pt"
                kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"
                raise NonFiniteLoss(f"loss became {value} at step {first + i}; {kept}. Lower optim.lr or try "
                                    f"trainer.precision=fp32")
            tracker.log({"loss": value, "lr": optimizer.lr, "epoch": epoch}, step=first + i)
        pending.clear()
        return losses

    exit_code = 1
    with StopSignal() as stop_signal:
        try:
            stopped = tc.max_steps is not None and step >= tc.max_steps
            while epoch < tc.epochs and not stopped:
                skip = step - epoch * steps_per_epoch  # batches of this epoch done before a resume
                bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step",
                           dynamic_ncols=True, leave=False)
                pending, losses, throughput, pass_start = [], [], Throughput(tc.batch_size), step
                for idx in itertools.islice(epoch_batches(len(inputs), tc.batch_size, tc.seed, epoch, device), skip, None):
                    x, y = inputs.batch(idx)
                    with amp:
                        loss, _ = objective.loss(train_model, x, y, shard)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                    pending.append(loss.detach())
                    bar.update(1)
                    if len(pending) == tc.log_every:
                        losses += flush(pending)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{throughput.images_per_s(len(losses)):.0f}")
                        throughput.synced(len(losses))
                    stopped = (tc.max_steps is not None and step >= tc.max_steps) or d.any(stop_signal.signum is not None)
                    if stopped:
                        break
                if pending:
                    losses += flush(pending)
                bar.close()
                if step == pass_start:  # check_position makes this unreachable; never loop without progress
                    raise RuntimeError(f"epoch {epoch + 1} made no step (step {step}, {steps_per_epoch} per epoch)")
                seconds, images_per_s = time.perf_counter() - throughput.start, throughput.images_per_s(len(losses))
                epoch_done = step == (epoch + 1) * steps_per_epoch
                epoch += int(epoch_done)
                metrics.update(final_loss=sum(losses) / max(1, len(losses)), epochs=epoch, steps=step,
                               images_per_s=images_per_s)
                tracker.log({"epoch_time_s": seconds, "images_per_s": metrics["images_per_s"],
                             "epoch_loss": metrics["final_loss"], "epoch": epoch}, step=step)
                log.info("epoch %d/%d  step %d  loss %.4f  %.0f img/s  %.1fs", epoch, tc.epochs, step,
                         metrics["final_loss"], metrics["images_per_s"], seconds)
                tag = f"epoch_{epoch:04d}" if epoch_done else f"step_{step:06d}"
                asked_for = epoch_done and epoch in tc.sample_epochs
                run_ends = epoch == tc.epochs or (stopped and stop_signal.signum is None)  # a signal: save, go
                keep = asked_for or (epoch_done and epoch % tc.ckpt_every == 0)
                write_checkpoint("last.pt", *([f"{tag}.pt"] if keep else []))  # first: nothing after can lose it
                if d.main:
                    prune_snapshots(ckpt_dir, tc.keep_last, tc.sample_epochs)
                if run_ends or asked_for or (epoch_done and epoch % tc.sample_every == 0):
                    with not_fatal(f"the sample grid at {tag}"):
                        write_samples(tag)
                if ec.every and (run_ends or (epoch_done and epoch % ec.every == 0)):
                    with not_fatal(f"the evaluation at {tag}"):
                        evaluate(tag)
                    if run_ends:  # the final scores belong in the final checkpoint (a re-run sweep returns them)
                        write_checkpoint("last.pt")
            if stop_signal.signum is not None:
                name = signal.Signals(stop_signal.signum).name
                log.warning("stopped by %s at step %d; checkpoint saved to %s; continue with hydra.run.dir=%s "
                            "trainer.resume=auto", name, step, ckpt_dir / "last.pt", info.run_dir)
                raise SystemExit(128 + stop_signal.signum)

            d.check_in_sync(model)
            frames = sorted(samples_dir.glob("*.png"), key=lambda p: p.stat().st_mtime_ns) if d.main else []
            if len(frames) > 1:
                with not_fatal("the progress GIF"):
                    tracker.log_video("samples_over_training", save_gif(frames, samples_dir / "progress.gif"), step)
            if lc.log_checkpoints:
                tracker.log_checkpoint(ckpt_dir / "last.pt", aliases=[f"epoch_{epoch:04d}", "latest"])
            tracker.summary(metrics)
            metrics["status"] = "finished" if epoch == tc.epochs else "stopped"
            if d.main:
                write_metrics(info.run_dir, metrics)
            exit_code = 0
            return metrics
        finally:
            tracker.finish(exit_code)
