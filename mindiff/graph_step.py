"""The whole training step as one CUDA graph (trainer.cuda_graph).

At a small batch a GPU step is bound by kernel launches and Python, not by math. A CUDA graph
records every kernel of one step (the batch gather from the device-resident data, noise and t,
forward, backward, the optimizer update) once, and replays them with one launch. What changes
from step to step lives in device memory the graph reads: the batch indices (copied into a fixed
buffer), the RNG (CUDA's generator advances its offset per replay) and the optimizer's counters
(`Optimizer(capturable=True)`). Grids, evaluations and checkpoints run between replays, in place
on the same tensors.
"""

from typing import Callable, Dict, Optional, Tuple

import torch

Step = Callable[[torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


class GraphedStep:
    """`step(idx) -> (loss, terms)`, run eagerly for WARMUP calls on a side stream (as capture requires:
    lazy state such as the optimizer's is created there), then captured on the next call and replayed
    from then on. Every call trains on its own batch: the capturing call replays right away."""

    WARMUP = 3

    def __init__(self, step: Step, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, not {device}")
        self.step, self.device, self.calls = step, device, 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.stream = torch.cuda.Stream(device)

    def __call__(self, idx: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if self.graph is None and self.calls < self.WARMUP:
            self.calls += 1
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                out = self.step(idx)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            return out
        if self.graph is None:
            self.idx = idx.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.terms = self.step(self.idx)
        else:
            self.idx.copy_(idx)
        self.graph.replay()
        # the graph's outputs are overwritten by the next replay: the loss is kept as a copy; the terms
        # are summed by the caller before that replay is queued
        return self.loss.clone(), self.terms
