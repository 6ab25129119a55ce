"""THE training loop. It knows nothing about which model it trains: the objective says what the
loss is, what to batch from, how progress looks and how it is scored; the loop steps, logs,
writes grids and checkpoints."""

import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mindiff.build import build, load_autoencoder, objective_for, plain
from mindiff.cadence import epoch_actions, side_work
from mindiff.checkpoint import prune_snapshots, save_checkpoint
from mindiff.config import ConfigError, validate
from mindiff.data import DatasetError, epoch_batches, to_uint8
from mindiff.errors import NonFiniteLoss, not_fatal
from mindiff.files import check_writable_dir, lock_run_dir, save_text
from mindiff.graph_step import GraphedStep
from mindiff.images import save_gif, save_grid
from mindiff.latent_cache import cached_inputs
from mindiff.metrics import Evaluator, classifier_floor
from mindiff.objectives import epoch_terms
from mindiff.resume import EpochSums, already_finished, check_same_data, kept_checkpoint, restore, resume_point
from mindiff.runtime import autocast, pick_device, rng_state, side_effect_free
from mindiff.signals import StopSignal, exit_on_stop, shielded
from mindiff.speed import apply_speed
from mindiff.tracking import RunInfo, Throughput, Tracker, choose_mode

log = logging.getLogger(__name__)


