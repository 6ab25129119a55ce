"""What is learned: the loss a model is trained on, how its progress is shown, and how it is scored.

An objective has no I/O and knows no model internals. The training loop asks it for
  inputs(data, device)            what to batch from: `len()` and `batch(idx) -> (x, y)`
  loss(model, x, y)               a scalar and its detached terms
  preview_bank(data, n, gen, dev) fixed inputs for the progress grids (the same every epoch)
  preview(model, bank)            the grid's images in [-1, 1]
  evaluate(model, data, evaluator, n, seed)   held-out metrics (may be empty)
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mindiff.data import Dataset, PixelBatches, to_uint8, to_unit_range
from mindiff.models.class_embedding import NULL_CLASS
from mindiff.signals import checked

Terms = Dict[str, torch.Tensor]


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images in [-1, 1] (torchmetrics). Imported on first use: torchmetrics pulls in
    torchvision and torch._dynamo, seconds that a run without an SSIM term need not pay."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    return structural_similarity_index_measure(images, reference, data_range=2.0)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (torchmetrics, imported on first use like `ssim`)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    return peak_signal_noise_ratio(images, reference, data_range=2.0)


def epoch_terms(sums: Terms, steps: int) -> Dict[str, float]:
    """What `loss` returned, summed over an epoch's steps, as the numbers to log: each term's mean as
    loss/<term>, and the target loss per bin of t (from the summed `by_t`) as loss_by_t/<from>-<to>."""
    logged = {}
    for name, total in sums.items():
        if name == "by_t":
            bins = total.shape[1]
            for i, (loss, count) in enumerate(zip(*total.tolist())):
                if count:
                    logged[f"loss_by_t/{i / bins:.1f}-{(i + 1) / bins:.1f}"] = loss / count
        else:
            logged[f"loss/{name}"] = total.item() / steps
    return logged


def grid_labels(grid: int, num_classes: int) -> torch.Tensor:
    """Class per column, cycling 0..num_classes-1, for a grid x grid sample grid."""
    return (torch.arange(grid) % num_classes).repeat(grid)


class AlphaBlend:
    """Alpha blending (IADB / rectified flow): x_t = (1-t)·x0 + t·eps, the model predicts
    v = x0 - eps, and sampling integrates dx/dt = -v from t=1 (noise) to t=0, with Euler steps (the
    reference) or Heun's (trapezoidal, two model calls a step).

    Classifier-free guidance: training replaces a `label_dropout` fraction of the labels by the null
    class; sampling then follows v_null + guidance·(v_class - v_null), both halves in one forward pass
    (guidance=1: the class-conditional model alone, one call)."""

    kind = "diffusion"
    T_BINS = 10  # the loss is also logged per tenth of t, to show *where* a variant is better

    def __init__(self, t_sampling: str = "uniform", loss_terms: Sequence[str] = ("target", "eps", "x0"),
                 sample_steps: int = 32, sampler: str = "euler", guidance: float = 1.0, label_dropout: float = 0.0):
        self.t_sampling = t_sampling
        self.loss_terms = tuple(loss_terms)
        self.sample_steps = sample_steps
        self.sampler, self.guidance, self.label_dropout = sampler, guidance, label_dropout

    @property
    def settings(self) -> dict:
        return dict(t_sampling=self.t_sampling, loss_terms=self.loss_terms, sample_steps=self.sample_steps,
                    sampler=self.sampler, guidance=self.guidance, label_dropout=self.label_dropout)

    def inputs(self, data: Dataset, device) -> PixelBatches:
        return PixelBatches(data.train.to(device), data.hflip)

    def sample_shape(self, image_shape: Sequence[int]) -> Tuple[int, ...]:
        return tuple(image_shape)

    def draw_t(self, n: int, device) -> torch.Tensor:
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        return torch.rand(n, device=device)

    def loss(self, model, x0: torch.Tensor, y: Optional[torch.Tensor],
             shard: slice = slice(None)) -> Tuple[torch.Tensor, Terms]:
        """`shard`: this process's part of the global batch; the noise is drawn for the whole batch
        first, so data-parallel ranks see exactly what one process would."""
        eps = torch.randn_like(x0)[shard]
        t = self.draw_t(len(x0), x0.device)[shard]
        if self.label_dropout and y is not None:  # drawn only when asked: p=0 trains exactly as before
            y = torch.where(torch.rand(len(y), device=y.device) < self.label_dropout, NULL_CLASS, y)
        x0, y = x0[shard], (y[shard] if y is not None else None)
        tb = t.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - tb) * x0 + tb * eps
        v = model(x_t, t, y).float()
        per_sample = (v - (x0 - eps)).square().flatten(1).mean(1)
        bins = (t * self.T_BINS).long().clamp(max=self.T_BINS - 1)
        by_t = torch.zeros(2, self.T_BINS, device=t.device)  # per bin: the summed loss, the number of samples
        by_t[0].index_add_(0, bins, per_sample.detach())
        by_t[1].index_add_(0, bins, torch.ones_like(per_sample))
        terms = {}
        if "target" in self.loss_terms:
            terms["target"] = per_sample.mean()
        if "eps" in self.loss_terms:  # the eps implied by v: x_t - (1-t)·v
            terms["eps"] = F.mse_loss(x_t - (1 - tb) * v, eps)
        if "x0" in self.loss_terms:  # the x0 implied by v: x_t + t·v
            terms["x0"] = F.mse_loss(x_t + tb * v, x0)
        if "ssim" in self.loss_terms:  # structure of the implied x0, not only its pixels
            terms["ssim"] = 1 - ssim(x_t + tb * v, x0)
        return sum(terms.values()), {**{k: t.detach() for k, t in terms.items()}, "by_t": by_t}

    def velocity(self, model, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """The model's v at (x, t), guided when guidance != 1: one batched call for both halves."""
        t = t.expand(len(x))
        if self.guidance == 1 or y is None:
            return model(x, t, y).float()
        v_class, v_null = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL_CLASS)])
                                ).float().chunk(2)
        return v_null + self.guidance * (v_class - v_null)

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor, y: Optional[torch.Tensor], steps: Optional[int] = None) -> torch.Tensor:
        """x at t=0 from noise at t=1; t stays on the device, so the loop makes no host sync."""
        steps = steps or self.sample_steps
        ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
        x = noise
        for i in checked(range(steps)):  # a stop request ends sampling within a step
            dt = ts[i] - ts[i + 1]
            v = self.velocity(model, x, ts[i], y)
            if self.sampler == "heun":  # the slope at the Euler step's end too, then their mean
                v = (v + self.velocity(model, x + dt * v, ts[i + 1], y)) / 2
            x = x + dt * v
        return x

    def preview_bank(self, data: Dataset, grid: int, generator: torch.Generator, device) -> dict:
        noise = torch.randn(grid * grid, *self.sample_shape(data.image_shape), generator=generator)
        return {"noise": noise.to(device), "labels": grid_labels(grid, data.num_classes).to(device)}

    def preview(self, model, bank: dict) -> torch.Tensor:
        return self.sample(model, bank["noise"], bank["labels"])

    def generate(self, model, labels: torch.Tensor, image_shape: Sequence[int], seed: int = 0,
                 batch_size: int = 500, steps: Optional[int] = None, progress: bool = False) -> torch.Tensor:
        """uint8 samples conditioned on `labels`, from seeded noise (the same whatever the batch size)."""
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(labels), *self.sample_shape(image_shape), generator=g)
        chunks = [to_uint8(self.sample(model, noise[i:i + batch_size].to(device), labels[i:i + batch_size].to(device),
                                       steps)).cpu()
                  for i in tqdm(range(0, len(labels), batch_size), desc="sampling", unit="batch", leave=False,
                                disable=not progress)]
        return torch.cat(chunks)

    def evaluate(self, model, data: Dataset, evaluator=None, n: int = 1000, seed: int = 0) -> Dict[str, float]:
        if evaluator is None:
            return {}
        labels = torch.arange(n) % data.num_classes
        return evaluator(self.generate(model, labels, data.image_shape, seed), labels)


