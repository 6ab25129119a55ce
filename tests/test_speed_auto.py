"""trainer.speed=auto picks the knobs per device kind and writes them into the run's config;
trainer.cuda_graph refuses, before any work, a run it cannot capture. The captured step itself
needs a GPU: its test runs where CUDA is, and is skipped elsewhere."""

import pytest
import torch

from mindiff.config import ConfigError, missing_cpp_compiler
from mindiff.graph_step import GraphedStep
from mindiff.speed import apply_speed, choose_knobs

from conftest import run_cli
from test_config import compose_cfg

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.skipif(missing_cpp_compiler() is not None, reason="the CPU profile compiles: needs a C++ compiler")
def test_on_a_cpu_auto_turns_on_the_compiled_knobs_and_never_a_graph():
    cfg = compose_cfg("trainer.speed=auto")
    apply_speed(cfg, CPU, world=1)
    assert (cfg.optim.fused, cfg.trainer.compile, cfg.trainer.cuda_graph) == (True, True, False)


def test_on_a_gpu_auto_captures_the_step_and_leaves_the_compiled_knobs_off():
    assert choose_knobs(CUDA, 1, "schedulefree_adamw") == {"optim.fused": False, "trainer.compile": False,
                                                          "trainer.cuda_graph": True}
    assert choose_knobs(CUDA, 2, "schedulefree_adamw")["trainer.cuda_graph"] is False  # DDP: one process per graph
    assert choose_knobs(CUDA, 1, "adamw")["trainer.cuda_graph"] is False


def test_speed_manual_leaves_every_knob_as_set():
    cfg = compose_cfg("optim.fused=true")
    apply_speed(cfg, CPU, world=1)
    assert (cfg.optim.fused, cfg.trainer.compile, cfg.trainer.cuda_graph) == (True, False, False)


@pytest.mark.parametrize("overrides, device, world, message", [
    (["trainer.cuda_graph=true"], CPU, 1, "trainer.cuda_graph=true needs a CUDA GPU"),
    (["trainer.cuda_graph=true"], CUDA, 2, "with 2 processes set trainer.cuda_graph=false"),
    (["trainer.cuda_graph=true", "optim=adamw"], CUDA, 1, "needs optim.algorithm=schedulefree_adamw"),
])
def test_a_step_that_cannot_be_captured_is_refused(overrides, device, world, message):
    with pytest.raises(ConfigError, match=message):
        apply_speed(compose_cfg(*overrides), device, world)


def test_the_cli_refuses_cuda_graph_on_a_cpu_in_one_line_before_any_work(train_cli, tmp_path):
    proc = train_cli("trainer.cuda_graph=true", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mindiff.train: error: trainer.cuda_graph=true needs a CUDA GPU")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_graph_is_for_cuda_devices_only():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedStep(lambda idx: (idx.sum(), {}), CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a GPU")
@pytest.mark.parametrize("extra", [[], ["optim.ema=0.99", "trainer.precision=bf16"]])
def test_on_a_gpu_the_captured_run_trains_like_the_eager_one(tmp_path, extra):
    from conftest import TINY
    from mindiff.checkpoint import load_checkpoint
    losses = {}
    for graph in ("false", "true"):
        run_cli("mindiff.train", *[o for o in TINY if o != "trainer.device=cpu"], "trainer.device=cuda",
                "trainer.epochs=3", f"trainer.cuda_graph={graph}", "eval.every=null", "logger.mode=disabled",
                f"hydra.run.dir={graph}", *extra, cwd=tmp_path)
        state = load_checkpoint(tmp_path / graph / "checkpoints" / "last.pt")
        assert state["optimizer"]["optimizer"]["param_groups"][0]["k"] == state["step"] == 24
        losses[graph] = state["metrics"]["final_loss"]
    assert losses["true"] == pytest.approx(losses["false"], rel=0.1)
