import torch

import pytest

from mindiff.models.class_embedding import NULL_CLASS, ClassEmbedding
from mindiff.models.mlp2 import MLP2
from mindiff.objectives import AlphaBlend, epoch_terms


class ToPoint(torch.nn.Module):
    """The exact v = x0 - eps for data that is a single point: v(x_t, t) = (x0 - x_t) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, y=None):
        return (self.x0 - x) / t.view(-1, 1, 1, 1)


def test_euler_sampler_follows_straight_paths_to_the_data():
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    noise = torch.randn(3, 1, 4, 4)
    out = AlphaBlend(sample_steps=7).sample(ToPoint(x0), noise, None)
    torch.testing.assert_close(out, x0.expand(3, -1, -1, -1), atol=1e-5, rtol=0)


def test_exact_prediction_gives_zero_loss_on_every_term():
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    torch.manual_seed(0)
    loss, terms = AlphaBlend().loss(ToPoint(x0), x0.expand(64, -1, -1, -1), None)
    assert set(terms) == {"target", "eps", "x0", "by_t"}
    assert loss.item() < 1e-6


def test_loss_terms_are_selectable_and_implied_terms_are_weighted_by_t():
    torch.manual_seed(0)
    x0 = torch.randn(256, 1, 2, 2)
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    torch.manual_seed(1)
    only_target, terms = AlphaBlend(loss_terms=["target"]).loss(zero, x0, None)
    assert set(terms) == {"target", "by_t"}
    torch.manual_seed(1)
    all_terms, terms = AlphaBlend().loss(zero, x0, None)
    # with v = 0 the implied eps is x_t and the implied x0 is x_t: nonzero, smaller than the target term
    assert all_terms > only_target and terms["eps"] < terms["target"] and terms["x0"] < terms["target"]


def test_logit_normal_t_concentrates_in_the_middle():
    torch.manual_seed(0)
    t = AlphaBlend(t_sampling="logit_normal").draw_t(20000, "cpu")
    u = AlphaBlend(t_sampling="uniform").draw_t(20000, "cpu")
    assert 0 < t.min() and t.max() < 1
    assert t.std() < u.std() * 0.8


def test_reconstruction_scores_a_near_perfect_model_high_and_pairs_inputs_with_outputs():
    from mindiff.data import tiny
    from mindiff.objectives import Reconstruction

    data = tiny(train_size=32, test_size=40)

    class Nearly(torch.nn.Module):
        def __init__(self, noise):
            super().__init__()
            self.noise, self.w = noise, torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t=None, y=None):
            return x + self.noise * torch.randn_like(x)

    objective = Reconstruction(eval_images=40)
    good, bad = objective.evaluate(Nearly(0.01), data), objective.evaluate(Nearly(0.5), data)
    assert good["psnr"] > 40 > bad["psnr"] and good["ssim"] > 0.95 > bad["ssim"]
    loss, terms = objective.loss(Nearly(0.0), to_unit(data.train.images[:8]))
    assert loss.item() < 1e-6 and set(terms) == {"mse", "ssim"}
    bank = objective.preview_bank(data, 4, torch.Generator().manual_seed(0), "cpu")
    grid = objective.preview(Nearly(0.0), bank)
    assert grid.shape == (16, 1, 12, 12) and torch.equal(grid[0::2], grid[1::2])


def to_unit(images):
    from mindiff.data import to_unit_range
    return to_unit_range(images)


# ---- classifier-free guidance, Heun, the loss per t ------------------------------------------------

def reference_euler(model, noise, y, steps):
    """The sampler as it was before guidance and Heun: p=0 and guidance=1 must reduce to it exactly."""
    ts = torch.linspace(1.0, 0.0, steps + 1)
    x = noise
    for i in range(steps):
        x = x + (ts[i] - ts[i + 1]) * model(x, ts[i].expand(len(x)), y).float()
    return x


def tiny_mlp2():
    torch.manual_seed(0)
    model = MLP2([1, 4, 4], hidden_dim=32, class_embed_dim=8, classes=10)
    torch.nn.init.normal_(model.fc2.weight)  # not the zero init: the model must depend on x, t and y
    return model.eval()


def test_no_dropout_and_guidance_1_reduce_to_the_reference_euler_sampler_exactly():
    model, noise, y = tiny_mlp2(), torch.randn(6, 1, 4, 4), torch.arange(6)
    out = AlphaBlend(sample_steps=5, label_dropout=0.0, guidance=1.0).sample(model, noise, y)
    assert torch.equal(out, reference_euler(model, noise, y, 5))
    x0 = torch.rand(16, 1, 4, 4)
    torch.manual_seed(3)
    plain, _ = AlphaBlend().loss(model, x0, torch.arange(16) % 10)
    torch.manual_seed(3)
    no_dropout, _ = AlphaBlend(label_dropout=0.0).loss(model, x0, torch.arange(16) % 10)
    assert torch.equal(plain, no_dropout)


def test_guidance_extrapolates_from_the_null_class_in_one_batched_call():
    model, x, y = tiny_mlp2(), torch.randn(4, 1, 4, 4), torch.tensor([1, 3, 5, 7])
    t = torch.tensor(0.4)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    guided = AlphaBlend(guidance=3.0).velocity(model, x, t, y)
    assert calls == [8]  # conditional and unconditional halves together
    v_class, v_null = model(x, t.expand(4), y), model(x, t.expand(4), torch.full_like(y, NULL_CLASS))
    torch.testing.assert_close(guided, v_null + 3.0 * (v_class - v_null))


def test_the_null_class_is_the_embeddings_extra_learned_row():
    embed = ClassEmbedding(10, 8)
    assert embed[0].weight.shape == (11, 8)
    torch.testing.assert_close(embed(torch.tensor([NULL_CLASS, 2])), embed(torch.tensor([10, 2])))


def test_label_dropout_replaces_about_that_share_of_labels_by_the_null_class():
    seen = []

    def model(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    torch.manual_seed(0)
    AlphaBlend(label_dropout=0.25).loss(model, torch.zeros(4000, 1, 2, 2), torch.arange(4000) % 10)
    share = (seen[0] == NULL_CLASS).float().mean().item()
    assert 0.22 < share < 0.28 and ((seen[0] == NULL_CLASS) | (seen[0] == torch.arange(4000) % 10)).all()


class LinearInT(torch.nn.Module):
    """v = a + b·t, whatever x: dx/dt = -v, so x(0) = x(1) + a + b/2 exactly."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t, y=None):
        return self.a + self.b * t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_heun_is_exact_on_a_field_linear_in_t_where_euler_is_not(steps):
    a, b, noise = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), torch.randn(5, 1, 2, 2)
    exact = noise + a + b / 2
    heun = AlphaBlend(sample_steps=steps, sampler="heun").sample(LinearInT(a, b), noise, None)
    torch.testing.assert_close(heun, exact, atol=1e-5, rtol=0)
    euler = AlphaBlend(sample_steps=steps, sampler="euler").sample(LinearInT(a, b), noise, None)
    assert (euler - exact).abs().max() > 1e-3


def test_the_loss_is_logged_per_term_and_per_tenth_of_t():
    def model(x, t, y):  # error grows with t: the bins must show it
        return torch.zeros_like(x) + t.view(-1, 1, 1, 1) * 10

    x0 = torch.zeros(2000, 1, 2, 2)
    torch.manual_seed(0)
    sums = {}
    for _ in range(2):
        _, terms = AlphaBlend(loss_terms=["target"]).loss(model, x0, None)
        sums = {k: sums.get(k, 0) + v for k, v in terms.items()}
    logged = epoch_terms(sums, steps=2)
    bins = [logged[f"loss_by_t/{i / 10:.1f}-{(i + 1) / 10:.1f}"] for i in range(10)]
    assert bins == sorted(bins) and bins[9] > 50 * bins[0]
    assert abs(logged["loss/target"] - (sums["target"] / 2).item()) < 1e-6
    counts = sums["by_t"][1]
    assert counts.sum().item() == 4000 and abs(sum(b * c for b, c in zip(bins, counts.tolist())) / 4000
                                               - logged["loss/target"]) < 1e-3 * logged["loss/target"]
