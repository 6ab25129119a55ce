"""The real entrypoint in a subprocess: Hydra, the loop, checkpoints, grids and offline W&B files."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mindiff.checkpoint import load_checkpoint

from conftest import TINY, run_cli


def test_smoke_run_writes_checkpoint_grid_video_and_offline_wandb_run(tmp_path, train_cli):
    train_cli("trainer.epochs=2")
    run = tmp_path / "run"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 16 and state["config"]["model"]["hidden_dim"] == 64
    assert set(state["rng"]) >= {"cpu"} and state["wandb_run_id"]
    assert state["train_model"] is not None  # schedule-free: training weights differ from the averaged ones
    grid = Image.open(run / "samples" / "epoch_0002.png")
    assert grid.size == (4 * 12 + 5 * 2, 4 * 12 + 5 * 2)
    assert (run / "samples" / "progress.gif").is_file()
    offline = list((run / "wandb").glob(f"offline-run-*-{state['wandb_run_id']}/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and {"loss/target", "loss/eps", "loss/x0"} <= set(epochs[-1])
    assert sum(key.startswith("loss_by_t/") for key in epochs[-1]) == 10


def test_max_steps_stops_mid_epoch_with_a_grid_and_a_checkpoint(tmp_path, train_cli):
    train_cli("trainer.epochs=5", "trainer.max_steps=3")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 3)
    assert (tmp_path / "run" / "samples" / "step_000003.png").is_file()


def test_ckpt_every_keeps_epoch_snapshots(tmp_path, train_cli):
    train_cli("trainer.epochs=4", "trainer.ckpt_every=2", "trainer.sample_every=2", "logger.mode=disabled")
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert ckpts == ["epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == ["epoch_0002.png",
                                                                                    "epoch_0004.png"]


def test_multirun_over_two_lrs_writes_two_runs_in_one_wandb_group(tmp_path):
    run_cli("mindiff.train", "-m", *TINY, "trainer.epochs=1", "optim.lr=1e-3,5e-3", "hydra.sweep.dir=sweep",
            cwd=tmp_path)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != ".hydra"
                  and (p / "checkpoints").exists())
    assert len(runs) == 2 and runs[0].startswith("0_") and runs[1].startswith("1_")
    assert "optim.lr=0.001" in runs[0] and "optim.lr=0.005" in runs[1]  # named by the overrides
    lrs = [load_checkpoint(tmp_path / "sweep" / r / "checkpoints" / "last.pt")["config"]["optim"]["lr"] for r in runs]
    assert lrs == [1e-3, 5e-3]
    for r in runs:  # one offline W&B run each, grouped by the sweep and named by the overrides
        record = next((tmp_path / "sweep" / r / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert b"mnist_toy-sweep" in record and r.split("_", 1)[1].encode() in record


def weights(path):
    state = load_checkpoint(path)
    return state["model"], state["train_model"]


@pytest.mark.parametrize("stop_at,knobs", [
    (5, []),  # mid-epoch
    (8, []),  # exactly at an epoch's end
    (5, ["optim.fused=true", "trainer.compile=true"]),  # the compiled speed knobs keep the guarantee
    (5, ["optim.ema=0.9"]),  # the EMA is saved and restored with the optimizer
])
def test_resume_after_a_stop_ends_with_bit_identical_weights(tmp_path, train_cli, stop_at, knobs):
    common = ["trainer.epochs=3", "trainer.sample_every=1", "logger.mode=disabled", *knobs]
    train_cli(*common, run_dir="straight")
    train_cli(*common, f"trainer.max_steps={stop_at}", run_dir="resumed")
    train_cli(*common, "trainer.resume=auto", run_dir="resumed")
    straight, resumed = weights(tmp_path / "straight/checkpoints/last.pt"), weights(tmp_path / "resumed/checkpoints/last.pt")
    for a, b in zip(straight, resumed):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")["step"] == 24
    # the numbers too: each epoch's line (and final_loss) covers the whole epoch, not only the steps after a resume
    assert_same_losses(losses(tmp_path / "resumed"), losses(tmp_path / "straight"))


def losses(run_dir) -> dict:
    """final_loss of metrics.json, and the loss and its terms in each whole epoch's line of metrics.jsonl."""
    found = {"final_loss": json.loads((run_dir / "metrics.json").read_text())["final_loss"]}
    for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if line["step"] == 8 * line["epoch"]:  # 8 steps an epoch; a stop's partial pass is logged under its step
            found.update({f"{line['epoch']}:{key}": value for key, value in line.items() if key.startswith("loss")})
    return found


def assert_same_losses(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 1 + 3 * 14  # loss, 3 terms, 10 bins of t per epoch
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_resume_auto_on_a_finished_run_trains_nothing(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled")
    before = weights(tmp_path / "run/checkpoints/last.pt")[0]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    (tmp_path / "run/metrics.json").unlink()  # killed after its last checkpoint, before metrics.json
    proc = train_cli("trainer.epochs=1", "logger.mode=disabled", "trainer.resume=auto")
    assert "already finished" in proc.stderr + proc.stdout
    after = weights(tmp_path / "run/checkpoints/last.pt")[0]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "run/metrics.json").read_text()) == metrics  # written from the checkpoint


