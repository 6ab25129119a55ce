"""What is learned: the loss a model is trained on and how samples are drawn from it.

An objective has no I/O and knows no model internals; the training loop calls
`loss(model, x, y)` and `sample(model, noise, y)` and nothing else.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


class AlphaBlend:
    """Alpha blending (IADB / rectified flow): x_t = (1-t)·x0 + t·eps, the model predicts
    v = x0 - eps, and sampling integrates dx/dt = -v with Euler steps from t=1 (noise) to t=0."""

    def __init__(self, t_sampling: str = "uniform", loss_terms: Sequence[str] = ("target", "eps", "x0"),
                 sample_steps: int = 32):
        self.t_sampling = t_sampling
        self.loss_terms = tuple(loss_terms)
        self.sample_steps = sample_steps

    def draw_t(self, n: int, device) -> torch.Tensor:
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        return torch.rand(n, device=device)

    def loss(self, model, x0: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        eps = torch.randn_like(x0)
        t = self.draw_t(len(x0), x0.device)
        tb = t.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - tb) * x0 + tb * eps
        v = model(x_t, t, y).float()
        terms = {}
        if "target" in self.loss_terms:
            terms["target"] = F.mse_loss(v, x0 - eps)
        if "eps" in self.loss_terms:  # the eps implied by v: x_t - (1-t)·v
            terms["eps"] = F.mse_loss(x_t - (1 - tb) * v, eps)
        if "x0" in self.loss_terms:  # the x0 implied by v: x_t + t·v
            terms["x0"] = F.mse_loss(x_t + tb * v, x0)
        return sum(terms.values()), {k: t.detach() for k, t in terms.items()}

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor, y: Optional[torch.Tensor], steps: Optional[int] = None) -> torch.Tensor:
        steps = steps or self.sample_steps
        ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
        x = noise
        for i in range(steps):
            v = model(x, ts[i].expand(len(x)), y).float()
            x = x + (ts[i] - ts[i + 1]) * v
        return x
