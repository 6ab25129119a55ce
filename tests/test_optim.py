"""The EMA knob: a warmed-up exponential moving average of the trained weights, swapped in to sample,
evaluate and save, and the training weights put back bit-exactly."""

import pytest
import torch

from mindiff.optim import Optimizer


@pytest.mark.parametrize("algorithm", ["schedulefree_adamw", "adamw"])
def test_ema_averages_the_trained_weights_and_is_swapped_in_and_out_exactly(algorithm):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = Optimizer(model.parameters(), total_steps=20, algorithm=algorithm, lr=0.05, ema=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 21):
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with opt.averaged(model) as train_weights:
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)
        assert all(torch.equal(train_weights[k], trained[k]) for k in trained)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_ema_state_round_trips():
    model = torch.nn.Linear(4, 3)
    opt = Optimizer(model.parameters(), total_steps=5, ema=0.99)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    again = Optimizer(model.parameters(), total_steps=5, ema=0.99)
    again.load_state_dict(opt.state_dict())
    assert again.ema_steps == 1 and all(torch.equal(a, b) for a, b in zip(again.ema, opt.ema))
