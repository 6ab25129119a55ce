"""Latents are encoded once per (autoencoder weights, data, flips, precision) and read back by later runs."""

import logging

import pytest
import torch

from mindiff.build import objective_for
from mindiff.data import tiny
from mindiff.latent_cache import cached_inputs, latent_key
from mindiff.models.autoencoder import Autoencoder

AE_CONFIG = {"_target_": "mindiff.models.autoencoder.Autoencoder", "in_channels": 1, "hidden": [8, 16, 16],
             "latent_channels": 4, "groups": 4}
SCHEDULE = {"_target_": "mindiff.objectives.AlphaBlend", "sample_steps": 4}


def autoencoder(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = Autoencoder(**{k: v for k, v in AE_CONFIG.items() if k != "_target_"})
    return {"config": {"model": AE_CONFIG}, "model": model.state_dict()}


class Counted:
    """The latent objective, counting how often it encodes the dataset."""

    def __init__(self, ae: dict):
        self.objective, self.encoded = objective_for(SCHEDULE, ae), 0

    def inputs(self, data, device):
        self.encoded += 1
        return self.objective.inputs(data, device)

    def sample_shape(self, image_shape):
        return self.objective.sample_shape(image_shape)


def test_a_second_run_reads_the_latents_the_first_one_encoded(tmp_path):
    ae, data = autoencoder(), tiny(train_size=64, test_size=8, hflip=True)
    first, second = Counted(ae), Counted(ae)
    encoded = cached_inputs(first, data, torch.device("cpu"), ae, str(tmp_path), "fp32")
    read = cached_inputs(second, data, torch.device("cpu"), ae, str(tmp_path), "fp32")
    assert (first.encoded, second.encoded) == (1, 0)
    assert len(list(tmp_path.glob("latents-*.pt"))) == 1
    assert read.latents.shape == (2, 64, 4, 3, 3)  # both views of every image
    assert torch.equal(read.latents, encoded.latents) and torch.equal(read.labels, encoded.labels)


def test_the_key_changes_with_the_weights_the_data_the_flips_and_the_precision():
    ae, data = autoencoder(), tiny(train_size=64, test_size=8)
    key = latent_key(ae, data, "fp32")
    nudged = {**ae, "model": {k: v.clone() for k, v in ae["model"].items()}}
    next(iter(nudged["model"].values())).view(-1)[0] += 1e-3
    assert latent_key(nudged, data, "fp32") != key
    assert latent_key(ae, tiny(train_size=64, test_size=8, seed=1), "fp32") != key
    assert latent_key(ae, tiny(train_size=64, test_size=8, hflip=True), "fp32") != key
    assert latent_key(ae, data, "bf16") != key
    assert latent_key(autoencoder(), tiny(train_size=64, test_size=8), "fp32") == key  # a function of content only


@pytest.mark.parametrize("damage", ["torn", "wrong shape"])
def test_a_damaged_cache_file_is_encoded_again_and_replaced(tmp_path, caplog, damage):
    ae, data = autoencoder(), tiny(train_size=64, test_size=8)
    path = tmp_path / f"latents-{latent_key(ae, data, 'fp32')}.pt"
    if damage == "torn":
        path.write_bytes(b"PK\x03\x04 not a whole file")
    else:
        torch.save({"latents": torch.zeros(1, 5, 4, 3, 3)}, path)
    objective = Counted(ae)
    with caplog.at_level(logging.WARNING, logger="mindiff.latent_cache"):
        inputs = cached_inputs(objective, data, torch.device("cpu"), ae, str(tmp_path), "fp32")
    assert objective.encoded == 1 and "encoding again" in caplog.text
    assert torch.equal(torch.load(path, weights_only=True)["latents"], inputs.latents)


def test_no_cache_folder_and_pixel_runs_write_nothing(tmp_path):
    ae, data = autoencoder(), tiny(train_size=64, test_size=8)
    objective = Counted(ae)
    cached_inputs(objective, data, torch.device("cpu"), ae, None, "fp32")
    pixels = objective_for(SCHEDULE)
    cached_inputs(pixels, data, torch.device("cpu"), None, str(tmp_path), "fp32")
    assert objective.encoded == 1 and not list(tmp_path.iterdir())
