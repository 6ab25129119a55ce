"""Stops: a stop never changes a reported number, and every stop is prompt, one line, and keeps the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mindiff.checkpoint import load_checkpoint
from mindiff.objectives import AlphaBlend
from mindiff.resume import EpochSums
from mindiff.signals import StopSignal, Stopped

from conftest import TINY, run_cli

QUIET = ["logger.mode=disabled", "eval.every=null", "trainer.sample_every=100"]
# The numbers of stopped and resumed runs: tests/test_train_cli.py (test_resume_after_a_stop_...).


def test_epoch_sums_round_trip_a_checkpoint_exactly():
    sums, terms = EpochSums(), [{"target": torch.rand(()), "by_t": torch.rand(2, 10)} for _ in range(5)]
    for step in terms[:3]:
        sums.add_terms(step)
        sums.add([float(step["target"])])
    restored = EpochSums.from_state(torch.load(save(sums.state()), weights_only=True))
    for s in (sums, restored):
        for step in terms[3:]:
            s.add_terms(step)
            s.add([float(step["target"])])
    assert restored.loss == sums.loss and restored.steps == sums.steps == 5
    assert all(torch.equal(restored.terms[k], sums.terms[k]) for k in sums.terms)
    assert EpochSums.from_state(None).steps == 0  # a checkpoint from before the sums were kept


def save(obj):
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_a_stop_request_ends_sampling_at_its_next_step_and_nothing_outside_a_stop_signal():
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    noise = torch.randn(2, 1, 4, 4)
    assert AlphaBlend(sample_steps=3).sample(model, noise, None).shape == noise.shape  # no StopSignal: no check
    with StopSignal() as stop, stop.deferring():
        stop.signum = signal.SIGTERM  # as the handler records a first signal
        with pytest.raises(Stopped):
            AlphaBlend(sample_steps=100).sample(model, noise, None)


def start_training(tmp_path, *overrides, script=()):
    """A tiny training in tmp_path/run; `script`: `python -c SCRIPT ARG` in place of `python -m mindiff.train`."""
    args = ["-c", *script] if script else ["-m", "mindiff.train"]
    return subprocess.Popen([sys.executable, *args, *TINY, "hydra.run.dir=run", *overrides], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def stop_and_time(proc, *signals) -> tuple:
    """Sends the signals (a moment apart), then waits; returns (seconds to exit after the first, output)."""
    sent = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    return time.monotonic() - sent, out + err


LONG_GRID = ["trainer.sample_grid=64", "schedule.sample_steps=10000", "schedule.sampler=heun"]  # a minute or more


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
def test_a_stop_during_a_grid_is_prompt_one_line_and_keeps_the_checkpoint_and_the_epochs_line(tmp_path, signals):
    proc = start_training(tmp_path, "trainer.epochs=3", "logger.mode=disabled", "eval.every=null", *LONG_GRID)
    wait_for(tmp_path / "run/checkpoints/last.pt", proc)  # written before the grid
    time.sleep(1.0)  # inside the grid
    seconds, output = stop_and_time(proc, *signals)
    assert proc.returncode == 128 + signals[0]
    assert seconds < 10  # 2 s on an idle machine; a loaded one is given room
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert f"stopped by {signal.Signals(signals[0]).name} at step 8 (the sample grid at epoch_0001 was abandoned)" \
        in output
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 1
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1]
    assert not (tmp_path / "run/samples/epoch_0001.png").exists()


def test_a_stop_while_the_eval_classifier_trains_is_prompt_and_caches_no_classifier(tmp_path):
    cache = tmp_path / "cache"
    proc = start_training(tmp_path, "trainer.epochs=3", "logger.mode=disabled", "eval.every=1",
                          "eval.classifier_epochs=1000", f"eval.cache_dir={cache}", "trainer.sample_every=100")
    wait_for(tmp_path / "run/checkpoints/last.pt", proc)
    time.sleep(1.0)
    seconds, output = stop_and_time(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM and seconds < 10
    assert "Traceback" not in output and "the evaluation at epoch_0001 was abandoned" in output
    assert not list(cache.glob("classifier-*.pt"))
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 1


SLOW_START = """
import pathlib, sys, time
import mindiff.trainer
marker = pathlib.Path(sys.argv.pop(1))
def slow_inputs(*args, **kwargs):  # what decoding a dataset or encoding its latents looks like: minutes
    marker.touch()
    time.sleep(600)
mindiff.trainer.cached_inputs = slow_inputs
from mindiff.train import CONF, main
sys.argv[1:1] = ["--config-path", str(CONF)]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_before_the_loop_is_one_line_without_a_traceback(tmp_path, sig):
    marker = tmp_path / "preparing"
    proc = start_training(tmp_path, "logger.mode=disabled", script=(SLOW_START, str(marker)))
    wait_for(marker, proc)
    seconds, output = stop_and_time(proc, sig)
    assert proc.returncode == 128 + sig and seconds < 10
    assert "Traceback" not in output
    assert f"stopped by {sig.name}; no checkpoint was written yet" in output


SAMPLE_UNDER_EXIT_ON_STOP = """
import pathlib, sys, time, torch
from mindiff.objectives import AlphaBlend
from mindiff.signals import exit_on_stop
marker = pathlib.Path(sys.argv[1])
class Slow(torch.nn.Linear):  # 10,000 steps of 10 ms
    def forward(self, x, t, y):
        time.sleep(0.01)
        return -x
with exit_on_stop(lambda line: print(f"mindiff.sample: {line}", file=sys.stderr)):
    marker.touch()
    AlphaBlend(sample_steps=10**4).generate(Slow(1, 1), torch.zeros(64).long(), (1, 4, 4))
"""


def test_exit_on_stop_ends_a_sampling_command_at_once_in_one_line(tmp_path):
    marker = tmp_path / "sampling"
    proc = subprocess.Popen([sys.executable, "-c", SAMPLE_UNDER_EXIT_ON_STOP, str(marker)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker, proc)
    time.sleep(0.5)
    seconds, output = stop_and_time(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM and seconds < 10
    assert output.strip() == "mindiff.sample: stopped by SIGTERM"


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])  # joblib: workers
def test_a_refused_sweep_job_leaves_the_live_runs_folder_as_it_was(tmp_path, launcher):
    live = subprocess.Popen([sys.executable, "-m", "mindiff.train", *TINY, *QUIET, "trainer.epochs=100000",
                             "trainer.batch_size=8", "hydra.run.dir=sweep/job"], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(tmp_path / "sweep/job/checkpoints/last.pt", live)
        record = {p.name: p.read_text() for p in (tmp_path / "sweep/job/.hydra").iterdir()}
        proc = run_cli("mindiff.train", "-m", *TINY, *QUIET, "trainer.epochs=1", "optim.lr=1e-3,2e-3",
                       "hydra.sweep.dir=sweep", "hydra.sweep.subdir=job", *launcher, cwd=tmp_path, check=False,
                       timeout=120)
        assert "is in use by a training that is still running" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert {p.name: p.read_text() for p in (tmp_path / "sweep/job/.hydra").iterdir()} == record
        assert not (tmp_path / "sweep/job/FAILED").exists()
        assert "in use by a training" not in (tmp_path / "sweep/job/train.log").read_text()
        assert proc.returncode == 1  # the sweep says it was refused: in its own folder, never the live run's
        assert "in use by a training" in (tmp_path / "sweep/.refused/0").read_text()
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=120)
    assert live.returncode == 128 + signal.SIGTERM
