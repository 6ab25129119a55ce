import torch

from mindiff.objectives import AlphaBlend


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
    assert set(terms) == {"target", "eps", "x0"}
    assert loss.item() < 1e-6


def test_loss_terms_are_selectable_and_implied_terms_are_weighted_by_t():
    torch.manual_seed(0)
    x0 = torch.randn(256, 1, 2, 2)
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    torch.manual_seed(1)
    only_target, terms = AlphaBlend(loss_terms=["target"]).loss(zero, x0, None)
    assert set(terms) == {"target"}
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
