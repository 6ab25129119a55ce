"""Sample-quality metrics that work offline.

Class accuracy of class-conditional samples and the Fréchet distance in the features of a
classifier that mindiff trains on the dataset's train split the first time it is needed (cached,
keyed by the dataset and the recipe). A classifier less accurate on the held-out split than
`eval.min_classifier_accuracy` is a lenient judge: it scores nothing. Each distance comes with a
real-data floor: a train subset of the same size against the held-out split, so a number means
something. FID with Inception runs through torchmetrics when weights are available.
"""

import hashlib
import logging
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mindiff.errors import UserError, not_fatal
from mindiff.files import TensorSpec, load_cache, save_cache
from mindiff.data import Dataset, epoch_batches, to_unit_range
from mindiff.models.classifier import Classifier
from mindiff.runtime import autocast
from mindiff.signals import checked

log = logging.getLogger(__name__)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # where torch-fidelity's download lands
# The evaluation classifier's recipe (architecture, training, augmentation), part of its cache key: bump it on any
# change, so that a classifier cached by another recipe is never reused. r1: 3 epochs, 0.989 on MNIST (lenient).
RECIPE = "r2"


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


def augmentation(image_shape) -> Tuple[int, bool]:
    """(shift, flip) of the classifier's training images: random shifts of up to a 14th of the side (2 px at
    28 and 32 px, none below 14 px, where a shift would move a class-defining detail), and horizontal flips
    for 3-channel images only (photos; never digits, letters or other 1-channel data)."""
    c, h, _ = image_shape
    return h // 14, c == 3


def augment(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random (dy, dx) in [-shift, shift] (black enters at the edges),
    then mirrored left-right with probability 1/2 when `flip`."""
    n, c, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift,) * 4, value=-1.0)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, n, 1), generator=generator).to(x.device)
        rows, cols = dy + torch.arange(h, device=x.device), dx + torch.arange(w, device=x.device)
        x = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                   rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(mirror, x.flip(-1), x)
    return x


def fast_bf16(device) -> bool:
    """Whether bf16 autocast speeds up training here: CUDA, or a CPU with native bf16 (AVX512-BF16 or AMX);
    elsewhere it is emulated, and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return device.type == "cpu" and probe is not None and bool(probe())


def train_classifier(data: Dataset, device, epochs: int, batch_size: int = 128, lr: float = 4e-3,
                     seed: int = 0) -> Classifier:
    """The recipe (RECIPE): AdamW (weight decay 5e-4), a one-cycle learning rate peaking at `lr` a quarter of
    the way, label smoothing 0.1, random shifts (and flips of colour images: `augmentation`), bf16 autocast
    where it is fast. At least 32 steps an epoch: small data sets get smaller batches. A measuring
    instrument, not a mindiff model run."""
    c, h, _ = data.image_shape
    torch.manual_seed(seed)
    model = Classifier(c, h, data.num_classes).to(device)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    batch_size = min(batch_size, max(8, len(images) // 32), len(images))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * (len(images) // batch_size),
                                                pct_start=0.25)
    shift, flip = augmentation(data.image_shape)
    g = torch.Generator().manual_seed(seed)
    amp = autocast(torch.device(device), "bf16" if fast_bf16(device) else "fp32")
    model.train()
    for epoch in range(epochs):
        batches = list(epoch_batches(len(images), batch_size, seed, epoch, device))
        desc = f"training the eval classifier, epoch {epoch + 1}/{epochs}"
        for idx in checked(tqdm(batches, desc=desc, leave=False)):
            x = augment(to_unit_range(images[idx]), shift, flip, g)
            with amp:
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, images_uint8: torch.Tensor, device, batch_size: int = 500):
    """(features, predicted classes) for uint8 images."""
    feats, preds = [], []
    for i in checked(range(0, len(images_uint8), batch_size)):
        f = model.features(to_unit_range(images_uint8[i:i + batch_size].to(device)))
        feats.append(f.float().cpu())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


class WeakClassifierError(UserError, RuntimeError):
    """The evaluation classifier is less accurate on held-out data than `eval.min_classifier_accuracy`."""


def classifier_path(cache_dir: Path, data: Dataset, epochs: int) -> Path:
    """Where the classifier for `data` is cached: the dataset's contents, the recipe and the epochs name it."""
    return Path(cache_dir).expanduser() / f"classifier-{dataset_key(data)}-{RECIPE}-e{epochs}.pt"


# The floor each dataset's classifier must reach, below what the recipe reaches there (README, Evaluation).
FLOORS = {"mindiff.data.mnist": 0.99, "mindiff.data.fashion_mnist": 0.9, "mindiff.data.cifar10": 0.8,
          "mindiff.data.image_folder": 0.8, "mindiff.data.tiny": 0.99}


def classifier_floor(dataset_target: str, given: Optional[float]) -> float:
    """`eval.min_classifier_accuracy` when set, else the floor of the run's dataset."""
    return given if given is not None else FLOORS.get(dataset_target, 0.99)


def check_classifier(accuracy: float, floor: float, epochs: int) -> None:
    """A lenient judge flatters samples (one at 0.989 reads them 0.94 class-accurate where one at 0.996 reads
    0.72): below the floor, scoring is refused."""
    if accuracy < floor:
        raise WeakClassifierError(
            f"the evaluation classifier's held-out accuracy is {accuracy:.4f}, below eval.min_classifier_accuracy="
            f"{floor}: its scores would flatter the samples, so none are given; train it longer "
            f"(eval.classifier_epochs, now {epochs}), or lower eval.min_classifier_accuracy knowingly")


class Evaluator:
    """Scores uint8 images against the held-out split of `data`, with a classifier at least
    `min_classifier_accuracy` accurate on that split (else WeakClassifierError)."""

    def __init__(self, data: Dataset, device, cache_dir: str = "~/.cache/mindiff", classifier_epochs: int = 8,
                 inception_weights: Optional[str] = None, fid: bool = False, min_classifier_accuracy: float = 0.0):
        self.data, self.device = data, device
        path = classifier_path(Path(cache_dir), data, classifier_epochs)
        self.classifier, self.classifier_accuracy = self._classifier(path, classifier_epochs)
        check_classifier(self.classifier_accuracy, min_classifier_accuracy, classifier_epochs)
        self.test_features, _ = predict(self.classifier, data.test.images, device)
        self.test_stats = gaussian_stats(self.test_features)
        self.fid = FID(inception_weights) if fid else None
        self._floors: Dict[int, float] = {}

    def _classifier(self, path: Path, epochs: int):
        c, h, _ = self.data.image_shape
        model = Classifier(c, h, self.data.num_classes).to(self.device)
        saved = load_cache(path, {"model": TensorSpec.of(model.state_dict()), "test_accuracy": float},
                           "cached evaluation classifier")  # None: none yet, torn, or not this model's
        if saved is not None:
            model.load_state_dict(saved["model"])
            return model.eval(), saved["test_accuracy"]
        log.info("training the evaluation classifier (once per dataset; cached at %s)", path)
        start = time.monotonic()
        model = train_classifier(self.data, self.device, epochs)
        _, preds = predict(model, self.data.test.images, self.device)
        accuracy = (preds == self.data.test.labels.cpu()).float().mean().item()
        log.info("evaluation classifier: held-out accuracy %.4f after %d epochs (%.0f s)", accuracy, epochs,
                 time.monotonic() - start)
        with not_fatal(f"caching the evaluation classifier at {path} (it is trained again next time)"):
            save_cache({"model": model.state_dict(), "test_accuracy": accuracy, "recipe": RECIPE, "epochs": epochs},
                       path)
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
