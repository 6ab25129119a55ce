"""Faults: kills at any moment, a full disk, a diverging loss, a checkpoint from another model."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mindiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mindiff.data import image_folder
from mindiff.errors import UserError

from conftest import TINY, run_cli

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
            (last.parent / f"last.pt.{proc.pid}.tmp").write_bytes(os.urandom(1000))
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
    assert not list(last.parent.glob("*.tmp"))  # the resumed run cleared what the kills left


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
    assert load_checkpoint(path)["step"] == 1 and not list(tmp_path.glob("*.tmp"))


def test_a_diverging_loss_stops_naming_the_step_and_never_saves_the_bad_state(tmp_path, train_cli):
    # lr is bounded (optim.lr <= 10), but AdamW's decoupled decay at lr * weight_decay = 100 flips and grows
    # the weights 99-fold a step
    proc = train_cli("trainer.epochs=3", "optim=adamw", "optim.lr=10", "optim.weight_decay=10",
                     "optim.warmup_steps=0", "logger.mode=disabled",
                     "eval.every=null", "trainer.log_every=1", check=False)
    assert proc.returncode != 0
    assert "loss became nan at step" in proc.stderr or "loss became inf at step" in proc.stderr
    assert "no checkpoint was written yet" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_resuming_with_another_model_is_refused_by_name(tmp_path, train_cli):
    train_cli("trainer.epochs=1", "logger.mode=disabled", "eval.every=null")
    proc = train_cli("trainer.epochs=2", "trainer.resume=auto", "model.hidden_dim=32", "logger.mode=disabled",
                     check=False)
    assert proc.returncode == 2 and "model.hidden_dim: 64 -> 32" in proc.stderr.strip().splitlines()[-1]


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
    assert list((tmp_path / "run/checkpoints").glob("last.pt.*.tmp"))
    train_cli(*RUN, "trainer.epochs=3", "trainer.resume=auto")
    straight = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    resumed = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert resumed["step"] == straight["step"]
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key


# ---- a resume continues the same run, or refuses ------------------------------------------------

def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize("batch", [32, 64])  # 2x once "finished" epochs with 0 steps; 4x looped forever
def test_resume_with_a_larger_batch_is_refused_at_once(tmp_path, train_cli, batch):
    train_cli(*RUN, "trainer.epochs=3", "trainer.max_steps=5")
    proc = train_cli(*RUN, "trainer.epochs=3", "trainer.resume=auto", f"trainer.batch_size={batch}", check=False,
                     timeout=90)
    assert proc.returncode == 2
    assert f"trainer.batch_size: 16 -> {batch}" in last_line(proc) and last_line(proc).startswith("mindiff.train: error:")
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 5  # untouched


def test_resume_with_another_lr_is_refused_listing_old_and_new(tmp_path, train_cli):
    train_cli(*RUN, "trainer.epochs=3", "trainer.max_steps=5")
    proc = train_cli(*RUN, "trainer.epochs=3", "trainer.resume=auto", "optim.lr=1e-5", "trainer.seed=1", check=False)
    assert proc.returncode == 2
    assert "optim.lr: 0.002 -> 1e-05; trainer.seed: 0 -> 1" in last_line(proc)


def test_what_a_resume_may_change_takes_effect(tmp_path, train_cli):
    train_cli(*RUN, "trainer.epochs=2", "trainer.max_steps=5")
    train_cli(*RUN, "trainer.epochs=3", "trainer.resume=auto", "schedule.sample_steps=3", "trainer.ckpt_every=1",
              "eval.every=3", "eval.n=32", "eval.classifier_epochs=1")
    run = tmp_path / "run"
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert (state["epoch"], state["step"]) == (3, 96) and state["config"]["schedule"]["sample_steps"] == 3
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == [
        "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines if "eval/fld" in line] == [3]
    assert "eval/fld" in state["metrics"]  # the final scores are in the final checkpoint


def write_image_folder(root, per_class: int):
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 + 150 * c + i, np.uint8)).save(root / f"class{c}" / f"{i}.png")


def test_resume_on_a_dataset_of_another_size_is_refused(tmp_path, train_cli):
    write_image_folder(tmp_path / "a", 40)
    write_image_folder(tmp_path / "b", 60)
    folder = ["dataset=image_folder", "dataset.resolution=8", "dataset.num_classes=2", *RUN, "trainer.epochs=2"]
    train_cli(*folder, f"dataset.root={tmp_path / 'a'}", "trainer.max_steps=3")
    proc = train_cli(*folder, f"dataset.root={tmp_path / 'b'}", "trainer.resume=auto", check=False, timeout=90)
    assert proc.returncode == 2
    assert "the run trained on 72 images, but the dataset now has 108" in last_line(proc)


# ---- no work lost to a side failure --------------------------------------------------------------

def test_an_unwritable_eval_cache_is_refused_before_any_work(tmp_path, train_cli):
    (tmp_path / "a_file").write_text("")
    proc = train_cli("trainer.epochs=1", "logger.mode=disabled", f"eval.cache_dir={tmp_path / 'a_file' / 'cache'}",
                     check=False)
    assert proc.returncode == 2
    assert "eval.cache_dir" in last_line(proc) and "a_file is not a folder" in last_line(proc)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unwritable_image_folder_cache_is_named_before_decoding(tmp_path):
    write_image_folder(tmp_path / "images", 3)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"dataset.cache_dir.*a_file/cache.*is not a folder"):
        image_folder(str(tmp_path / "images"), resolution=8, num_classes=2, cache_dir=str(tmp_path / "a_file/cache"))


FAILING_SIDE_WORK = """
import sys
import mindiff.metrics, mindiff.trainer
def no_space(*args, **kwargs):  # what a full disk or a broken evaluator does in the middle of a run
    raise OSError(28, "No space left on device")
