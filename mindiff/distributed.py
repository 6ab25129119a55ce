"""Data-parallel training on existing engines: torchrun (or SLURM tasks through submitit) start the
processes; this module only reads their environment and joins the process group.

Every rank draws the same permutation and the same noise for the whole global batch and trains
on its own slice of it, so N ranks of batch B/N step exactly like one process of batch B.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's GPU when the run is on GPUs (LOCAL_RANK picks it)."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this rank trains it: under DistributedDataParallel when there are several ranks."""
        if self.world == 1:
            return model
        device = next(model.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batch_size: int) -> slice:
        per_rank = batch_size // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    @staticmethod
    def _device() -> str:
        """Where a tensor for a collective must live: nccl reduces on the GPU, gloo on the CPU."""
        return "cuda" if dist.get_backend() == "nccl" else "cpu"

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on one (a stop must happen on all ranks at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: list) -> list:
        if self.world == 1 or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Replicas must hold bit-identical weights; a difference means the ranks diverged."""
        if self.world == 1:
            return
        sums = [p.detach().double().sum().item() for p in model.parameters()]
        everyone = [None] * self.world
        dist.all_gather_object(everyone, sums)
        if any(other != sums for other in everyone):
            raise RuntimeError(f"rank weights diverged: per-parameter sums differ across {self.world} ranks")

    def broadcast(self, obj):
        """Rank 0's value of `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_environment() -> Dist:
    """Join the process group that torchrun (or SLURM tasks started by submitit) set up; one process
    without either."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SUBMITIT_EXECUTOR" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment
        TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from SLURM
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank)
