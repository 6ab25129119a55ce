"""The capturable optimizer (trainer.cuda_graph's): its scalars live on the device, and it steps like the
schedulefree library, writes the same checkpoints and continues from the library's."""

import copy

import pytest
import schedulefree
import torch

from mindiff.optim import Optimizer

SETTINGS = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.05, warmup_steps=10)


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def train_step(net: torch.nn.Module, opt, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    x, target = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
    (net(x) - target).square().mean().backward()
    opt.step()
    opt.zero_grad()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, tol: float = 1e-6) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=tol, atol=tol)


def test_it_steps_like_the_library_over_many_steps_and_averages_alike():
    ref_net, net = model(), model()
    ref = schedulefree.AdamWScheduleFree(ref_net.parameters(), **SETTINGS)
    ref.train()
    opt = Optimizer(net.parameters(), total_steps=300, capturable=True, **SETTINGS)
    for step in range(300):
        train_step(ref_net, ref, step)
        train_step(net, opt, step)
    assert_same_weights(ref_net, net)
    assert not any(torch.equal(p, q) for p, q in zip(model().parameters(), net.parameters()))  # it trained
    ref.eval()
    with opt.averaged(net):
        assert_same_weights(ref_net, net)


def counters(state: dict) -> list:
    """Every group's counters, flat (pytest.approx compares flat sequences only, since pytest 9)."""
    return [g[key] for g in state["optimizer"]["param_groups"] for key in ("k", "lr", "lr_max", "weight_sum")]


@pytest.mark.parametrize("ema", [None, 0.99])
def test_with_a_cosine_schedule_it_matches_the_host_path_and_their_checkpoints_interchange(ema):
    settings = dict(total_steps=120, decay="cosine", min_lr=1e-3, ema=ema, **SETTINGS)
    host_net, net = model(), model()
    host, captured = Optimizer(host_net.parameters(), **settings), Optimizer(net.parameters(), capturable=True,
                                                                             **settings)
    for step in range(60):
        train_step(host_net, host, step)
        train_step(net, captured, step)
    assert_same_weights(host_net, net)
    saved_host, saved = host.state_dict(), captured.state_dict()
    assert counters(saved) == pytest.approx(counters(saved_host), rel=1e-12)
    assert saved["lr_schedule"]["last_epoch"] == saved_host["lr_schedule"]["last_epoch"] == 60
    assert saved.get("ema_steps") == saved_host.get("ema_steps")
    # each continues from the other's checkpoint, and both follow the schedule to its end
    host_net2, net2 = copy.deepcopy(net), copy.deepcopy(host_net)
    host2 = Optimizer(host_net2.parameters(), **settings)
    host2.load_state_dict(copy.deepcopy(saved))
    captured2 = Optimizer(net2.parameters(), capturable=True, **settings)
    captured2.load_state_dict(copy.deepcopy(saved_host))
    for step in range(60, 120):
        for n, o in ((host_net, host), (net, captured), (host_net2, host2), (net2, captured2)):
            train_step(n, o, step)
    for other in (net, host_net2, net2):
        assert_same_weights(host_net, other)
    assert captured.lr_at(121) == pytest.approx(host.opt.param_groups[0]["lr"]) == pytest.approx(1e-3)
    assert captured.lr_at(1) == host.lr_at(1) == pytest.approx(1e-2)
    if ema:
        with host.averaged(host_net), captured2.averaged(net2):
            assert_same_weights(host_net, net2)


def test_its_step_reads_nothing_back_from_the_device():
    """On the host every counter is a tensor the step updates in place; the group's floats stay where
    they were until a checkpoint asks for them (on a GPU, reading them would be a sync per step)."""
    net = model()
    opt = Optimizer(net.parameters(), total_steps=10, capturable=True, **SETTINGS)
    for step in range(3):
        train_step(net, opt, step)
    group = opt.opt.param_groups[0]
    assert group["k"] == 0 and opt.steps_done.item() == 3
    assert opt.state_dict()["optimizer"]["param_groups"][0]["k"] == 3


def test_adamw_cannot_be_captured():
    with pytest.raises(ValueError, match="schedulefree_adamw"):
        Optimizer(model().parameters(), total_steps=10, algorithm="adamw", capturable=True)
