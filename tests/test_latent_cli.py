"""The two-stage latent model through the one entrypoint: an autoencoder run, then a denoiser on its latents."""

import numpy as np
import pytest
from PIL import Image

from mindiff.checkpoint import load_checkpoint

from conftest import run_cli

AE = ["model=autoencoder", "schedule=reconstruction", "model.hidden=[8,16,16]", "model.latent_channels=4",
      "model.groups=4", "schedule.eval_images=64"]
LDM = ["model=conv_adaln", "model.hidden=32", "model.blocks=2", "model.class_embed_dim=8", "model.groups=8",
       "schedule.sample_steps=4"]


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """One small autoencoder run, shared by the latent tests."""
    from conftest import TINY_RUN
    root = tmp_path_factory.mktemp("ae")
    run_cli("mindiff.train", *TINY_RUN, *AE, "trainer.epochs=2", "dataset.hflip=true", "hydra.run.dir=ae", cwd=root)
    return root / "ae"


def test_autoencoder_run_logs_reconstructions_and_held_out_psnr(ae_run):
    state = load_checkpoint(ae_run / "checkpoints" / "last.pt")
    assert state["kind"] == "autoencoder" and state["epoch"] == 2
    grid = Image.open(ae_run / "samples" / "epoch_0002.png")  # input, reconstruction, input, ... per row
    assert grid.size == (4 * 14 + 2, 4 * 14 + 2)
    log = (ae_run / "train.log").read_text()
    assert "epoch_0001  eval/psnr" in log and "epoch_0002  eval/psnr" in log


def test_denoiser_trains_on_the_autoencoders_latents_and_writes_decoded_grids(ae_run, train_cli, tmp_path):
    ckpt = ae_run / "checkpoints" / "last.pt"
    train_cli(*LDM, f"autoencoder.ckpt={ckpt}", "trainer.epochs=1", "dataset.hflip=true", "logger.mode=disabled")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["kind"] == "diffusion" and state["autoencoder"] is not None
    assert state["config"]["model"]["in_channels"] == 4  # read from the autoencoder's own config
    assert Image.open(tmp_path / "run" / "samples" / "epoch_0001.png").size == (4 * 14 + 2, 4 * 14 + 2)
    # the denoiser's checkpoint carries its autoencoder: sampling needs nothing else
    run_cli("mindiff.sample", f"ckpt={tmp_path / 'run/checkpoints/last.pt'}", "n=6", "out=s.npz", cwd=tmp_path)
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (6, 1, 12, 12) and f["images"].dtype == np.uint8


def test_conv_adaln_also_trains_on_pixels(train_cli, tmp_path):
    train_cli(*LDM, "trainer.epochs=1", "logger.mode=disabled")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["model"]["in_channels"] == 1


def test_a_denoiser_checkpoint_given_as_autoencoder_is_refused_before_work(train_cli, tmp_path):
    train_cli("trainer.epochs=1", "logger.mode=disabled", run_dir="pixel")
    proc = train_cli(*LDM, f"autoencoder.ckpt={tmp_path / 'pixel/checkpoints/last.pt'}", check=False)
    assert proc.returncode == 2
    assert "is a diffusion checkpoint, not an autoencoder" in proc.stderr.strip().splitlines()[-1]


def test_reconstruct_any_size_image(ae_run, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 21), dtype=np.uint8)).save(tmp_path / "in.png")
    proc = run_cli("mindiff.reconstruct", f"ckpt={ae_run / 'checkpoints/last.pt'}", "image=in.png", "out=out.png",
                   cwd=tmp_path)
    assert "latent (4, 7, 5)" in proc.stdout and "PSNR" in proc.stdout
    assert Image.open(tmp_path / "out.png").size == (2 * 20 + 3 * 2, 28 + 2 * 2)


def test_reconstruct_refuses_a_denoiser(train_cli, tmp_path):
    train_cli("trainer.epochs=1", "logger.mode=disabled")
    Image.new("L", (12, 12)).save(tmp_path / "in.png")
    proc = run_cli("mindiff.reconstruct", f"ckpt={tmp_path / 'run/checkpoints/last.pt'}", "image=in.png",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "not an autoencoder" in proc.stderr


def test_sampling_an_autoencoder_checkpoint_is_refused(ae_run, tmp_path):
    proc = run_cli("mindiff.sample", f"ckpt={ae_run / 'checkpoints/last.pt'}", "n=4", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is an autoencoder checkpoint" in proc.stderr