class Run:
    """One training run: what it trains with, built once from the resolved config, and where it stands
    (epoch, step, metrics). Every rank trains; rank 0 alone writes checkpoints, grids and evaluations."""

    def __init__(self, cfg: DictConfig, info: RunInfo, resolved: dict, device: torch.device, wandb_mode: str,
                 state: Optional[dict] = None, ckpt_path: Optional[Path] = None):
        self.cfg, self.tc, self.ec, self.info, self.d = cfg, cfg.trainer, cfg.eval, info, info.dist
        self.resolved, self.device, tc = resolved, device, cfg.trainer
        torch.manual_seed(tc.seed)
        self.autoencoder = load_autoencoder(cfg.autoencoder.ckpt) if cfg.autoencoder.ckpt else None
        self.objective = objective_for(resolved["schedule"], self.autoencoder)
        self.data = build(resolved["dataset"], "dataset")
        if len(self.data.train) < tc.batch_size:
            raise DatasetError(f"trainer.batch_size={tc.batch_size} is larger than the dataset "
                               f"({len(self.data.train)} images); lower it")
        if state is not None:
            check_same_data(state, len(self.data.train), ckpt_path)
        model = self.model = build(resolved["model"], "model").to(device)
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
        self.train_model = self.d.wrap(torch.compile(model) if tc.compile else model)  # shares `model`'s parameters
        self.amp = autocast(device, tc.precision, cache=not tc.cuda_graph)  # a graph may not hold autocast's cache
        with self.amp:  # latents of a frozen autoencoder are encoded once, in the run's precision, and cached
            self.inputs = cached_inputs(self.objective, self.data, device, self.autoencoder,
                                        cfg.autoencoder.latent_cache, tc.precision)
        self.steps_per_epoch = len(self.inputs) // tc.batch_size
        self.shard = self.d.shard(tc.batch_size)  # this process's slice of every global batch
        self.optimizer = build(resolved["optim"], "optim", None, model.parameters(),
                               total_steps=self.steps_per_epoch * tc.epochs, capturable=tc.cuda_graph)
        self.train_step = GraphedStep(self.eager_step, device) if tc.cuda_graph else self.eager_step
        self.n_params = sum(p.numel() for p in model.parameters())
        self.evaluator, self.abandoned = None, None  # abandoned: the side work a stop request cut short
        self.epoch, self.step, self.metrics, self.sums = (0, 0, {}, EpochSums()) if state is None else restore(
            state, ckpt_path, model, self.optimizer, self.steps_per_epoch)
        self.tracker = Tracker(wandb_mode if self.d.main else "disabled", info, resolved, cfg.logger,
                               run_id=state["wandb_run_id"] if state is not None else None)
        self.tracker.summary({"parameters": self.n_params})
        log.info("model: %s parameters; %d steps/epoch of %d images; device %s, %s", f"{self.n_params:,}",
                 self.steps_per_epoch, tc.batch_size, device, tc.precision)
        self.bank = self.objective.preview_bank(self.data, tc.sample_grid,
                                                torch.Generator().manual_seed(tc.sample_seed), device)
        self.samples_dir, self.ckpt_dir = info.run_dir / "samples", info.run_dir / "checkpoints"

    def at_max_steps(self) -> bool:
        return self.tc.max_steps is not None and self.step >= self.tc.max_steps

    def train_epoch(self, stop: StopSignal) -> bool:
        """Steps through the rest of this epoch; returns whether max_steps or a signal (on any rank) cut it short."""
        tc, stopped, pass_start = self.tc, False, self.step
        skip = self.step - self.epoch * self.steps_per_epoch  # batches of this epoch done before a resume
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {self.epoch + 1}/{tc.epochs}",
                   unit="step", dynamic_ncols=True, leave=False)
        pending, self.losses, self.throughput = [], [], Throughput(tc.batch_size)
        if not skip:  # a new epoch; resumed mid-epoch, the sums it had go on
            self.sums = EpochSums()
        batches = epoch_batches(len(self.inputs), tc.batch_size, tc.seed, self.epoch, self.device)
        for idx in itertools.islice(batches, skip, None):
            loss, terms = self.train_step(idx)
            self.step += 1
            pending.append(loss)
            self.sums.add_terms(terms)
            bar.update(1)
            if len(pending) == tc.log_every:
                self.flush(pending)
                bar.set_postfix(loss=f"{self.losses[-1]:.4f}",
                                img_s=f"{self.throughput.images_per_s(len(self.losses)):.0f}")
                self.throughput.synced(len(self.losses))
            stopped = self.at_max_steps() or self.d.any(stop.signum is not None)
            if stopped:
                break
        if pending:
            self.flush(pending)
        bar.close()
        if self.step == pass_start:  # check_position makes this unreachable; never loop without progress
            raise RuntimeError(f"epoch {self.epoch + 1} made no step (step {self.step}, {self.steps_per_epoch} "
                               f"per epoch)")
        return stopped

    def eager_step(self, idx: torch.Tensor):
        """One optimizer step on the batch `idx`: what trainer.cuda_graph captures whole."""
        x, y = self.inputs.batch(idx)
        with self.amp:
            loss, terms = self.objective.loss(self.train_model, x, y, self.shard)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach(), terms

    def flush(self, pending: list) -> None:
        losses = self.d.mean(torch.stack(pending).tolist())  # the one host sync per log_every steps
        pending.clear()
        first = self.step - len(losses) + 1
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss became {value} at step {first + i}; {kept_checkpoint(self.ckpt_dir)}. "
                                    f"Lower optim.lr or try trainer.precision=fp32")
            step = first + i
            self.tracker.log({"loss": value, "lr": self.optimizer.lr_at(step), "epoch": self.epoch}, step=step)
        self.losses += losses
        self.sums.add(losses)

    def end_epoch(self, stopped: bool, signalled: bool) -> None:
        """Logs the pass, checkpoints, then does the side work that `epoch_actions` asks for."""
        tc, losses = self.tc, self.losses
        seconds, images_per_s = time.perf_counter() - self.throughput.start, self.throughput.images_per_s(len(losses))
        act = epoch_actions(self.epoch, self.step, self.steps_per_epoch, epochs=tc.epochs, stopped=stopped,
                            signalled=signalled, sample_every=tc.sample_every, sample_epochs=tc.sample_epochs,
                            ckpt_every=tc.ckpt_every, eval_every=self.ec.every,
                            eval_at_max_steps=self.ec.at_max_steps)
        self.epoch = act.epoch
        self.metrics.update(final_loss=self.sums.mean_loss, epochs=self.epoch, steps=self.step,
                            images_per_s=images_per_s)
        record = {"epoch": self.epoch, "step": self.step, "loss": self.metrics["final_loss"],
                  **epoch_terms(self.sums.terms, self.sums.steps)}  # a line of metrics.jsonl, + scores if evaluated
        self.tracker.log({"epoch_time_s": seconds, "images_per_s": images_per_s, "epoch_loss": record["loss"],
                          **record}, step=self.step)
        log.info("epoch %d/%d  step %d  loss %.4f  %.0f img/s  %.1fs", self.epoch, tc.epochs, self.step,
                 self.metrics["final_loss"], images_per_s, seconds)
        if not self.d.main:  # rank 0 alone writes
            return
        # the checkpoint first: nothing after it (a grid, an evaluation) can lose the epoch
        with shielded():
            self.write_checkpoint("last.pt", *([f"{act.tag}.pt"] if act.snapshot else []))
        prune_snapshots(self.ckpt_dir, tc.keep_last, tc.sample_epochs)
        scores, self.abandoned = side_work(act, lambda: self.write_samples(act.tag), lambda: self.evaluate(act.tag))
        record.update(scores)
        if scores and act.run_ends:  # the final scores belong in the final checkpoint (a re-run sweep returns them)
            with shielded():
                self.write_checkpoint("last.pt")
        with shielded(), not_fatal("metrics.jsonl"), open(self.info.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_samples(self, tag: str) -> None:
        with side_effect_free(self.device), self.optimizer.averaged(self.model), self.amp:
            grid = to_uint8(self.objective.preview(self.model, self.bank))
            path = save_grid(grid, self.samples_dir / f"{tag}.png", nrow=self.tc.sample_grid)
        self.tracker.log_image("samples", path, self.step, caption=tag)

    def evaluate(self, tag: str) -> dict:
        ec = self.ec
        with side_effect_free(self.device):
            if self.evaluator is None:  # trains the scoring classifier the first time a dataset is seen
                self.evaluator = Evaluator(self.data, self.device, ec.cache_dir, ec.classifier_epochs,
                                           ec.inception_weights, ec.fid,
                                           classifier_floor(self.cfg.dataset._target_, ec.min_classifier_accuracy))
        with side_effect_free(self.device), self.optimizer.averaged(self.model), self.amp:
            scores = self.objective.evaluate(self.model, self.data, self.evaluator, ec.n, ec.seed)
        scores = {f"eval/{k}": v for k, v in scores.items()}
        self.tracker.log(scores, step=self.step)
        self.metrics.update(scores)
        log.info("%s  %s", tag, "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores

    def write_checkpoint(self, *names: str) -> None:
        with self.optimizer.averaged(self.model) as train_weights:
            snapshot = {"config": self.resolved, "kind": self.objective.kind, "autoencoder": self.autoencoder,
                        "model": self.model.state_dict(), "train_model": train_weights,
                        "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                        "rng": rng_state(), "wandb_run_id": self.tracker.run_id, "parameters": self.n_params,
                        "metrics": dict(self.metrics), "train_images": len(self.data.train),
                        "epoch_partial": self.sums.state()}
            for name in names:
                save_checkpoint(snapshot, self.ckpt_dir / name)

    def finish(self) -> dict:
        """The progress GIF, the checkpoint artifact, the W&B summary and metrics.json; returns the metrics."""
        self.d.check_in_sync(self.model)
        frames = sorted(self.samples_dir.glob("*.png"), key=lambda p: p.stat().st_mtime_ns) if self.d.main else []
        if len(frames) > 1:
            with not_fatal("the progress GIF"):
                gif = save_gif(frames, self.samples_dir / "progress.gif")
                self.tracker.log_video("samples_over_training", gif, self.step)
        if self.cfg.logger.log_checkpoints:
            self.tracker.log_checkpoint(self.ckpt_dir / "last.pt", aliases=[f"epoch_{self.epoch:04d}", "latest"])
        self.tracker.summary(self.metrics)
        self.metrics["status"] = "finished" if self.epoch == self.tc.epochs else "stopped"
        if self.d.main:
            save_text(json.dumps(self.metrics, indent=2) + "\n", self.info.run_dir / "metrics.json")
        return self.metrics


def train(cfg: DictConfig, info: RunInfo) -> dict:
    """Train the model the config describes; returns the final metrics (also in run_dir/metrics.json).
    A signal before the loop, or a second one in it, ends it at once: one line, exit code 128 + signal."""
    with exit_on_stop(lambda line: log.warning("%s; %s", line, kept_checkpoint(info.run_dir / "checkpoints"))) as stop:
        validate(cfg)
        tc, d = cfg.trainer, info.dist
        if tc.batch_size % d.world:
            raise ConfigError(f"trainer.batch_size={tc.batch_size} (the global batch) must divide evenly over "
                              f"{d.world} processes")
        device = d.device(pick_device(tc.device))
        apply_speed(cfg, device, d.world)  # trainer.speed=auto becomes the knobs themselves, before anything is built
        resolved = plain(cfg)  # what the checkpoint records; every object is built from it, through the allowlist
        wandb_mode = choose_mode(cfg.logger.mode)
        if d.main:  # this process alone trains there; the eval cache, first written after an epoch, is checked now
            lock_run_dir(info.run_dir)
            if cfg.eval.every:
                check_writable_dir(cfg.eval.cache_dir, "eval.cache_dir (or $MINDIFF_CACHE)")
        ckpt_path, state = resume_point(tc.resume, info.run_dir, resolved)
        if state is not None and (finished := already_finished(state, tc.epochs, info.run_dir, d.main)) is not None:
            return finished
        run = Run(cfg, info, resolved, device, wandb_mode, state, ckpt_path)
        exit_code = 1
        try:
            with stop.deferring():  # from here a signal lets the step end and the checkpoint be written
                stopped = run.at_max_steps()
                while run.epoch < tc.epochs and not stopped:
                    stopped = run.train_epoch(stop)
                    run.end_epoch(stopped, signalled=stopped and stop.agreed(d))
                    stopped = stopped or stop.agreed(d)  # a signal in the grid or evaluation: stop at the epoch's end
            if stop.signum is not None:
                abandoned = f" ({run.abandoned} was abandoned)" if run.abandoned else ""
                log.warning("stopped by %s at step %d%s; checkpoint saved to %s; continue with hydra.run.dir=%s "
                            "trainer.resume=auto", stop.name, run.step, abandoned, run.ckpt_dir / "last.pt",
                            info.run_dir)
                raise SystemExit(128 + stop.signum)
            metrics = run.finish()
            exit_code = 0
            return metrics
        finally:
            run.tracker.finish(exit_code)