def test_bad_value_is_one_line_and_exit_code_2_before_any_work(tmp_path, train_cli):
    proc = train_cli("optim.lr=-1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "mindiff.train: error: optim.lr=-1.0 must be > 0"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_mnist_offline_names_the_folder(tmp_path):
    proc = run_cli("mindiff.train", "dataset.root=nowhere", "dataset.download=false", "hydra.run.dir=run",
                   "logger.mode=disabled", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "MNIST not found under" in proc.stderr and "dataset.root" in proc.stderr


def test_sampler_writes_npz_and_grid(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled", "schedule.label_dropout=0.2", "schedule.guidance=2.0")
    ckpt = tmp_path / "run/checkpoints/last.pt"
    run_cli("mindiff.sample", f"ckpt={ckpt}", "n=25", "out=s.npz", "steps=4", "batch_size=10", cwd=tmp_path)
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (25, 1, 12, 12) and f["images"].dtype == np.uint8
        assert f["labels"].dtype == np.int64 and list(f["labels"][:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    run_cli("mindiff.sample", f"ckpt={ckpt}", "n=20", "out=g.png", "classes=[3,7]", cwd=tmp_path)
    assert Image.open(tmp_path / "g.png").size == (2 * 14 + 2, 10 * 14 + 2)
    same = run_cli("mindiff.sample", f"ckpt={ckpt}", "n=25", "out=t.npz", "steps=4", cwd=tmp_path)
    with np.load(tmp_path / "s.npz") as a, np.load(tmp_path / "t.npz") as b:
        assert np.array_equal(a["images"], b["images"]), same.stderr  # seeded: batch size does not matter
    for name, args in {"own.npz": [], "guided.npz": ["guidance=2"], "unguided.npz": ["guidance=1"],
                       "heun.npz": ["sampler=heun"]}.items():
        run_cli("mindiff.sample", f"ckpt={ckpt}", "n=10", f"out={name}", "steps=4", *args, cwd=tmp_path)
    images = {name: np.load(tmp_path / name)["images"] for name in ("own.npz", "guided.npz", "unguided.npz", "heun.npz")}
    assert np.array_equal(images["own.npz"], images["guided.npz"])  # the run's own guidance unless told otherwise
    assert not np.array_equal(images["own.npz"], images["unguided.npz"])
    assert not np.array_equal(images["own.npz"], images["heun.npz"])


def test_sampler_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("mindiff.sample", "ckpt=junk.pt", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "junk.pt is not a readable checkpoint" in proc.stderr


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    torch.save({"format": "mindiff-checkpoint-v1", "model": Exploit()}, tmp_path / "evil.pt")
    proc = run_cli("mindiff.sample", "ckpt=evil.pt", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "evil.pt was refused" in proc.stderr and "pwned" not in proc.stdout


def test_a_truncated_checkpoint_is_named(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled")
    data = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    proc = run_cli("mindiff.sample", "ckpt=cut.pt", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "cut.pt is not a readable checkpoint" in proc.stderr


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, train_cli):
    train_cli("trainer.epochs=2", "trainer.max_steps=3")
    first = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["wandb_run_id"]
    train_cli("trainer.epochs=2", "trainer.resume=auto")
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["wandb_run_id"] == first
    assert all(p.name.endswith(first) for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_sigterm_saves_a_checkpoint_closes_wandb_and_exits_nonzero(tmp_path):
    env_args = [sys.executable, "-m", "mindiff.train", *TINY, "trainer.epochs=100000", "trainer.batch_size=8",
                "eval.every=null", "hydra.run.dir=run"]
    proc = subprocess.Popen(env_args, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch has ended: training is under way
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in out + err and "trainer.resume=auto" in out + err
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] > 0 and f"stopped by SIGTERM at step {state['step']}" in out + err  # saved where it stopped
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_keep_last_prunes_old_snapshots_but_keeps_asked_for_epochs(tmp_path, train_cli):
    train_cli("trainer.epochs=5", "trainer.ckpt_every=1", "trainer.keep_last=2", "trainer.sample_epochs=[1]",
              "logger.mode=disabled", "eval.every=null")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert names == ["epoch_0001.pt", "epoch_0004.pt", "epoch_0005.pt", "last.pt"]


@pytest.mark.parametrize("override,message", [
    ("trainer.epoch=3", "Could not override 'trainer.epoch'"),
    ("trainer.epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("model=unet", "Could not find 'model/unet'; available options in 'model': autoencoder, conv_adaln, mlp2"),
    ("trainer.batch_size=0", "trainer.batch_size=0 must be > 0"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number"),
    ("optim.lr=inf", "optim.lr=inf must be a finite number"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]=1.0 must be in [0, 1)"),
    ("dataset.image_size=0", "dataset.image_size=0 must be > 0"),
    pytest.param("trainer.device=cuda", "trainer.device=cuda but no CUDA device is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    ("hydra.run.dir=a_file/run", "hydra.run.dir=a_file/run: cannot write in a_file/run (a_file is not a folder)"),
])
def test_bad_input_is_one_line_with_exit_code_2_before_any_work(tmp_path, override, message):
    (tmp_path / "a_file").write_text("")
    proc = run_cli("mindiff.train", "hydra.run.dir=run", override, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mindiff.train: error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()