class LatentBatches:
    """Training inputs in latent space: every image (and its mirror, with flips) encoded once."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor):
        self.latents, self.labels = latents, labels  # latents: views x N x C x h x w

    def __len__(self) -> int:
        return self.latents.shape[1]

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        view = torch.randint(len(self.latents), (len(idx),), device=idx.device)
        return self.latents[view, idx], self.labels[idx]


class InLatentSpace(AlphaBlend):
    """Alpha-blending diffusion on the latents of a frozen autoencoder; previews and samples are
    decoded back to pixels."""

    def __init__(self, diffusion: AlphaBlend, autoencoder: torch.nn.Module):
        super().__init__(**diffusion.settings)
        self.autoencoder = autoencoder.eval().requires_grad_(False)

    def sample_shape(self, image_shape: Sequence[int]) -> Tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape(image_shape))

    @torch.no_grad()
    def encode(self, images_uint8: torch.Tensor, batch_size: int = 500, desc: str = "encoding") -> torch.Tensor:
        chunks = [self.autoencoder.encode(to_unit_range(images_uint8[i:i + batch_size])).float()
                  for i in checked(tqdm(range(0, len(images_uint8), batch_size), desc=desc, unit="batch", leave=False))]
        return torch.cat(chunks)

    def inputs(self, data: Dataset, device) -> LatentBatches:
        self.autoencoder.to(device)
        images = data.train.images.to(device)
        views = [images, images.flip(-1)] if data.hflip else [images]
        latents = torch.stack([self.encode(v, desc=f"encoding view {i + 1}/{len(views)}") for i, v in enumerate(views)])
        return LatentBatches(latents, data.train.labels.to(device))

    @torch.no_grad()
    def sample(self, model, noise, y, steps=None) -> torch.Tensor:
        self.autoencoder.to(noise.device)
        return self.autoencoder.decode(super().sample(model, noise, y, steps)).float()


class Reconstruction:
    """Autoencoder training: MSE + (1 - SSIM) between an image and its reconstruction."""

    kind = "autoencoder"

    def __init__(self, ssim_weight: float = 1.0, eval_images: int = 2000):
        self.ssim_weight = ssim_weight
        self.eval_images = eval_images

    def inputs(self, data: Dataset, device) -> PixelBatches:
        return PixelBatches(data.train.to(device), data.hflip)

    def loss(self, model, x: torch.Tensor, y=None, shard: slice = slice(None)) -> Tuple[torch.Tensor, Terms]:
        x = x[shard]
        recon = model(x).float()
        terms = {"mse": F.mse_loss(recon, x)}
        if self.ssim_weight:
            terms["ssim"] = self.ssim_weight * (1 - ssim(recon, x))
        return sum(terms.values()), {k: t.detach() for k, t in terms.items()}

    def preview_bank(self, data: Dataset, grid: int, generator: torch.Generator, device) -> dict:
        pick = torch.randperm(len(data.test), generator=generator)[: max(1, grid * grid // 2)]
        return {"images": to_unit_range(data.test.images[pick]).to(device)}

    @torch.no_grad()
    def preview(self, model, bank: dict) -> torch.Tensor:
        """Each input followed by its reconstruction, pairs side by side along the rows."""
        x = bank["images"]
        return torch.stack([x, model(x).float()], dim=1).flatten(0, 1)

    @torch.no_grad()
    def evaluate(self, model, data: Dataset, evaluator=None, n: int = 1000, seed: int = 0,
                 batch_size: int = 250) -> Dict[str, float]:
        """PSNR and SSIM of held-out reconstructions; with an evaluator, also the classifier-feature
        distance of the reconstructions."""
        device = next(model.parameters()).device
        images = data.test.images[: max(self.eval_images, n if evaluator else 0)]
        psnr_sum, ssim_sum, recons = 0.0, 0.0, []
        for i in range(0, len(images), batch_size):
            x = to_unit_range(images[i:i + batch_size].to(device))
            recon = model(x).float().clamp(-1, 1)
            psnr_sum += psnr(recon, x) * len(x)
            ssim_sum += ssim(recon, x) * len(x)
            recons.append(to_uint8(recon).cpu())
        scores = {"psnr": (psnr_sum / len(images)).item(), "ssim": (ssim_sum / len(images)).item()}
        if evaluator is not None:
            scores.update(evaluator(torch.cat(recons)[:n]))
        return scores