mindiff.metrics.Evaluator.__call__ = no_space
mindiff.trainer.save_grid = no_space
from mindiff.train import CONF, main
sys.argv[1:1] = ["--config-path", str(CONF)]
main()
"""


def test_a_failing_evaluation_or_grid_is_one_line_and_the_run_goes_on(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FAILING_SIDE_WORK, *TINY, "trainer.epochs=2", "logger.mode=disabled",
                           "eval.every=1", "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr  # Hydra logs to stdout
    assert "the evaluation at epoch_0001 failed, training goes on: OSError: [Errno 28] No space left on device" in output
    assert "the sample grid at epoch_0002 failed, training goes on" in output
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 2


def test_a_second_training_in_a_busy_run_dir_is_refused_and_changes_nothing(tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "mindiff.train", *TINY, "trainer.epochs=100000",
                              "trainer.batch_size=8", "eval.every=null", "logger.mode=disabled", "hydra.run.dir=run"],
                             cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        last = tmp_path / "run" / "checkpoints" / "last.pt"
        assert wait_for_new_checkpoint(last, 0.0, first), "the first training never saved"
        overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
        second = run_cli("mindiff.train", *TINY, "trainer.epochs=1", "optim.lr=1e-3", "hydra.run.dir=run",
                         cwd=tmp_path, check=False, timeout=120)
        assert second.returncode == 2
        assert len(second.stderr.strip().splitlines()) == 1
        assert f"is in use by a training that is still running (pid {first.pid})" in last_line(second)
        assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == overrides
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM


def test_sample_and_evaluate_check_out_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    for module in ("mindiff.sample", "mindiff.evaluate"):
        proc = run_cli(module, "ckpt=missing.pt", "out=a_file/out.npz", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "out=a_file/out.npz: cannot write in a_file (a_file is not a folder)" in proc.stderr


# ---- every bad value is one line, exit code 2 ------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["precision=fp16"], "precision='fp16' is not allowed; choose one of fp32, bf16"),
    (["device=gpu"], "device='gpu' is not allowed; choose one of auto, cpu, cuda"),
    (["sampler=rk4"], "sampler='rk4' is not allowed; choose one of euler, heun"),
    (["guidance=-1"], "guidance=-1.0 must be >= 0"),
    (["guidance=inf"], "guidance=inf must be a finite number"),
    pytest.param(["device=cuda"], "error: device=cuda but no CUDA device is visible; use device=auto or device=cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_sample_bad_values_name_the_cli_key(tmp_path, args, message):
    proc = run_cli("mindiff.sample", "ckpt=missing.pt", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in last_line(proc) and len(proc.stderr.strip().splitlines()) == 1
