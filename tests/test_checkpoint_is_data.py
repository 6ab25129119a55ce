"""A checkpoint is data, never code: configs stored in a file that name anything but mindiff's own
classes, or carry Hydra's instantiation keys at any depth, are refused before anything is built."""

import copy
import os

import pytest
import torch
from PIL import Image

from mindiff.build import read_checkpoint
from mindiff.checkpoint import CheckpointError, load_checkpoint

from conftest import LDM, QUIET, TINY, TINY_RUN, run_cli


@pytest.fixture(scope="module")
def runs(genuine):
    """Genuine checkpoints to tamper with: a pixel denoiser, an autoencoder and a latent denoiser."""
    return {name: load_checkpoint(genuine / name / "checkpoints" / "last.pt") for name in ("mlp2", "ae", "ldm")}


def payloads(marker):
    """Configs that hydra's instantiate turns into code that writes `marker` (some get past Hydra's own
    blocklist, which is no security boundary)."""
    return {
        "write_text": {"_target_": "pathlib.Path.write_text",
                       "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "pwned"]},
        "copyfile": {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": str(marker)},
        "exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').write('pwned')"]},
    }


def plant(config: dict, where: str, payload):
    """Put `payload` at `where` in a copy of a stored config."""
    config = copy.deepcopy(config)
    if where == "model":
        config["model"] = payload
    elif where == "model value":
        config["model"]["hidden_dim"] = payload
    elif where == "inside a list":
        config["model"]["image_shape"] = [1, payload, 12]
    elif where == "schedule":
        config["schedule"] = payload
    elif where == "dataset":
        config["dataset"] = payload
    elif where == "trainer (never built)":
        config["trainer"]["callback"] = payload
    elif where == "top level":
        config["_target_"] = payload["_target_"]
    elif where == "_partial_ on a mindiff class":
        config["model"]["_partial_"] = True
    elif where == "_args_ on a mindiff class":
        config["model"]["_args_"] = [payload]
    elif where == "interpolation":
        config["model"]["hidden_dim"] = "${oc.env:HOME}"
    return config


PLACES = ["model", "model value", "inside a list", "schedule", "dataset", "trainer (never built)", "top level",
          "_partial_ on a mindiff class", "_args_ on a mindiff class", "interpolation"]
KEY_NAMED = {"model": "model._target_", "model value": "model.hidden_dim", "inside a list": "model.image_shape[1]",
             "schedule": "schedule._target_", "dataset": "dataset._target_", "trainer (never built)": "trainer.callback",
             "top level": "_target_", "_partial_ on a mindiff class": "model._partial_",
             "_args_ on a mindiff class": "model._args_", "interpolation": "model.hidden_dim"}


@pytest.mark.parametrize("payload", ["write_text", "copyfile", "exec"])
@pytest.mark.parametrize("where", PLACES)
def test_a_stored_config_that_names_code_is_refused_naming_file_and_key(tmp_path, runs, where, payload):
    marker = tmp_path / "pwned"
    state = {**runs["mlp2"], "config": plant(runs["mlp2"]["config"], where, payloads(marker)[payload])}
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(tmp_path / "evil.pt")
    message = str(refused.value)
    assert "evil.pt was refused" in message and KEY_NAMED[where] in message and "\n" not in message
    assert not marker.exists()


def test_an_embedded_autoencoder_that_names_code_is_refused(tmp_path, runs):
    marker = tmp_path / "pwned"
    state = copy.deepcopy(runs["ldm"])
    state["autoencoder"]["config"]["model"]["hidden"] = payloads(marker)["write_text"]
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt \(its embedded autoencoder\) was refused: model.hidden"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_genuine_checkpoints_pass(runs, tmp_path):
    for name, state in runs.items():
        torch.save(state, tmp_path / f"{name}.pt")
        assert read_checkpoint(tmp_path / f"{name}.pt")["kind"] == ("autoencoder" if name == "ae" else "diffusion")


def evil(runs, tmp_path, run: str, marker, on_autoencoder: bool = False):
    state = copy.deepcopy(runs[run])
    target = state["autoencoder"]["config"] if on_autoencoder else state["config"]
    target["model"] = payloads(marker)["write_text"]
    torch.save(state, tmp_path / "evil.pt")
    Image.new("L", (12, 12), 128).save(tmp_path / "image.png")  # a real image: the checkpoint is what is refused
    return tmp_path / "evil.pt"


ENTRY_POINTS = {  # (which genuine run to tamper with, is the autoencoder inside it the malicious part, command)
    "sample": ("mlp2", False, lambda ckpt: ("mindiff.sample", f"ckpt={ckpt}", "n=4", "out=s.npz")),
    "sample, embedded autoencoder": ("ldm", True, lambda ckpt: ("mindiff.sample", f"ckpt={ckpt}", "n=4", "out=s.npz")),
    "evaluate": ("mlp2", False, lambda ckpt: ("mindiff.evaluate", f"ckpt={ckpt}", "n=4", "out=m.json")),
    "reconstruct": ("ae", False, lambda ckpt: ("mindiff.reconstruct", f"ckpt={ckpt}", f"image={ckpt.parent / 'image.png'}")),
    "train autoencoder.ckpt": ("ae", False, lambda ckpt: ("mindiff.train", *TINY_RUN, *LDM, *QUIET,
                                                          f"autoencoder.ckpt={ckpt}", "hydra.run.dir=run")),
    "train resume": ("mlp2", False, lambda ckpt: ("mindiff.train", *TINY, *QUIET, "trainer.epochs=2",
                                                  f"trainer.resume={ckpt}", "hydra.run.dir=run")),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_a_malicious_checkpoint_with_exit_2_and_no_trace(tmp_path, runs, entry):
    run, on_autoencoder, command = ENTRY_POINTS[entry]
    marker = tmp_path / "pwned"
    ckpt = evil(runs, tmp_path, run, marker, on_autoencoder)
    before = set(os.listdir(tmp_path))
    proc = run_cli(*command(ckpt), cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "evil.pt" in lines[-1] and "was refused" in lines[-1] and "model._target_" in lines[-1]
    assert not marker.exists()
    if not entry.startswith("train"):  # a training run has made its Hydra dir (its .hydra and train.log) by then
        assert set(os.listdir(tmp_path)) == before
    else:
        assert not (tmp_path / "run" / "checkpoints").exists()
