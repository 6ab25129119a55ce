"""Named sweeps, launchers, the end-of-sweep summary, and the local comparison."""

import csv

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import mindiff.config  # noqa: F401
from mindiff.checkpoint import load_checkpoint
import mindiff.build  # noqa: F401  (registers the latent-shape resolvers, as the train CLI does)
from mindiff.config import validate

from conftest import CONF, REPO, TINY, run_cli

SWEEPS = REPO / "sweeps"


def compose_sweep(name, *overrides):
    """As `python -m mindiff.train -cd sweeps -cn NAME` composes it: sweeps/ first, then conf/."""
    if name == "config":
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=name, return_hydra_config=True, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(config_name=name, return_hydra_config=True,
                       overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides])


@pytest.mark.parametrize("sweep", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
def test_every_sweep_file_composes_with_its_name_and_params(sweep):
    cfg = compose_sweep(sweep)
    assert cfg.name == sweep
    validate(cfg)
    params = cfg.hydra.sweeper.params or {}
    assert params or cfg.trainer.sample_epochs, "a sweep file sweeps something or keeps grids at chosen epochs"


def test_sweep_files_fix_what_they_compare():
    assert compose_sweep("mnist_lr").hydra.sweeper.params["optim.lr"] == "5e-5,2e-3,5e-3"
    assert compose_sweep("cifar_ae_size").model._target_.endswith("Autoencoder")
    progress = compose_sweep("cifar_ldm_progress")
    assert list(progress.trainer.sample_epochs) == [100, 500, 1000, 5000] and progress.trainer.epochs == 5000
    assert progress.model._target_.endswith("ConvAdaLN")
    quality = compose_sweep("mnist_quality")
    assert quality.schedule.label_dropout == 0.1 and quality.trainer.precision == "bf16"  # experiment=mnist_quality
    assert set(quality.hydra.sweeper.params) == {"schedule.guidance", "schedule.sampler", "optim.ema"}


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("wandb/*.yaml")), ids=lambda p: p.name)
def test_wandb_sweep_parameters_are_valid_overrides(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["command"][-1] == "${args_no_hyphens}" and "mindiff.train" in spec["command"]
    for key, values in spec["parameters"].items():
        for value in values.get("values", [values.get("value")]):
            cfg = compose_sweep("config", f"{key}={value}")
            validate(cfg)
            assert str(OmegaConf.select(cfg, key)).replace(" ", "").replace("'", "") == str(value).replace(" ", "")


def test_slurm_and_joblib_launchers_compose():
    slurm = compose_sweep("config", "hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.gpus_per_node == 1
    assert compose_sweep("config", "hydra/launcher=joblib").hydra.launcher._target_.endswith("JoblibLauncher")


TINY_SWEEP = [*TINY, "trainer.epochs=1", "logger.mode=offline"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_file_runs_one_dir_per_combination_and_a_rerun_skips_them(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    args = ["-m", "-cd", str(SWEEPS), "-cn", "mnist_lr", *TINY_SWEEP, "optim.lr=1e-3,4e-3", *extra]
    proc = run_cli("mindiff.train", *args, cwd=tmp_path)
    runs = sorted(p for p in (tmp_path / "multirun" / "mnist_lr").iterdir() if (p / "metrics.json").is_file())
    assert [r.name.split("_")[0] for r in runs] == ["0", "1"]
    names = []
    for r in runs:
        assert load_checkpoint(r / "checkpoints" / "last.pt")["epoch"] == 1
        record = next((r / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert b"mnist_lr" in record and b"mnist_lr-mnist_lr" not in record  # the W&B group: the sweep's name
        names.append(r.name.split("_", 1)[1])
        assert names[-1].encode() in record
    assert len(set(names)) == 2 and "2 of 2 runs ok" in proc.stdout + proc.stderr
    again = run_cli("mindiff.train", *args, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("already finished") == 2


def test_a_failing_run_does_not_stop_the_others_and_the_sweep_says_why(tmp_path):
    # 32 training images cannot fill a batch of 64: found once the data is read, so that job alone fails
    proc = run_cli("mindiff.train", "-m", *TINY_SWEEP, "dataset.train_size=32,512", "hydra.sweep.dir=sw",
                   cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "1 of 2 runs ok" in out and "is larger than the dataset (32 images)" in out
    ok = [p for p in (tmp_path / "sw").iterdir() if (p / "metrics.json").is_file()]
    failed = [p for p in (tmp_path / "sw").iterdir() if (p / "FAILED").is_file()]
    assert len(ok) == 1 and len(failed) == 1 and "dataset.train_size=512" in ok[0].name


@pytest.mark.parametrize("axis,message", [
    ("optim.lr=1e-3,-1", "optim.lr=-1.0 must be > 0"),
    ("trainer.batch_size=64,abc", "trainer.batch_size=abc Value 'abc' of type 'str' could not be converted"),
    ("optim.lr=1e-3 trainer.sample_epochs=[2],[-1]", "trainer.sample_epochs has -1"),
])
def test_every_value_of_every_sweep_axis_is_checked_before_any_job(tmp_path, axis, message):
    proc = run_cli("mindiff.train", "-m", *TINY_SWEEP, *axis.split(), "hydra.sweep.dir=sw", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


def test_compare_writes_a_side_by_side_image_and_tables(tmp_path):
    run_cli("mindiff.train", "-m", *TINY_SWEEP, "trainer.epochs=2", "logger.mode=disabled", "optim.lr=1e-3,4e-3",
            "hydra.sweep.dir=sw", cwd=tmp_path)
    proc = run_cli("mindiff.compare", "sw", cwd=tmp_path)
    assert "| optim.lr=0.001 |" in proc.stdout and "| optim.lr=0.004 |" in proc.stdout
    image = Image.open(tmp_path / "sw" / "compare.png")
    grid = Image.open(next((tmp_path / "sw").glob("0_*/samples/epoch_0002.png")))
    assert image.width > 2 * grid.width and image.height > grid.height
    with open(tmp_path / "sw" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["overrides"] for r in rows] == ["optim.lr=0.001", "optim.lr=0.004"]
    assert all(float(r["final_loss"]) > 0 and r["epochs"] == "2" for r in rows)
    run_cli("mindiff.compare", f"dir={next((tmp_path / 'sw').glob('0_*'))}", "epochs=[1,2]", "out=progress",
            cwd=tmp_path)
    assert Image.open(tmp_path / "progress.png").width > 2 * grid.width
    losses = sorted(float(r["final_loss"]) for r in rows)
    for ascending, expected in (("true", losses), ("false", losses[::-1])):
        run_cli("mindiff.compare", "sw", "rank_by=final_loss", f"ascending={ascending}", "out=ranked", cwd=tmp_path)
        with open(tmp_path / "ranked.csv") as f:
            assert [float(r["final_loss"]) for r in csv.DictReader(f)] == expected
    proc = run_cli("mindiff.compare", "sw", "rank_by=eval/nothing", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "rank_by=eval/nothing: no run" in proc.stderr


def test_compare_on_a_missing_folder_is_one_line(tmp_path):
    proc = run_cli("mindiff.compare", "nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
