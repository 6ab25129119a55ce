"""The speed knobs (optim.fused, trainer.compile) compute what the plain path computes."""

import copy

import schedulefree
import torch
import torch.nn.functional as F

from mindiff.checkpoint import load_checkpoint
from mindiff.models.mish import Mish
from mindiff.optim import FusedAdamWScheduleFree


def params(seed: int):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(64, 33), (64,), (16, 8, 3, 3)]]
    ps[-1].data = ps[-1].data.to(memory_format=torch.channels_last)  # not viewable as 1-D: the strided path
    return ps


def set_grads(ps, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(memory_format=torch.preserve_format if p.dim() < 4
                                                      else torch.channels_last)


def test_fused_schedule_free_steps_like_the_library_through_warmup_eval_and_a_state_dict():
    ref, fused = params(0), params(0)
    opt_ref = schedulefree.AdamWScheduleFree(ref, lr=1e-2, warmup_steps=4, weight_decay=0.05)
    opt_fused = FusedAdamWScheduleFree(fused, lr=1e-2, warmup_steps=4, weight_decay=0.05)
    for opt in (opt_ref, opt_fused):
        opt.train()
    for step in range(10):
        if step == 6:  # a library checkpoint continues in the fused optimizer
            opt_fused.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # as saved
            for p, q in zip(fused, ref):
                p.data.copy_(q)
        set_grads(ref, step), set_grads(fused, step)
        opt_ref.step(), opt_fused.step()
        for p, q in zip(ref, fused):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert opt_fused.param_groups[0]["k"] == opt_ref.param_groups[0]["k"] == 10
    opt_ref.eval(), opt_fused.eval()  # the averaged weights, used for sampling and saving
    for p, q in zip(ref, fused):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref[0], params(0)[0])


def test_mish_under_compile_is_torchs_mish_in_value_and_gradient():
    compiled = torch.compile(Mish(), dynamic=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        x = (torch.randn(4096) * 8).to(dtype).requires_grad_()
        want = F.mish(x)
        got = compiled(x)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        g_want, = torch.autograd.grad(want.float().sum(), x)
        g_got, = torch.autograd.grad(got.float().sum(), x)
        torch.testing.assert_close(g_got, g_want, rtol=tol, atol=tol)


def test_a_run_with_the_speed_knobs_learns_what_the_plain_run_learns(tmp_path, train_cli):
    train_cli("trainer.epochs=1", run_dir="plain")
    train_cli("trainer.epochs=1", "trainer.speed=auto", run_dir="tuned")  # on a CPU: optim.fused + trainer.compile
    plain, tuned = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("plain", "tuned"))
    assert tuned["step"] == plain["step"] == 8
    assert tuned["config"]["optim"]["fused"] and tuned["config"]["trainer"]["compile"]  # what auto chose, recorded
    assert plain["model"]["fc2.weight"].abs().sum() > 0  # zero-initialised: it trained
    for name, weight in plain["model"].items():
        torch.testing.assert_close(tuned["model"][name], weight, rtol=1e-3, atol=1e-4)


def test_compile_knobs_without_a_cpp_compiler_are_one_line_before_any_work(tmp_path, train_cli, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    proc = train_cli("trainer.compile=true", "optim.fused=true", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "trainer.compile=true and optim.fused=true compile CPU kernels, which needs a C++ compiler" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
