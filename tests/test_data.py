"""The real torchvision loaders, fed files these tests write in MNIST's idx layout."""

import gzip
import struct

import numpy as np
import pytest
import torch

from PIL import Image

from mindiff.data import (DatasetError, ImageSet, PixelBatches, epoch_batches, fashion_mnist, image_folder, mnist,
                          tiny, to_uint8, to_unit_range)

from conftest import SHARED_DATA


def idx_bytes(array: np.ndarray) -> bytes:
    kind = 0x08  # unsigned byte
    return struct.pack(">HBB", 0, kind, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist_raw(folder, n_train=30, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        files[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        files[f"{split}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in files.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(idx_bytes(arr))
        else:
            (folder / name).write_bytes(idx_bytes(arr))
    return files


def test_mnist_loads_through_torchvision_as_uint8_tensors(tmp_path):
    files = write_mnist_raw(tmp_path / "MNIST" / "raw")
    data = mnist(root=str(tmp_path), download=False)
    assert data.train.images.shape == (30, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.labels.dtype == torch.int64 and len(data.test) == 10 and data.num_classes == 10
    assert np.array_equal(data.train.images[:, 0].numpy(), files["train-images-idx3-ubyte"])


def test_mnist_resizes_when_asked(tmp_path):
    write_mnist_raw(tmp_path / "MNIST" / "raw")
    assert mnist(root=str(tmp_path), download=False, image_size=32).train.images.shape == (30, 1, 32, 32)


def test_missing_dataset_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match=r"MNIST not found under .*MNIST/raw.*dataset.root"):
        mnist(root=str(tmp_path / "nowhere"), download=False)


def test_a_truncated_mnist_file_is_named_truncated_not_missing(tmp_path):
    write_mnist_raw(tmp_path / "MNIST" / "raw")
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"MNIST under .*MNIST/raw is truncated or corrupt"):
        mnist(root=str(tmp_path), download=False)


def test_fashion_mnist_reads_debians_flat_gz_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = write_mnist_raw(tmp_path / "debian", gz=True)
    data = fashion_mnist(root=str(tmp_path / "debian"), download=False)
    assert np.array_equal(data.test.images[:, 0].numpy(), files["t10k-images-idx3-ubyte"])
    assert (tmp_path / "home" / ".cache" / "mindiff").is_dir()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data")
def test_real_mnist_statistics():
    data = mnist(root=str(SHARED_DATA), download=False)
    assert len(data.train) == 60000 and len(data.test) == 10000
    mean = data.train.images.float().mean() / 255
    assert abs(mean.item() - 0.1307) < 1e-3


def test_tiny_class_is_readable_from_the_pixels():
    data = tiny(train_size=100, test_size=20, image_size=12)
    assert data.train.images.shape == (100, 1, 12, 12)
    brightest_cell = data.train.images.float().view(100, 4, 3, 4, 3).mean((2, 4)).flatten(1).argmax(1)
    assert torch.equal(brightest_cell, data.train.labels)


def test_epoch_batches_cover_each_image_once_and_depend_only_on_seed_and_epoch():
    batches = list(epoch_batches(100, 32, seed=1, epoch=3, device="cpu"))
    assert len(batches) == 3 and all(len(b) == 32 for b in batches)
    assert len(torch.cat(batches).unique()) == 96
    again = list(epoch_batches(100, 32, seed=1, epoch=3, device="cpu"))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not torch.equal(batches[0], next(epoch_batches(100, 32, seed=1, epoch=4, device="cpu")))


def test_unit_range_round_trips():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_unit_range(x)), x)


def write_image_folder(root, per_class=3, size=(20, 16)):
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_decodes_once_resizes_and_uses_the_sibling_test_split(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imgs" / "train", per_class=3)
    write_image_folder(tmp_path / "imgs" / "test", per_class=1)
    kwargs = dict(root=str(tmp_path / "imgs" / "train"), resolution=8, num_classes=2, cache_dir=str(tmp_path / "c"))
    data = image_folder(**kwargs)
    assert data.train.images.shape == (6, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (2, 3, 8, 8) and data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(list((tmp_path / "c").glob("image_folder-*.pt"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr("mindiff.data.Image.open", no_decoding)
    again = image_folder(**kwargs)
    assert torch.equal(again.train.images, data.train.images)


def test_image_folder_splits_a_fraction_without_a_test_folder(tmp_path):
    write_image_folder(tmp_path / "only", per_class=5)
    data = image_folder(root=str(tmp_path / "only"), resolution=8, num_classes=2, test_fraction=0.2,
                        cache_dir=str(tmp_path / "c"))
    assert (len(data.train), len(data.test)) == (8, 2)


def test_image_folder_names_an_unreadable_file_and_a_wrong_class_count(tmp_path):
    write_image_folder(tmp_path / "f", per_class=2)
    with pytest.raises(DatasetError, match="set dataset.num_classes=2"):
        image_folder(root=str(tmp_path / "f"), resolution=8, num_classes=10, cache_dir=str(tmp_path / "c"))
    (tmp_path / "f" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken.png"):
        image_folder(root=str(tmp_path / "f"), resolution=8, num_classes=2, cache_dir=str(tmp_path / "c"))


def test_pixel_batches_flip_about_half_when_asked():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    labels = torch.zeros(200, dtype=torch.long)
    torch.manual_seed(0)
    x, _ = PixelBatches(ImageSet(images, labels), hflip=True).batch(torch.arange(200))
    flipped = (x[:, 0, 0, 0] > x[:, 0, 0, 3]).float().mean()
    assert 0.3 < flipped < 0.7
    x, _ = PixelBatches(ImageSet(images, labels), hflip=False).batch(torch.arange(200))
    assert (x[:, 0, 0, 0] < x[:, 0, 0, 3]).all()


def test_a_failed_download_is_reported_on_one_line(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror A, got:\n<urlopen error>\n")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError) as e:
        mnist(root=str(tmp_path), download=True)
    assert "\n" not in str(e.value) and "Tried mirror A, got: <urlopen error>" in str(e.value)
