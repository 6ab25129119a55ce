"""The sampler layer (issue 22, not yet wired into the objectives): every sampler integrates the probability-flow
ODE of a diffusion whose marginal at grid point i is x = alpha[i]·x0 + sigma[i]·eps, from a data prediction
`denoise(x, i)` (x0). A formulation (alpha blending, VP, EDM) states its (alpha, sigma) per step and turns its
network's output into x0, and every sampler then works with it. One short function per sampler, over the
denoiser, in the manner of k-diffusion's sampling.py.

Grids run from noise to data and end at sigma = 0. They may start at alpha = 0 (alpha blending's t = 1: pure
noise), so no sampler divides by alpha: Euler is the DDIM step, Heun works in the rectified-flow time
t = sigma / (alpha + sigma), and DPM-Solver++ in lambda = log(alpha / sigma), which is -inf there."""

import math
from typing import Callable, Sequence

import torch

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]  # (x at grid point i, i) -> the x0 it predicts


def ddim_step(x, x0, alpha: float, sigma: float, alpha_next: float, sigma_next: float) -> torch.Tensor:
    """x moved to the next noise level holding x0 and the noise it implies fixed: Euler's step of the
    probability-flow ODE (the same in sigma for alpha = 1, and in rectified-flow time)."""
    return alpha_next * x0 + sigma_next * (x - alpha * x0) / sigma


def sample_euler(denoise: Denoiser, x: torch.Tensor, alpha: Sequence[float], sigma: Sequence[float]) -> torch.Tensor:
    for i in range(len(sigma) - 1):
        x = ddim_step(x, denoise(x, i), alpha[i], sigma[i], alpha[i + 1], sigma[i + 1])
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, alpha: Sequence[float], sigma: Sequence[float]) -> torch.Tensor:
    """Heun's method in rectified-flow time, where z = x / (alpha + sigma) = (1 - t)·x0 + t·eps moves with
    velocity eps - x0; the last step, to sigma = 0, is Euler's (the velocity is undefined at t = 0)."""
    for i in range(len(sigma) - 1):
        a, s, a_next, s_next = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        x0 = denoise(x, i)
        if s_next == 0:
            x = ddim_step(x, x0, a, s, a_next, s_next)
            continue
        t, t_next, scale_next = s / (a + s), s_next / (a_next + s_next), a_next + s_next
        velocity = (x - a * x0) / s - x0
        x_euler = (x / (a + s) + (t_next - t) * velocity) * scale_next
        x0_next = denoise(x_euler, i + 1)
        velocity_next = (x_euler - a_next * x0_next) / s_next - x0_next
        x = (x / (a + s) + (t_next - t) * (velocity + velocity_next) / 2) * scale_next
    return x


def log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma): -inf at pure noise, +inf at the data."""
    if alpha == 0:
        return -math.inf
    return math.inf if sigma == 0 else math.log(alpha / sigma)


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, alpha: Sequence[float], sigma: Sequence[float]) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep: each step extrapolates x0 from this step's
    prediction and the last one's; the first step (no last one yet) and the last (to sigma = 0) are first order."""
    x0_last, h_last = None, None
    for i in range(len(sigma) - 1):
        a, s, a_next, s_next = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        x0 = denoise(x, i)
        h = log_snr(a_next, s_next) - log_snr(a, s)
        x0_used = x0
        if x0_last is not None and s_next != 0:
            r = h_last / h  # inf after a start at pure noise: the correction then vanishes
            x0_used = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last
        x = (s_next / s) * x - a_next * math.expm1(-h) * x0_used
        x0_last, h_last = x0, h
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list:
    """EDM's noise levels (Karras et al. 2022, eq. 5): `steps` levels from sigma_max to sigma_min, evenly spaced in
    sigma^(1/rho), then 0."""
    ramp = [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + u * (lo - hi)) ** rho for u in ramp] + [0.0]
