"""The optimizer and its learning-rate schedule, as one object the loop steps.

Schedule-free AdamW keeps two sets of weights: `y`, where gradients are taken, and `x`, the
average that is used for sampling, evaluation and saving. `averaged(model)` swaps `x` in and then
puts `y` back bit-exactly, so a run that samples or saves often trains exactly like one that
does not (and a resumed run like an uninterrupted one).
"""

import functools
import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import schedulefree
import torch
from torch.optim.lr_scheduler import LambdaLR


def schedule_free_update(y, grad, exp_avg_sq, z, lr, ckp1, beta1, beta2, bias_correction2, eps, weight_decay):
    """One tensor's schedule-free AdamW update, the same arithmetic as `schedulefree.AdamWScheduleFree`'s
    foreach path, compiled into one kernel: one pass over y, grad, exp_avg_sq and z instead of ten."""
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    grad = grad / ((exp_avg_sq / bias_correction2).sqrt() + eps) + weight_decay * y
    y.lerp_(z, ckp1)
    y.add_(grad * (lr * (beta1 * (1 - ckp1) - 1)))
    z.sub_(grad * lr)


@functools.cache
def compiled_update():
    """`schedule_free_update` compiled on first use: merely importing torch.compile's machinery costs
    seconds, which a run without optim.fused need not pay."""
    return torch.compile(schedule_free_update, fullgraph=True, dynamic=True)


class FusedAdamWScheduleFree(schedulefree.AdamWScheduleFree):
    """`schedulefree.AdamWScheduleFree` (same state, checkpoints, train()/eval()) whose step runs
    `schedule_free_update`. The per-step scalars follow the library's `step` line by line."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("optim.fused=true takes no closure")
        update = compiled_update()
        for group in self.param_groups:
            if not group["train_mode"]:
                raise RuntimeError("the optimizer is in eval mode; call .train() before step()")
            beta1, beta2 = group["betas"]
            k, warmup = group["k"], group["warmup_steps"]
            lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
            group["scheduled_lr"] = lr
            lr_max = group["lr_max"] = max(lr, group["lr_max"])
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
            weight_sum = group["weight_sum"] = group["weight_sum"] + weight
            ckp1 = weight / weight_sum if weight_sum else 0.0
            # 0-dim CPU tensors, not floats: a compiled graph takes new values without recompiling (and
            # torch 2.14 mis-compiles a float argument that is used twice, as ckp1 is)
            scalars = [torch.tensor(v, dtype=torch.float64) for v in
                       (lr, ckp1, beta1, beta2, 1 - beta2 ** (k + 1), group["eps"], group["weight_decay"])]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    state["z"] = torch.clone(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                tensors = (p, p.grad, state["exp_avg_sq"], state["z"])
                if all(t.is_contiguous() for t in tensors):  # one compiled kernel serves every parameter shape
                    tensors = tuple(t.view(-1) for t in tensors)
                update(*tensors, *scalars)
            group["k"] = k + 1
        return None


class Optimizer:
    """`ema`: also keep an exponential moving average of the trained weights (decay `ema`, warmed up as
    min(ema, (1 + n) / (10 + n)) at step n), and sample, evaluate and save with it instead."""

    def __init__(self, params: Iterable[torch.nn.Parameter], total_steps: int, algorithm: str = "schedulefree_adamw",
                 lr: float = 2e-3, betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.01,
                 warmup_steps: int = 0, decay: str = "none", min_lr: float = 0.0, fused: bool = False,
                 ema: Optional[float] = None):
        betas, params = tuple(betas), list(params)
        self.params, self.ema_decay, self.ema_steps = params, ema, 0
        self.ema = [p.detach().clone() for p in params] if ema else None
        self.schedule_free = algorithm == "schedulefree_adamw"
        if self.schedule_free:  # warms up by itself
            kind = FusedAdamWScheduleFree if fused else schedulefree.AdamWScheduleFree
            self.opt = kind(params, lr=lr, betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps)
            self.opt.train()
        elif algorithm == "adamw":
            self.opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                         fused=fused or None)  # None, not False: torch then picks foreach
        else:
            raise ValueError(f"optim.algorithm={algorithm!r}: choose schedulefree_adamw or adamw")
        own_warmup = 0 if self.schedule_free else warmup_steps
        floor = min_lr / lr

        def factor(step: int) -> float:
            f = min(1.0, (step + 1) / own_warmup) if own_warmup else 1.0
            if decay == "cosine":
                progress = min(1.0, step / max(1, total_steps))
                f *= floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
            return f

        self.lr_schedule = LambdaLR(self.opt, factor)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.opt.step()
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema_steps += 1
            decay = min(self.ema_decay, (1 + self.ema_steps) / (10 + self.ema_steps))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    @contextmanager
    def averaged(self, model: torch.nn.Module) -> Iterator[Optional[dict]]:
        """Inside: the model holds the weights to sample, evaluate and save with (the EMA, else
        schedule-free's average x). Yields the training weights when they differ from those, else None."""
        model.eval()
        if not self.schedule_free and self.ema is None:
            try:
                yield None
            finally:
                model.train()
            return
        train_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.ema is not None:
            torch._foreach_copy_([p.detach() for p in self.params], self.ema)
        else:
            self.opt.eval()
        try:
            yield train_weights
        finally:
            if self.ema is None:
                self.opt.train()
            model.load_state_dict(train_weights)
            model.train()

    def state_dict(self) -> dict:
        ema = {"ema": self.ema, "ema_steps": self.ema_steps} if self.ema is not None else {}
        return {"optimizer": self.opt.state_dict(), "lr_schedule": self.lr_schedule.state_dict(), **ema}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.ema is not None:
            torch._foreach_copy_(self.ema, state["ema"])
            self.ema_steps = state["ema_steps"]
        if self.schedule_free:
            for group in self.opt.param_groups:  # saved in eval mode inside `averaged`; we train now
                group["train_mode"] = True
