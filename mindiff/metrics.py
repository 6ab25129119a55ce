"""Sample-quality metrics that work offline.

Class accuracy of class-conditional samples and the Fréchet distance in the features of a small
classifier that mindiff trains on the dataset's train split the first time it is needed (cached,
keyed by the dataset). Each distance comes with a real-data floor: a train subset of the same
size against the held-out split, so a number means something. FID with Inception runs through
torchmetrics when weights are available.
"""

import hashlib
import logging
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mindiff.errors import not_fatal
from mindiff.files import save_cache
from mindiff.data import Dataset, epoch_batches, to_unit_range
from mindiff.models.classifier import Classifier

log = logging.getLogger(__name__)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # where torch-fidelity's download lands


def gaussian_stats(features: torch.Tensor):
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½), with Tr((S1 S2)^½) from the eigenvalues of the
    symmetric S1^½ S2 S1^½ (same spectrum, numerically stable)."""
    vals, vecs = torch.linalg.eigh(sigma1)
    sqrt1 = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross).item()


def dataset_key(data: Dataset) -> str:
    """Names a dataset by its contents: shape, labels and a strided sample of the pixels."""
    train = data.train
    digest = hashlib.sha1()
    digest.update(str((tuple(train.images.shape), data.num_classes)).encode())
    digest.update(train.labels.cpu().numpy().tobytes())
    digest.update(train.images[:: max(1, len(train) // 997)].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_classifier(data: Dataset, device, epochs: int = 3, batch_size: int = 256, lr: float = 2e-3,
                     seed: int = 0) -> Classifier:
    """A few epochs of AdamW on the train split (a measuring instrument, not a mindiff model run)."""
    c, h, _ = data.image_shape
    torch.manual_seed(seed)
    model = Classifier(c, h, data.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    for epoch in range(epochs):
        batches = list(epoch_batches(len(images), min(batch_size, len(images)), seed, epoch, device))
        for idx in tqdm(batches, desc=f"training the eval classifier, epoch {epoch + 1}/{epochs}", leave=False):
            loss = F.cross_entropy(model(to_unit_range(images[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, images_uint8: torch.Tensor, device, batch_size: int = 500):
    """(features, predicted classes) for uint8 images."""
    feats, preds = [], []
    for i in range(0, len(images_uint8), batch_size):
        f = model.features(to_unit_range(images_uint8[i:i + batch_size].to(device)))
        feats.append(f.float().cpu())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


class Evaluator:
    """Scores uint8 images against the held-out split of `data`."""

    def __init__(self, data: Dataset, device, cache_dir: str = "~/.cache/mindiff", classifier_epochs: int = 3,
                 inception_weights: Optional[str] = None, fid: bool = False):
        self.data, self.device = data, device
        self.classifier, self.classifier_accuracy = self._classifier(Path(cache_dir).expanduser(), classifier_epochs)
        self.test_features, _ = predict(self.classifier, data.test.images, device)
        self.test_stats = gaussian_stats(self.test_features)
        self.fid = FID(inception_weights) if fid else None
        self._floors: Dict[int, float] = {}

    def _classifier(self, cache_dir: Path, epochs: int):
        path = cache_dir / f"classifier-{dataset_key(self.data)}-e{epochs}.pt"
        c, h, _ = self.data.image_shape
        model = Classifier(c, h, self.data.num_classes).to(self.device)
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["model"])
            return model.eval(), saved["test_accuracy"]
        log.info("training the evaluation classifier (once per dataset; cached at %s)", path)
        model = train_classifier(self.data, self.device, epochs)
        _, preds = predict(model, self.data.test.images, self.device)
        accuracy = (preds == self.data.test.labels.cpu()).float().mean().item()
        log.info("evaluation classifier: held-out accuracy %.4f", accuracy)
        with not_fatal(f"caching the evaluation classifier at {path} (it is trained again next time)"):
            save_cache({"model": model.state_dict(), "test_accuracy": accuracy}, path)
        return model, accuracy

    def floor(self, n: int) -> float:
        """The distance a perfect model would get: n real train images against the held-out split."""
        if n not in self._floors:
            pick = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(0))[:n]
            feats, _ = predict(self.classifier, self.data.train.images[pick], self.device)
            self._floors[n] = frechet_distance(*gaussian_stats(feats), *self.test_stats)
        return self._floors[n]

    def __call__(self, images_uint8: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, float]:
        feats, preds = predict(self.classifier, images_uint8, self.device)
        scores = {"fld": frechet_distance(*gaussian_stats(feats), *self.test_stats),
                  "fld_floor": self.floor(len(images_uint8)), "classifier_accuracy": self.classifier_accuracy}
        if labels is not None:
            scores["class_accuracy"] = (preds == labels.cpu()).float().mean().item()
        if self.fid is not None:
            scores.update(self.fid(images_uint8, self.data.test.images))
        return scores


class FID:
    """FID with Inception-v3 through torchmetrics (torch-fidelity). Weights come from
    `eval.inception_weights=PATH`, or torch's hub cache; `eval.inception_weights=download` lets
    torch-fidelity fetch them (online only). Without weights it says so and scores nothing:
    nothing here ever waits on the network unasked."""

    def __init__(self, weights: Optional[str]):
        self.weights = None if weights == "download" else weights
        self.reason = self.missing(weights)
        if self.reason:
            log.warning(self.reason)

    @staticmethod
    def missing(weights: Optional[str]) -> Optional[str]:
        """Why FID cannot run here, or None."""
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            return "FID needs torch-fidelity: pip install torch-fidelity"
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if weights not in (None, "download") and not Path(weights).is_file():
            return f"eval.inception_weights={weights!r}: no such file"
        if weights is None and not cached.is_file():
            return (f"FID skipped: no Inception weights (not in {cached.parent}); set eval.inception_weights=PATH "
                    f"to torch-fidelity's {INCEPTION_FILE}, or =download when online")
        return None

    def __call__(self, fake_uint8: torch.Tensor, real_uint8: torch.Tensor) -> Dict[str, float]:
        if self.reason:
            return {}
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=self.weights)
        for images, real in ((real_uint8, True), (fake_uint8, False)):
            for i in range(0, len(images), 250):
                batch = images[i:i + 250]
                metric.update(batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch, real=real)
        return {"fid": metric.compute().item()}
