"""Any dataset -> one uint8 tensor of images (N x C x H x W) and int64 labels, batched by index.

The whole split lives on the training device; a batch is an index slice of a per-epoch
permutation, normalised to [-1, 1] on the device. No per-sample transforms, no DataLoader.

torchvision's readers are imported where a dataset is read: importing torchvision pulls in
torch._dynamo (seconds), which a run on generated data, or a CLI that stops at a bad value, need not pay.
"""

import gzip
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from mindiff.errors import UserError, one_line
from mindiff.files import TensorSpec, atomic_write, check_writable_dir, load_cache, save_cache
from mindiff.image_listing import FolderError, list_image_folder


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: ImageSet
    test: ImageSet
    num_classes: int
    hflip: bool = False  # random horizontal flips while training

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


class DatasetError(UserError, RuntimeError):
    """The data cannot be loaded; the message says where it looked and what to do."""


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _check_declared(dataset: Dataset, name: str, channels: int, num_classes: int) -> Dataset:
    if dataset.image_shape[0] != channels:
        raise DatasetError(f"{name} has {dataset.image_shape[0]} channels, not dataset.channels={channels}")
    if dataset.num_classes != num_classes:
        raise DatasetError(f"{name} has {dataset.num_classes} classes, not dataset.num_classes={num_classes}")
    return dataset


def _unpack_gz_layout(root: Path, folder: str) -> Path:
    """Debian's dataset packages ship `*-ubyte.gz` flat in one folder; torchvision reads
    `<root>/<folder>/raw/*-ubyte`. Unpack once into a cache so the real loader can read it."""
    gz_files = sorted(root.glob("*-ubyte.gz"))
    if not gz_files or (root / folder / "raw").is_dir():
        return root
    cache = Path.home() / ".cache" / "mindiff" / root.resolve().as_posix().strip("/").replace("/", "_")
    raw = cache / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in gz_files:
        target = raw / gz.name[: -len(".gz")]
        if not target.exists():
            with gzip.open(gz, "rb") as src:
                atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))
    return cache


def _torchvision_mnist_like(cls, name: str, root: str, download: bool, channels: int, image_size: int,
                            num_classes: int, hflip: bool) -> Dataset:
    root_path = _unpack_gz_layout(Path(root).expanduser(), cls.__name__)
    raw = Path(root_path).resolve() / cls.__name__ / "raw"
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=str(root_path), train=train, download=download)
        except (RuntimeError, ValueError) as e:
            if all((raw / Path(url).stem).is_file() for url, _ in cls.resources):  # the files are there: bad bytes
                raise DatasetError(f"{name} under {raw} is truncated or corrupt ({one_line(e)}); replace its "
                                   f"*-ubyte files, or set dataset.root to another copy") from None
            raise DatasetError(
                f"{name} not found under {Path(root_path).resolve() / cls.__name__ / 'raw'} ({one_line(e)}). "
                f"Set dataset.root to the folder that holds {cls.__name__}/raw, or dataset.download=true when online."
            ) from None
        images = _resize(ds.data.unsqueeze(1), image_size)
        splits.append(ImageSet(images, ds.targets.long()))
    return _check_declared(Dataset(splits[0], splits[1], len(ds.classes), hflip), name, channels, num_classes)


def mnist(root: str, download: bool, channels: int = 1, image_size: int = 28, num_classes: int = 10,
          hflip: bool = False) -> Dataset:
    from torchvision.datasets import MNIST
    return _torchvision_mnist_like(MNIST, "MNIST", root, download, channels, image_size,
                                   num_classes, hflip)


def fashion_mnist(root: str, download: bool, channels: int = 1, image_size: int = 28, num_classes: int = 10,
                  hflip: bool = False) -> Dataset:
    from torchvision.datasets import FashionMNIST
    return _torchvision_mnist_like(FashionMNIST, "Fashion-MNIST", root, download, channels,
                                   image_size, num_classes, hflip)


