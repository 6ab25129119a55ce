"""What trainer.cuda_graph captures must never read the device back on the host (`.item()`, a tensor's
truth value, a tensor passed where a number is expected) nor copy host memory to the device: during
capture either one is an error. Without a GPU this is checked on the meta device, where tensors hold
no data, so any read back fails; a dispatch mode records the host-to-device copies. Each objective's
real training step (`Run.eager_step`) runs there, with a capturable optimizer, an EMA, flips and
label dropout, the step's every random draw included."""

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mindiff.data import ImageSet, PixelBatches
from mindiff.models.autoencoder import Autoencoder
from mindiff.models.conv_adaln import ConvAdaLN
from mindiff.models.mlp2 import MLP2
from mindiff.objectives import AlphaBlend, LatentBatches, Reconstruction
from mindiff.optim import Optimizer
from mindiff.trainer import Run

META = torch.device("meta")


class Uncapturable(TorchDispatchMode):
    """Records the ops a CUDA graph could not capture."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.found.append("a device value read on the host (.item() or a tensor's truth value)")
        elif func is torch.ops.aten._to_copy.default:
            target = kwargs.get("device")
            self.copy(args[0], torch.device(target) if target is not None else args[0].device)
        elif func is torch.ops.aten.copy_.default:
            self.copy(args[1], args[0].device)
        return func(*args, **kwargs)

    def copy(self, source: torch.Tensor, target: torch.device) -> None:
        if source.device.type == "cpu" and target.type == "meta":
            self.found.append(f"a host-to-device copy of a {tuple(source.shape)} tensor")


def pixels(channels: int, size: int) -> ImageSet:
    return ImageSet(torch.zeros(64, channels, size, size, dtype=torch.uint8),
                    torch.arange(64) % 10).to(META)


CASES = {
    "mnist_toy": lambda: (AlphaBlend(label_dropout=0.1), MLP2((1, 28, 28), hidden_dim=32, class_embed_dim=8,
                                                                classes=11), PixelBatches(pixels(1, 28), hflip=True)),
    "cifar_ae": lambda: (Reconstruction(), Autoencoder(hidden=(8, 16), latent_channels=4, groups=4),
                         PixelBatches(pixels(3, 16), hflip=True)),
    "cifar_ldm": lambda: (AlphaBlend(label_dropout=0.1, t_sampling="logit_normal"),
                          ConvAdaLN(8, hidden=32, blocks=2, class_embed_dim=8, classes=11, groups=8),
                          LatentBatches(torch.zeros(2, 64, 8, 8, 8, device=META), torch.arange(64, device=META) % 10)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ema", [None, 0.999])
def test_the_training_step_reads_nothing_back_and_copies_nothing_in(case, ema):
    objective, model, inputs = CASES[case]()
    model.to(META)
    optimizer = Optimizer(model.parameters(), total_steps=100, lr=1e-3, warmup_steps=5, decay="cosine", ema=ema,
                          capturable=True)
    run = SimpleNamespace(inputs=inputs, amp=contextlib.nullcontext(), objective=objective, train_model=model,
                          shard=slice(None), optimizer=optimizer)
    idx = torch.arange(16, device=META)
    for _ in range(2):  # the first step creates the optimizer's state; capture happens later
        with Uncapturable() as mode:
            loss, terms = Run.eager_step(run, idx)
        assert mode.found == [] and loss.device == META and all(t.device == META for t in terms.values())


def test_the_check_finds_a_read_back_and_a_copy_in():
    with Uncapturable() as mode:
        x = torch.ones(3, device=META) + torch.ones(3).to(META)
        with pytest.raises(Exception):
            bool(x.sum() > 0)
    assert mode.found == ["a host-to-device copy of a (3,) tensor",
                          "a device value read on the host (.item() or a tensor's truth value)"]
