"""Data-parallel training through torchrun on CPU (gloo): the same result as one process, one set of outputs."""

import os
import socket
import subprocess
import sys

import torch

from mindiff.checkpoint import load_checkpoint

from conftest import TINY

RUN = [*TINY, "trainer.epochs=2", "logger.mode=disabled", "eval.every=null"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process_and_write_one_set_of_outputs(tmp_path, train_cli):
    train_cli(*RUN[len(TINY):], run_dir="single")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    ddp_dir = tmp_path / "ddp_cwd"
    ddp_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
         "-m", "mindiff.train", *RUN, "hydra.run.dir=ddp"],
        cwd=ddp_dir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # includes the trainer's check that both ranks agree
    single = load_checkpoint(tmp_path / "single/checkpoints/last.pt")
    ddp = load_checkpoint(ddp_dir / "ddp/checkpoints/last.pt")
    assert ddp["step"] == single["step"] == 16
    for key in single["model"]:
        torch.testing.assert_close(ddp["model"][key], single["model"][key], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["ddp"]  # rank 1 wrote no Hydra dir of its own
    assert len(list((ddp_dir / "ddp").rglob("config.yaml"))) == 1


def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
         "-m", "mindiff.train", *RUN, "trainer.batch_size=63", "hydra.run.dir=ddp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "must divide evenly over 2 processes" in proc.stderr
