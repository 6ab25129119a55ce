"""Sample-quality metrics: the Fréchet distance, the evaluation classifier, FID's offline behaviour, the CLI."""

import json
import time

import numpy as np
import pytest
import torch
from scipy import linalg

import mindiff.metrics
from mindiff.data import tiny, to_unit_range
from mindiff.errors import UserError
from mindiff.metrics import (FID, Evaluator, WeakClassifierError, augment, augmentation, classifier_floor,
                             classifier_path, frechet_distance, gaussian_stats, predict, train_classifier)
from mindiff.models.classifier import Classifier

from conftest import run_cli


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    for d in (2, 16, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_cov(rng, d), random_cov(rng, d)
        ours = frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
        assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    feats = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(*gaussian_stats(feats), *gaussian_stats(feats))) < 1e-6
    shifted = frechet_distance(*gaussian_stats(feats + 1.0), *gaussian_stats(feats))
    assert shifted == pytest.approx(32.0, rel=1e-6)  # ||mu1 - mu2||² = 32 x 1²


def test_classifier_trained_on_the_tiny_dataset_is_at_least_95_percent_accurate():
    data = tiny(train_size=512, test_size=200)
    model = train_classifier(data, "cpu", epochs=3)
    assert not model.training  # eval mode: BatchNorm scores with its running statistics
    _, preds = predict(model, data.test.images, "cpu")
    assert (preds == data.test.labels).float().mean() >= 0.95


def test_evaluator_scores_real_images_near_the_floor_and_noise_far_from_it(tmp_path):
    data = tiny(train_size=512, test_size=256)
    evaluator = Evaluator(data, "cpu", str(tmp_path), classifier_epochs=3)
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1  # cached, keyed by the dataset
    real = evaluator(data.train.images[:256], data.train.labels[:256])
    noise = evaluator(torch.randint(0, 256, (256, 1, 12, 12), dtype=torch.uint8), data.train.labels[:256])
    assert real["class_accuracy"] > 0.95 and noise["class_accuracy"] < 0.5
    assert real["fld"] < 3 * real["fld_floor"] + 1 < noise["fld"]
    assert Evaluator(data, "cpu", str(tmp_path), classifier_epochs=3).classifier_accuracy == real["classifier_accuracy"]


def test_a_classifier_below_the_floor_is_refused_in_one_line_naming_both_numbers(tmp_path):
    data = tiny(train_size=512, test_size=128)
    weak = Classifier(1, 12, 10)  # untrained, saved where the evaluator looks, as if 42% accurate
    torch.save({"model": weak.state_dict(), "test_accuracy": 0.42}, classifier_path(tmp_path, data, 2))
    with pytest.raises(WeakClassifierError) as refused:
        Evaluator(data, "cpu", str(tmp_path), classifier_epochs=2, min_classifier_accuracy=0.99)
    message = str(refused.value)
    assert isinstance(refused.value, UserError) and "\n" not in message
    assert "0.4200" in message and "eval.min_classifier_accuracy=0.99" in message and "eval.classifier_epochs" in message
    scored = Evaluator(data, "cpu", str(tmp_path), classifier_epochs=2, min_classifier_accuracy=0.4)  # floor lowered
    assert scored(data.test.images[:64])["classifier_accuracy"] == 0.42


def test_the_tiny_classifier_clears_the_default_floor_in_one_epoch(tmp_path):
    """tests/conftest.py runs eval.classifier_epochs=2 (test_reliability 1) at the YAML's floor: scores must come."""
    from omegaconf import OmegaConf
    from conftest import CONF
    given = OmegaConf.load(CONF / "eval" / "default.yaml").min_classifier_accuracy
    floor = classifier_floor("mindiff.data.tiny", given)
    assert floor == 0.99
    assert Evaluator(tiny(), "cpu", str(tmp_path), classifier_epochs=1,
                     min_classifier_accuracy=floor).classifier_accuracy >= floor


