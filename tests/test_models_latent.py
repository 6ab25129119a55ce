import pytest
import torch
import torch.nn as nn

from mindiff.models.autoencoder import Autoencoder
from mindiff.models.conv_adaln import ConvAdaLN, ConvAdaNorm
from mindiff.models.mish import Mish


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv3x3(cin: int, cout: int) -> int:
    return 9 * cin * cout + cout


def conv_norm(cin: int, cout: int) -> int:  # Conv3x3 + GroupNorm
    return conv3x3(cin, cout) + 2 * cout


def test_autoencoder_defaults_have_575_627_parameters():
    model = Autoencoder()
    encoder = (conv_norm(3, 32) + conv_norm(32, 64) + conv_norm(64, 64) + conv_norm(64, 128)
               + conv_norm(128, 128) + conv3x3(128, 8))
    decoder = (conv_norm(8, 128) + conv_norm(128, 128) + conv_norm(128, 64) + conv_norm(64, 64)
               + conv_norm(64, 32) + conv3x3(32, 3))
    assert count(model.encoder) == encoder == 287_816
    assert count(model.decoder) == decoder == 287_811
    assert count(model) == 575_627
    assert 500_000 <= count(model) <= 600_000


def test_conv_adaln_defaults_have_10_6M_parameters():
    model = ConvAdaLN(in_channels=8, classes=10)
    cond = 11 * 256 + 2 * 256 + (257 * 256 + 256)  # Embedding (+ null class), LayerNorm, Linear(1 + 256 -> 256)
    block = 2 * 512 + 2 * conv3x3(256, 256) + (256 * 512 + 512)  # two GroupNorms, two convs, modulation
    expected = cond + conv3x3(8, 256) + 8 * block + 512 + conv3x3(256, 8)
    assert count(model) == expected == 10_609_160
    assert 10_400_000 <= count(model) <= 10_800_000


@pytest.mark.parametrize("height, width", [(32, 32), (64, 64), (16, 48)])
@torch.no_grad()
def test_autoencoder_shapes_and_factor(height, width):
    model = Autoencoder()
    assert model.factor == 4 and model.latent_channels == 8
    x = torch.randn(1, 3, height, width)
    z = model.encode(x)
    assert z.shape == (1, 8, height // 4, width // 4) == (1, *model.latent_shape((3, height, width)))
    assert model.decode(z).shape == x.shape


@torch.no_grad()
def test_autoencoder_forward_ignores_t_and_y():
    model = Autoencoder()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == x.shape and torch.equal(out, model.decode(model.encode(x)))
    assert torch.equal(out, model(x))


def test_autoencoder_latent_shape_of_large_and_bad_images():
    model = Autoencoder()
    assert model.latent_shape((3, 1024, 1024)) == (8, 256, 256)
    assert model.latent_shape((3, 32, 64)) == (8, 8, 16)
    with pytest.raises(ValueError, match="divisible"):
        model.latent_shape((3, 30, 32))


def test_autoencoder_latents_are_standardised_per_sample():
    model = Autoencoder()
    # samples at very different scales and offsets still come out at mean 0, std 1 each
    scale, offset = torch.tensor([0.1, 1.0, 5.0]).view(3, 1, 1, 1), torch.tensor([0.0, 2.0, -3.0]).view(3, 1, 1, 1)
    x = torch.randn(3, 3, 32, 32) * scale + offset
    z = model.encode(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-3)


def leaf_call_order(module: nn.Module, run) -> list:
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in module.modules()
             if not list(m.children())]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def test_conv_adanorm_block_runs_in_the_specified_order_and_starts_as_identity():
    block = ConvAdaNorm(channels=16, cond_dim=12, groups=4)
    x, c = torch.randn(2, 16, 8, 8), torch.randn(2, 12)
    calls = leaf_call_order(block, lambda: block(x, c))
    assert [type(m) for m in calls] == [nn.GroupNorm, nn.Conv2d, nn.Linear, Mish, nn.GroupNorm, nn.Conv2d]
    assert calls[2] is block.modulation and calls[2].out_features == 2 * 16
    assert torch.equal(block(x, c), x)
    # the zero-initialised modulation is the identity: once conv2 is random, the block is the unmodulated residual
    nn.init.normal_(block.conv2.weight)
    unmodulated = x + block.conv2(block.norm2(block.act(block.conv1(block.norm1(x)))))
    assert torch.allclose(block(x, c), unmodulated) and not torch.allclose(unmodulated, x)


def test_conv_adaln_head_is_mish_groupnorm_conv_and_starts_at_zero():
    model = ConvAdaLN(in_channels=4, hidden=32, blocks=2, class_embed_dim=8, classes=10, groups=8)
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    calls = leaf_call_order(model.head, lambda: model(x, t, y))
    assert [type(m) for m in calls] == [Mish, nn.GroupNorm, nn.Conv2d]
    assert len(model.blocks) == 2 and isinstance(model.blocks, nn.ModuleList)
    assert torch.equal(model(x, t, y), torch.zeros_like(x))


def randomise_zero_init(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                nn.init.normal_(p, std=0.1)


def test_conv_adaln_uses_the_class_and_the_time():
    torch.manual_seed(0)
    model = ConvAdaLN(in_channels=4, hidden=32, blocks=2, class_embed_dim=8, classes=10, groups=8)
    randomise_zero_init(model)
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    out = model(x, t, y)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, (y + 1) % 10))
    assert not torch.allclose(out, model(x, (t + 0.5) % 1, y))
    with pytest.raises(ValueError, match="class labels"):
        model(x, t)


def test_conv_adaln_unconditional_has_no_embedding_and_ignores_labels():
    model = ConvAdaLN(in_channels=4, hidden=32, blocks=2, classes=None, groups=8)
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    assert model.cond[0].in_features == 1
    randomise_zero_init(model)
    x, t = torch.randn(2, 4, 16, 8), torch.rand(2)
    out = model(x, t)
    assert out.shape == x.shape and out.abs().sum() > 0
    assert torch.equal(out, model(x, t, torch.tensor([3, 4])))
