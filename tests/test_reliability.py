"""Faults: kills at any moment, a full disk, a diverging loss, a checkpoint from another model."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from mindiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from conftest import TINY

RUN = ["trainer.epochs=40", "trainer.batch_size=16", "logger.mode=disabled", "eval.every=null",
       "trainer.sample_every=100"]


def start(cwd, *extra):
    return subprocess.Popen([sys.executable, "-m", "mindiff.train", *TINY, *RUN, "hydra.run.dir=run", *extra],
                            cwd=cwd, env={**os.environ, "WANDB_MODE": "disabled"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_new_checkpoint(path, after: float, proc, timeout=120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_mtime > after:
            return True
        time.sleep(0.01)
    return False


def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path, train_cli):
    train_cli(*RUN, run_dir="straight")
    rng, last = random.Random(0), tmp_path / "run" / "checkpoints" / "last.pt"
    kills = 0
    while True:
        proc = start(tmp_path, "trainer.resume=auto")
        seen = last.stat().st_mtime if last.exists() else 0.0
        if kills < 3 and wait_for_new_checkpoint(last, seen, proc):
            time.sleep(rng.uniform(0.0, 0.2))  # lands in a step, or in the next save
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            # what a kill in the middle of a save leaves behind: a torn temp file beside the last good one
            (last.parent / "last.pt.tmp").write_bytes(os.urandom(1000))
            continue
        proc.wait(timeout=300)
        break
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert kills == 3
    straight = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    resumed = load_checkpoint(last)
    assert resumed["step"] == straight["step"]
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*the previous checkpoint there is intact"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and not (tmp_path / "last.pt.tmp").exists()


def test_a_diverging_loss_stops_naming_the_step_and_never_saves_the_bad_state(tmp_path, train_cli):
    proc = train_cli("trainer.epochs=3", "optim.lr=1e30", "optim.warmup_steps=0", "logger.mode=disabled",
                     "eval.every=null", "trainer.log_every=1", check=False)
    assert proc.returncode != 0
    assert "loss became nan at step" in proc.stderr or "loss became inf at step" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_resuming_with_another_model_is_refused_by_name(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled", "eval.every=null")
    proc = train_cli("trainer.epochs=2", "trainer.resume=auto", "model.hidden_dim=32", "logger.mode=disabled",
                     check=False)
    assert proc.returncode == 2 and "does not fit this run's model" in proc.stderr.strip().splitlines()[-1]


def test_an_unreachable_wandb_server_falls_back_to_offline_within_seconds(tmp_path):
    env = {**os.environ, "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # closed port
    env.pop("WANDB_MODE", None)
    start_time = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mindiff.train", *TINY, "trainer.epochs=1", "eval.every=null",
                           "logger.mode=online", "hydra.run.dir=run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "W&B could not be reached" in proc.stdout + proc.stderr and "wandb sync" in proc.stdout + proc.stderr
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert time.monotonic() - start_time < 60


SLOW_SAVE = """
import sys, time, pathlib, torch
marker = pathlib.Path(sys.argv.pop(1))
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):  # a slow filesystem: the kill lands inside the write
    real_save(obj, f, *args, **kwargs)
    marker.touch()
    time.sleep(30)
torch.save = slow_save
from mindiff.train import CONF, main
sys.argv[1:1] = ["--config-path", str(CONF)]  # run as `python -c`, Hydra cannot find conf/ by itself
main()
"""


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, train_cli):
    train_cli(*RUN, "trainer.epochs=3", run_dir="straight")
    train_cli(*RUN, "trainer.epochs=3", "trainer.max_steps=40")  # a good checkpoint at step 40
    before = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    marker = tmp_path / "inside_save"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(marker), *TINY, *RUN, "trainer.epochs=3",
                             "trainer.resume=auto", "hydra.run.dir=run"], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    assert (tmp_path / "run/checkpoints/last.pt").read_bytes() == before  # the torn write never replaced it
    assert (tmp_path / "run/checkpoints/last.pt.tmp").exists()
    train_cli(*RUN, "trainer.epochs=3", "trainer.resume=auto")
    straight = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    resumed = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert resumed["step"] == straight["step"]
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
