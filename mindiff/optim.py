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
    `schedule_free_update`, compiled into one kernel per tensor (`compiled`) or eager. The per-step
    scalars follow the library's `step` line by line, as float64 tensor arithmetic.

    `capturable`: those scalars (k, lr_max, the weight sum) live in 0-dim tensors on the parameters'
    device, so step() makes no host sync and a CUDA graph can capture it; the learning rate is then
    the group's initial_lr times `lr_factor`, a device tensor the owner sets (its schedule). The
    group's floats, which the library's checkpoints hold, are brought up to date by state_dict()."""

    def __init__(self, params, compiled: bool = True, capturable: bool = False, **kwargs):
        super().__init__(params, **kwargs)
        self.compiled, self.capturable = compiled, capturable
        self.lr_factor: Optional[torch.Tensor] = None
        self.counters: dict = {}  # capturable: group index -> its device counters

    def group_counters(self, i: int, group: dict, device: torch.device) -> dict:
        counters = self.counters.get(i)
        if counters is None:
            counters = {key: torch.tensor(float(group[key]), dtype=torch.float64,
                                          device=device if self.capturable else "cpu")
                        for key in ("k", "lr_max", "weight_sum")}
            if self.capturable:
                self.counters[i] = counters
        return counters

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("this schedule-free optimizer takes no closure")
        update = compiled_update() if self.compiled else schedule_free_update
        for i, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError("the optimizer is in eval mode; call .train() before step()")
            active = [p for p in group["params"] if p.grad is not None]
            if not active:
                continue
            c = self.group_counters(i, group, active[0].device)
            beta1, beta2 = group["betas"]
            k1 = c["k"] + 1
            if self.lr_factor is not None:
                lr = group["initial_lr"] * self.lr_factor.to(torch.float64)
            else:
                lr = torch.full_like(k1, group["lr"])
            if group["warmup_steps"]:
                lr = lr * (k1 / group["warmup_steps"]).clamp(max=1.0)
            torch.maximum(c["lr_max"], lr, out=c["lr_max"])
            weight = k1 ** group["r"] * c["lr_max"] ** group["weight_lr_power"]
            c["weight_sum"].add_(weight)
            ckp1 = torch.where(c["weight_sum"] > 0, weight / c["weight_sum"], torch.zeros_like(weight))
            c["k"].copy_(k1)
            # 0-dim tensors, not floats: a compiled graph takes new values without recompiling (and
            # torch 2.14 mis-compiles a float argument that is used twice, as ckp1 is)
            constants = [torch.tensor(v, dtype=torch.float64)
                         for v in (beta1, beta2, group["eps"], group["weight_decay"])]
            scalars = (lr, ckp1, *constants[:2], 1 - beta2 ** k1, *constants[2:])
            for p in active:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = torch.clone(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                tensors = (p, p.grad, state["exp_avg_sq"], state["z"])
                if all(t.is_contiguous() for t in tensors):  # one compiled kernel serves every parameter shape
                    tensors = tuple(t.view(-1) for t in tensors)
                update(*tensors, *scalars)
            if not self.capturable:  # host tensors: reading them back costs nothing
                self.write_counters(group, c, lr)
        return None

    @staticmethod
    def write_counters(group: dict, counters: dict, lr: Optional[torch.Tensor] = None) -> None:
        group["k"] = int(counters["k"].item())
        group["lr_max"], group["weight_sum"] = counters["lr_max"].item(), counters["weight_sum"].item()
        if lr is not None:
            group["scheduled_lr"] = lr.item()

    def state_dict(self) -> dict:
        for i, counters in self.counters.items():  # one host sync, at checkpoint time only
            self.write_counters(self.param_groups[i], counters)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for i, counters in self.counters.items():  # in place: a captured graph keeps reading these tensors
            for key, value in counters.items():
                value.fill_(float(self.param_groups[i][key]))


class Optimizer:
    """`ema`: also keep an exponential moving average of the trained weights (decay `ema`, warmed up as
    min(ema, (1 + n) / (10 + n)) at step n), and sample, evaluate and save with it instead.

    `capturable` (schedule-free only): step() makes no host sync (the schedule, the EMA's warmup and the
    optimizer's scalars are computed on the device), so a CUDA graph can capture it with the rest of
    the training step; the checkpoint it writes is the same as without."""

    def __init__(self, params: Iterable[torch.nn.Parameter], total_steps: int, algorithm: str = "schedulefree_adamw",
                 lr: float = 2e-3, betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.01,
                 warmup_steps: int = 0, decay: str = "none", min_lr: float = 0.0, fused: bool = False,
                 ema: Optional[float] = None, capturable: bool = False):
        betas, params = tuple(betas), list(params)
        self.params, self.ema_decay, self.ema_steps, self.capturable = params, ema, 0, capturable
        self.ema = [p.detach().clone() for p in params] if ema else None
        self.schedule_free = algorithm == "schedulefree_adamw"
        if self.schedule_free:  # warms up by itself
            own = dict(compiled=fused, capturable=capturable) if fused or capturable else {}
            kind = FusedAdamWScheduleFree if own else schedulefree.AdamWScheduleFree
            self.opt = kind(params, lr=lr, betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps, **own)
            self.opt.train()
        elif algorithm == "adamw":
            if capturable:
                raise ValueError("a captured step (trainer.cuda_graph) needs optim.algorithm=schedulefree_adamw")
            self.opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                         fused=fused or None)  # None, not False: torch then picks foreach
        else:
            raise ValueError(f"optim.algorithm={algorithm!r}: choose schedulefree_adamw or adamw")
        own_warmup = 0 if self.schedule_free else warmup_steps
        floor = min_lr / lr

        def factor(step) -> torch.Tensor:
            """The learning rate's multiplier at `step`: an int (LambdaLR's, on the host) or a device tensor."""
            step = torch.as_tensor(step, dtype=torch.float64)
            f = ((step + 1) / own_warmup).clamp(max=1.0) if own_warmup else torch.ones_like(step)
            if decay == "cosine":
                progress = (step / max(1, total_steps)).clamp(max=1.0)
                f = f * (floor + (1 - floor) * 0.5 * (1 + torch.cos(math.pi * progress)))
            return f

        self.factor, self.base_lr = factor, lr
        self.lr_schedule = LambdaLR(self.opt, lambda step: factor(step).item())
        if capturable:  # the step count and the EMA's, as device tensors that a graph replay advances
            device = params[0].device
            self.steps_done = torch.zeros((), dtype=torch.float64, device=device)
            self.ema_steps_done = torch.zeros((), dtype=torch.float64, device=device)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.capturable:
            self.opt.lr_factor = self.factor(self.steps_done)
            self.opt.step()
            self.steps_done.add_(1)
        else:
            self.opt.step()
            self.lr_schedule.step()
        if self.ema is not None:
            if self.capturable:  # a device tensor, once per tensor: as one number it would be read back
                self.ema_steps_done.add_(1)
                weight = [self.ema_weight(self.ema_steps_done)] * len(self.ema)
            else:
                self.ema_steps += 1
                weight = self.ema_weight(self.ema_steps).item()
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], weight)

    def ema_weight(self, n) -> torch.Tensor:
        """How far the EMA moves towards the weights at its step n (an int, or a device tensor): 1 - decay,
        the decay warmed up as min(ema, (1 + n) / (10 + n))."""
        return 1 - torch.as_tensor((1 + n) / (10 + n), dtype=torch.float64).clamp(max=self.ema_decay)

    def lr_at(self, step: int) -> float:
        """The learning rate that step number `step` (counting from 1) took, for the logs: computed on the
        host, so it costs no sync (schedule-free's own warmup comes on top)."""
        return self.base_lr * self.factor(step - 1).item()

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
        if self.capturable:  # the device counters, read back at checkpoint time only
            self.ema_steps = int(self.ema_steps_done.item())
            self.lr_schedule.last_epoch = int(self.steps_done.item()) - 1
            self.lr_schedule.step()  # sets the groups' lr to what the uncaptured path would hold
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
        if self.capturable:
            self.steps_done.fill_(self.lr_schedule.last_epoch)
            self.ema_steps_done.fill_(self.ema_steps)
