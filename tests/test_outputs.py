"""What the CLIs write and read back: every file whole or not at all (a failed write keeps the previous file and
says so in one line), bad outputs and inputs refused before work, torn caches made again, and a dataset folder
that is no dataset refused in a moment instead of walked."""

import logging
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mindiff.config import ConfigError
from mindiff.data import DatasetError, image_folder, tiny
from mindiff.files import TensorSpec, WriteFailed, atomic_write, load_cache, save_cache, save_text
from mindiff.image_listing import list_image_folder
from mindiff.metrics import Evaluator, classifier_path
from mindiff.reconstruct import check_image_size

from conftest import TINY, TINY_RUN, run_cli

FOLDER_RUN = ["dataset=image_folder", "dataset.resolution=8", "dataset.num_classes=2", "trainer.epochs=1",
              "trainer.batch_size=16", "logger.mode=disabled", "eval.every=null", "schedule.sample_steps=2"]
AE = ["model=autoencoder", "schedule=reconstruction", "model.hidden=[8,16]", "model.latent_channels=4",
      "model.groups=4", "schedule.eval_images=64", "trainer.epochs=1", "trainer.max_steps=2", "logger.mode=disabled"]


def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def write_image_folder(root, per_class: int, size: int = 8):
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(150 * c)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One tiny image-folder run: a denoiser checkpoint whose stored dataset.root is a real folder."""
    root = tmp_path_factory.mktemp("folder_run")
    write_image_folder(root / "images", 24)
    run_cli("mindiff.train", *TINY, *FOLDER_RUN, f"dataset.root={root / 'images'}", "hydra.run.dir=run", cwd=root)
    return root / "run"


# ---- a failed write keeps the previous file ------------------------------------------------------------------------

def test_a_failed_write_keeps_the_previous_file_and_says_so(tmp_path):
    path = save_text("old\n", tmp_path / "metrics.json")

    def half_then_full(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(WriteFailed) as e:
        atomic_write(path, half_then_full)
    assert str(e.value).startswith(f"could not write {path} (No space left on device); the previous metrics.json is "
                                   f"intact")
    assert isinstance(e.value, OSError) and e.value.errno == 28 and "\n" not in str(e.value)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.json"]  # no temp file left behind


def limited_file_size(max_bytes: int):
    """A child whose file writes fail past `max_bytes` (EFBIG): a real failing write, as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_sample_that_cannot_write_keeps_the_previous_npz_and_says_so_in_one_line(folder_run, tmp_path):
    ckpt = f"ckpt={folder_run / 'checkpoints/last.pt'}"
    run_cli("mindiff.sample", ckpt, "n=200", "out=s.npz", cwd=tmp_path)
    before = (tmp_path / "s.npz").read_bytes()
    assert len(before) > 4096
    proc = subprocess.run([sys.executable, "-m", "mindiff.sample", ckpt, "n=200", "seed=1", "out=s.npz"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=limited_file_size(4096))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_line(proc) == ("mindiff.sample: error: could not write s.npz (File too large); the previous s.npz is "
                               "intact: free some space, or choose a writable place, and run it again")
    assert (tmp_path / "s.npz").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.npz"]
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (200, 3, 8, 8)


# ---- reconstruct: a picture out, a bounded image in ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    run_cli("mindiff.train", *TINY_RUN, *AE, "hydra.run.dir=ae", cwd=root)
    return f"ckpt={root / 'ae/checkpoints/last.pt'}"


def test_reconstruct_refuses_an_out_that_is_no_picture_before_work(ae_ckpt, tmp_path):
    Image.new("L", (16, 16)).save(tmp_path / "in.png")
    proc = run_cli("mindiff.reconstruct", ae_ckpt, "image=in.png", "out=r.txt", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "out='r.txt': end it in .png (or .jpg, .jpeg" in last_line(proc)
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


def test_reconstruct_writes_the_format_of_its_suffix(ae_ckpt, tmp_path):
    Image.new("L", (16, 12), 128).save(tmp_path / "in.png")
    run_cli("mindiff.reconstruct", ae_ckpt, "image=in.png", "out=r.jpg", cwd=tmp_path)
    with Image.open(tmp_path / "r.jpg") as im:
        assert im.format == "JPEG" and im.size == (2 * 16 + 3 * 2, 12 + 2 * 2)


def test_reconstruct_refuses_an_image_over_the_pixel_bound_from_its_header(ae_ckpt, tmp_path):
    Image.new("L", (2049, 2048)).save(tmp_path / "big.png")  # one column over 2048x2048
    start = time.monotonic()
    proc = run_cli("mindiff.reconstruct", ae_ckpt, "image=big.png", "out=r.png", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and time.monotonic() - start < 60
    assert "image=big.png is 2049x2048 = 4,196,352 pixels, more than max_pixels=4,194,304" in last_line(proc)
    assert "resize or crop it, or raise max_pixels knowingly" in last_line(proc)
    assert not (tmp_path / "r.png").exists()
    Image.new("L", (40, 40)).save(tmp_path / "small.png")
    with pytest.raises(ConfigError, match="is 40x40 = 1,600 pixels, more than max_pixels=1,000"):
        check_image_size(str(tmp_path / "small.png"), 1000)


# ---- compare: a torn file is that run's status; an unwritable out= is refused at once ------------------------------

def test_compare_reports_a_torn_metrics_json_and_a_torn_grid_for_that_run(folder_run, tmp_path):
    for job in ("0_a", "1_b"):
        shutil.copytree(folder_run, tmp_path / "sw" / job)
    metrics = tmp_path / "sw" / "1_b" / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:20])  # torn, as a killed non-atomic writer left it
    grid = next((tmp_path / "sw" / "0_a" / "samples").glob("epoch_*.png"))
    grid.write_bytes(grid.read_bytes()[:100])
    proc = run_cli("mindiff.compare", "sw", "rank_by=final_loss", cwd=tmp_path)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert "| 0_a |" in rows[1] and "| finished |" in rows[1]
    assert "| 1_b |" in rows[2] and "| unreadable metrics.json |" in rows[2]
    assert f"{grid.relative_to(tmp_path)} cannot be read (image file is truncated)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert Image.open(tmp_path / "sw" / "compare.png").width > 0


def test_compare_refuses_an_unwritable_out_before_work(folder_run, tmp_path):
    shutil.copytree(folder_run, tmp_path / "sw" / "0_a")
    (tmp_path / "a_file").write_text("")
    proc = run_cli("mindiff.compare", "sw", "out=a_file/cmp", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "out=a_file/cmp.png: cannot write in a_file" in last_line(proc) and "is not a folder" in last_line(proc)
    assert not list(tmp_path.rglob("compare.*")) and not list(tmp_path.rglob("cmp.*"))


# ---- caches: torn or foreign ones are made again, never trusted ----------------------------------------------------

def test_a_damaged_cached_classifier_is_trained_again_with_a_warning(tmp_path, caplog):
    data = tiny(train_size=128, test_size=64)
    Evaluator(data, "cpu", str(tmp_path), classifier_epochs=1)
    path = classifier_path(tmp_path, data, 1)
    good = torch.load(path, weights_only=True)
    weight = next(k for k in good["model"] if k.endswith("weight") and good["model"][k].dim() == 2)
    damaged = {
        "truncated": lambda: path.write_bytes(path.read_bytes()[:1000]),
        "another shape": lambda: torch.save({**good, "model": {**good["model"], weight: good["model"][weight][:3]}},
                                            path),  # e.g. a classifier of another number of classes
    }
    for damage, write in damaged.items():
        write()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = Evaluator(data, "cpu", str(tmp_path), classifier_epochs=1)
        assert f"cached evaluation classifier {path} is unreadable or not this data's" in caplog.text, damage
        assert 0 <= again.classifier_accuracy <= 1
        assert set(torch.load(path, weights_only=True)) == {"model", "test_accuracy", "recipe", "epochs"}  # made again


def test_a_cache_is_used_only_when_it_holds_exactly_what_is_expected(tmp_path, caplog):
    spec = {"model": TensorSpec.of({"w": torch.zeros(3, 2)}), "accuracy": float, "recipe": "r2"}
    good = {"model": {"w": torch.ones(3, 2)}, "accuracy": 0.5, "recipe": "r2"}
    path = tmp_path / "cache.pt"
    save_cache(good, path)
    assert load_cache(path, spec, "cache")["accuracy"] == 0.5
    assert load_cache(tmp_path / "none.pt", spec, "cache") is None and not caplog.text  # absent: no warning
    for bad, why in [({**good, "accuracy": "0.5"}, "accuracy is a str, not a float"),
                     ({**good, "recipe": "r1"}, "recipe is 'r1', not 'r2'"),
                     ({**good, "model": {"w": torch.ones(3, 2, dtype=torch.float64)}},
                      "model['w'] is (3, 2) torch.float64, not (3, 2) torch.float32"),
                     ({**good, "model": {"w": torch.ones(3, 2), "v": torch.ones(1)}},
                      "model holds ['v', 'w'], not ['w']"),
                     ({"model": good["model"]}, "it holds ['model'], not ['accuracy', 'model', 'recipe']"),
                     ({**good, "hook": logging.Formatter()}, "Weights only load failed")]:  # code, not data
        torch.save(bad, path)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert load_cache(path, spec, "cache") is None
        assert f"cache {path} is unreadable or not this data's" in caplog.text and why in caplog.text, why


def test_a_damaged_image_folder_cache_is_decoded_again_with_a_warning(tmp_path, caplog):
    write_image_folder(tmp_path / "images", 5)
    kwargs = {"root": str(tmp_path / "images"), "resolution": 8, "num_classes": 2, "cache_dir": str(tmp_path / "c")}
    first = image_folder(**kwargs)
    (cache,) = (tmp_path / "c").glob("image_folder-*.pt")
    for damage in (cache.read_bytes()[:500], None):
        if damage is None:  # well formed, but the images of another resolution
            saved = torch.load(cache, weights_only=True)
            torch.save({**saved, "images": saved["images"][:, :, :4, :4].contiguous()}, cache)
        else:
            cache.write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = image_folder(**kwargs)
        assert f"image-folder cache {cache} is unreadable or not this data's" in caplog.text
        assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.labels, first.test.labels)
        assert torch.load(cache, weights_only=True)["images"].shape == (10, 3, 8, 8)


# ---- a dataset folder that is no dataset ---------------------------------------------------------------------------

def test_evaluate_on_a_root_that_is_no_image_folder_is_one_line_in_seconds(folder_run, tmp_path):
    start = time.monotonic()
    proc = run_cli("mindiff.evaluate", f"ckpt={folder_run / 'checkpoints/last.pt'}", "dataset_root=/usr", "n=8",
                   f"out={tmp_path / 'm.json'}", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert time.monotonic() - start < 60
    line = last_line(proc)
    assert "dataset.root=/usr is no folder of class folders: its sub-folder" in line
    assert "set dataset.root to the folder that holds one sub-folder of images per class" in line
    assert "dataset_root=" in line and not (tmp_path / "m.json").exists()


def test_an_image_folder_is_checked_before_it_is_listed_and_listed_within_a_bound(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_image_folder(root, 3)
    (root / "class1" / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(root / "class1" / "nested" / "deep.png")
    (root / "class1" / "nested" / "loop").symlink_to(root / "class1")  # a link back up: listed once, not forever
    (root / "README.txt").write_text("a file beside the class folders is ignored, as ImageFolder does")
    listing = list_image_folder(root, 2)
    assert listing.classes == ["class0", "class1"] and listing.targets == [0] * 3 + [1] * 4
    assert [rel for rel, *_ in listing.samples][3:] == ["class1/0.png", "class1/1.png", "class1/2.png",
                                                        "class1/nested/deep.png"]
    (root / "class2").mkdir()
    (root / "class2" / "notes.txt").write_text("")
    with pytest.raises(DatasetError, match=r"images is no folder of class folders: its sub-folder class2 holds no "
                                           r"image files .* at its first level; set dataset.root to the folder"):
        image_folder(str(root), resolution=8, num_classes=3, cache_dir=str(tmp_path / "c"))
    shutil.rmtree(root / "class2")
    with pytest.raises(DatasetError, match=r"has 2 class folders \(class0, class1\), not dataset.num_classes=3: "
                                           r"set dataset.num_classes=2"):
        image_folder(str(root), resolution=8, num_classes=3, cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr("mindiff.image_listing.MAX_ENTRIES", 8)
    with pytest.raises(DatasetError, match=r"holds more than 8 files and folders \(listing stopped in .*images/class"):
        image_folder(str(root), resolution=8, num_classes=2, cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # nothing decoded, nothing cached