def test_the_cache_key_names_the_recipe_so_a_classifier_of_another_recipe_is_never_reused(tmp_path, monkeypatch):
    data = tiny(train_size=64, test_size=16)
    path = classifier_path(tmp_path, data, 8)
    assert mindiff.metrics.RECIPE in path.name
    monkeypatch.setattr(mindiff.metrics, "RECIPE", "r-next")
    assert classifier_path(tmp_path, data, 8) != path and classifier_path(tmp_path, data, 9) != classifier_path(
        tmp_path, data, 8)


def test_augmentation_shifts_every_image_but_never_flips_1_channel_data():
    assert augmentation((1, 28, 28)) == (2, False) and augmentation((3, 32, 32)) == (2, True)
    assert augmentation((1, 12, 12))[0] == 0  # small images: a shift would move the class-defining square
    x = to_unit_range(torch.randint(0, 256, (400, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    out = augment(x, 2, False, torch.Generator().manual_seed(1))
    moved = 0
    for a, b in zip(x, out):  # each output is its input moved by some (dy, dx) in [-2, 2]², never mirrored
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(torch.nn.functional.pad(a, (2, 2, 2, 2), value=-1.0)[:, 2 - dy:30 - dy, 2 - dx:30 - dx], b)]
        assert len(shifts) == 1
        moved += shifts[0] != (0, 0)
    assert moved > 300  # 24 of 25 shifts move the image
    colour = to_unit_range(torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8))
    mirrored = augment(colour, 0, True, torch.Generator().manual_seed(1))
    flips = sum(torch.equal(m, c.flip(-1)) for m, c in zip(mirrored, colour))
    assert 150 < flips < 250 and flips + sum(torch.equal(m, c) for m, c in zip(mirrored, colour)) == 400


@pytest.mark.parametrize("channels,flips", [(1, {False}), (3, {True})])
def test_training_flips_colour_images_only(channels, flips, monkeypatch):
    seen = set()

    def spy(x, shift, flip, generator):
        seen.add(flip)
        return augment(x, shift, flip, generator)

    monkeypatch.setattr(mindiff.metrics, "augment", spy)
    train_classifier(tiny(train_size=64, test_size=16, channels=channels), "cpu", epochs=1)
    assert seen == flips


def test_fid_without_weights_says_what_to_do_and_does_not_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    start = time.monotonic()
    fid = FID(None)
    assert "eval.inception_weights=PATH" in fid.reason
    assert fid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, 1, 8, 8, dtype=torch.uint8)) == {}
    assert "no such file" in FID(str(tmp_path / "missing.pth")).reason
    assert time.monotonic() - start < 5


def test_evaluate_cli_writes_the_documented_json(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled", "eval.every=1")
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    run_cli("mindiff.evaluate", f"ckpt={tmp_path / 'run/checkpoints/last.pt'}", "n=50", "out=m.json",
            "classifier_epochs=2", cwd=tmp_path)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"kind", "epoch", "n", "fld", "fld_floor", "class_accuracy", "classifier_accuracy"} <= set(metrics)
    assert metrics["n"] == 50 and metrics["kind"] == "diffusion" and metrics["fld"] > 0


def test_optuna_sweep_optimises_the_chosen_metric(tmp_path):
    from conftest import REPO, TINY
    run_cli("mindiff.train", "-m", "-cd", str(REPO / "sweeps"), "-cn", "mnist_optuna", *TINY, "trainer.epochs=1",
            "logger.mode=disabled", "hydra.sweeper.n_trials=2", "trainer.batch_size=choice(32,64)", cwd=tmp_path)
    results = (tmp_path / "multirun" / "mnist_optuna" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optim.lr" in results and "best_value" in results


def test_each_dataset_has_its_own_floor_unless_one_is_set():
    """Below what the recipe reaches there (README, Evaluation): MNIST 0.9964, Fashion-MNIST 0.923, CIFAR-10 0.826."""
    assert classifier_floor("mindiff.data.mnist", None) == 0.99
    assert classifier_floor("mindiff.data.fashion_mnist", None) == 0.9
    assert classifier_floor("mindiff.data.cifar10", None) == classifier_floor("mindiff.data.image_folder", None) == 0.8
    assert classifier_floor("mindiff.data.fashion_mnist", 0.95) == 0.95 and classifier_floor("mindiff.data.mnist", 0) == 0
