import torch
import torch.nn as nn
from hydra.utils import instantiate

from mindiff.models.mlp2 import MLP2

from test_config import compose_cfg


def test_mlp2_defaults_are_two_linear_layers_and_7_4M_parameters():
    cfg = compose_cfg()
    model = instantiate(cfg.model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    # Linear(784+1+239 -> 4096) + LayerNorm(4096) + Linear(4096 -> 784) + Embedding(10 + null, 239) + LayerNorm(239)
    expected = (1024 * 4096 + 4096) + 2 * 4096 + (4096 * 784 + 784) + 11 * 239 + 2 * 239
    assert sum(p.numel() for p in model.parameters()) == expected == 7_421_747


def test_mlp2_starts_at_zero_and_uses_the_class():
    model = MLP2(image_shape=(1, 12, 12), hidden_dim=32, class_embed_dim=8, classes=10)
    x, t = torch.randn(4, 1, 12, 12), torch.rand(4)
    y = torch.tensor([0, 1, 2, 3])
    assert torch.equal(model(x, t, y), torch.zeros_like(x))  # last layer zero-initialised
    nn.init.normal_(model.fc2.weight)
    out_a, out_b = model(x, t, y), model(x, t, (y + 1) % 10)
    assert out_a.shape == x.shape and not torch.allclose(out_a, out_b)


def test_mlp2_unconditional_has_no_embedding_and_ignores_labels():
    model = MLP2(image_shape=(1, 12, 12), hidden_dim=32, classes=None)
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    assert model.fc1.in_features == 144 + 1
    nn.init.normal_(model.fc2.weight)
    x, t = torch.randn(2, 1, 12, 12), torch.rand(2)
    assert torch.equal(model(x, t, None), model(x, t, torch.tensor([3, 4])))