def cifar10(root: str, download: bool, channels: int = 3, image_size: int = 32, num_classes: int = 10,
            hflip: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR10
    splits = []
    for train in (True, False):
        try:
            ds = CIFAR10(root=root, train=train, download=download)
        except RuntimeError as e:
            raise DatasetError(
                f"CIFAR-10 not found under {Path(root).resolve() / 'cifar-10-batches-py'} ({one_line(e)}). Set dataset.root "
                f"to the folder that holds cifar-10-batches-py, dataset.download=true when online, or use "
                f"dataset=image_folder for a folder of class sub-folders"
            ) from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(ImageSet(_resize(images, image_size), torch.tensor(ds.targets, dtype=torch.long)))
    return _check_declared(Dataset(splits[0], splits[1], len(ds.classes), hflip), "CIFAR-10", channels, num_classes)


def _decode_folder(folder: Path, size: int, channels: int, cache_dir: Path, num_classes: int,
                   setting: str) -> Tuple[ImageSet, list]:
    """Decode an image folder once into a uint8 tensor, cached under a key of its listing (image_listing.py:
    refused unless it looks like one); a cache file that is torn or not this listing's is decoded again."""
    import torchvision.transforms.functional as TF
    try:
        listing = list_image_folder(folder, num_classes, setting)
    except FolderError as e:  # the one error class of data, whatever found the problem
        raise DatasetError(str(e)) from None
    key = hashlib.sha1(f"{folder.resolve()}|{size}|{channels}|{listing.signature}".encode()).hexdigest()[:16]
    cache = cache_dir / f"image_folder-{key}.pt"
    labels = torch.tensor(listing.targets, dtype=torch.long)
    saved = load_cache(cache, {"images": TensorSpec((len(labels), channels, size, size), torch.uint8),
                               "labels": labels, "classes": listing.classes}, "image-folder cache")
    if saved is not None:
        return ImageSet(saved["images"], labels), listing.classes
    check_writable_dir(cache_dir, "dataset.cache_dir (or $MINDIFF_CACHE)")  # before minutes of decoding
    mode = "RGB" if channels == 3 else "L"
    images = torch.empty(len(labels), channels, size, size, dtype=torch.uint8)
    decoding = tqdm(listing.samples, desc=f"decoding {folder.name}", unit="img", mininterval=2)
    for i, (rel, _, _, _) in enumerate(decoding):
        try:
            with Image.open(folder / rel) as im:
                im = im.convert(mode)
        except OSError as e:
            raise DatasetError(f"cannot read image {folder / rel}: {e}; remove or replace the file") from None
        if im.size != (size, size):  # shorter side to `size`, then a centre crop
            im = TF.center_crop(TF.resize(im, size, antialias=True), size)
        images[i] = TF.pil_to_tensor(im)
    save_cache({"images": images, "labels": labels, "classes": listing.classes}, cache)
    return ImageSet(images, labels), listing.classes


def image_folder(root: str, test_root: Optional[str] = None, test_fraction: float = 0.1, resolution: int = 32,
                 image_size: Optional[int] = None, channels: int = 3, num_classes: int = 10,
                 cache_dir: str = "~/.cache/mindiff", seed: int = 0, hflip: bool = False) -> Dataset:
    """A folder of class sub-folders (torchvision's ImageFolder layout, checked before it is listed:
    image_listing.py). The held-out split is `test_root`, else a sibling `test` folder of a `train` folder,
    else a seeded `test_fraction` of the images."""
    root_path, cache = Path(root).expanduser(), Path(cache_dir).expanduser()
    train, classes = _decode_folder(root_path, resolution, channels, cache, num_classes, "dataset.root")
    if test_root is None and root_path.name == "train" and (root_path.parent / "test").is_dir():
        test_root = str(root_path.parent / "test")
    if test_root is not None:
        test, test_classes = _decode_folder(Path(test_root).expanduser(), resolution, channels, cache, num_classes,
                                            "dataset.test_root")
        if test_classes != classes:
            raise DatasetError(f"{test_root} has classes {test_classes}, but {root} has {classes}")
    else:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(len(train) * test_fraction))
        test = ImageSet(train.images[order[:n_test]], train.labels[order[:n_test]])
        train = ImageSet(train.images[order[n_test:]], train.labels[order[n_test:]])
    return Dataset(train, test, num_classes, hflip)


def tiny(train_size: int = 512, test_size: int = 128, seed: int = 0, channels: int = 1, image_size: int = 12,
         num_classes: int = 10, hflip: bool = False) -> Dataset:
    """A generated dataset for tests: class k is a bright square in cell k of a grid, on a dim
    noisy background. Learnable in seconds, and the class is readable from the pixels."""
    cells = int(num_classes ** 0.5 + 0.999)
    cell = image_size // cells
    if cell < 1:
        raise DatasetError(f"dataset.image_size={image_size} is too small for {num_classes} classes")
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        images = torch.rand(n, channels, image_size, image_size, generator=g) * 40
        for k in range(num_classes):
            r, c = divmod(k, cells)
            images[labels == k, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] += 200
        return ImageSet(images.clamp(0, 255).to(torch.uint8), labels)

    return Dataset(make(train_size), make(test_size), num_classes, hflip)


class PixelBatches:
    """Training inputs in pixel space: uint8 images on the device, a batch mapped to [-1, 1]."""

    def __init__(self, images: ImageSet, hflip: bool):
        self.images, self.hflip = images, hflip

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_range(self.images.images[idx])
        if self.hflip:
            flip = torch.rand(len(idx), device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, self.images.labels[idx]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, device) -> Iterator[torch.Tensor]:
    """Index batches for one epoch, dropping the ragged last batch. The permutation depends only
    on (seed, epoch), so a resumed run replays exactly the batches it would have seen."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).to(device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]
