import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"

# A model and data small enough that a CLI run takes seconds on 2 CPU cores.
# Decode caches and evaluation classifiers of this test session stay out of the user's ~/.cache.
os.environ["MINDIFF_CACHE"] = tempfile.mkdtemp(prefix="mindiff-test-cache-")
# pytest-xdist runs one worker per core: each worker's runs get their share of the cores, not all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

TINY_RUN = ["dataset=tiny", "trainer.batch_size=64", "optim.warmup_steps=5", "trainer.sample_grid=4",
            "trainer.device=cpu", "logger.mode=offline", "eval.n=64", "eval.classifier_epochs=2"]
TINY_MLP2 = ["model.hidden_dim=64", "model.class_embed_dim=8"]
TINY = TINY_RUN + TINY_MLP2
# A tiny autoencoder and latent denoiser, and settings that make a run one quiet epoch.
AE = ["model=autoencoder", "schedule=reconstruction", "model.hidden=[8,16,16]", "model.latent_channels=4",
      "model.groups=4", "schedule.eval_images=64"]
LDM = ["model=conv_adaln", "model.hidden=32", "model.blocks=2", "model.class_embed_dim=8", "model.groups=8",
       "schedule.sample_steps=4"]
QUIET = ["logger.mode=disabled", "eval.every=null", "trainer.epochs=1"]
# The command lines of the genuine runs below (each also gets hydra.run.dir=<name>).
GENUINE = {"mlp2": [*TINY, *QUIET], "ae": [*TINY_RUN, *AE, *QUIET], "ldm": [*TINY_RUN, *LDM, *QUIET]}


def run_cli(module: str, *args: str, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m module args` in `cwd`; past `timeout` seconds it is killed and the test fails (a hang is a
    failure of the test, not of CI)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def train_cli(tmp_path):
    def run(*overrides: str, run_dir: str = "run", check: bool = True, timeout: float = 300):
        """A tiny run; overrides that pick another model (model=...) drop the mlp2 knobs."""
        base = TINY_RUN if any(o.startswith("model=") for o in overrides) else TINY
        return run_cli("mindiff.train", *base, f"hydra.run.dir={run_dir}", *overrides, cwd=tmp_path, check=check,
                       timeout=timeout)
    return run


@pytest.fixture(scope="session")
def genuine(tmp_path_factory) -> Path:
    """Genuine checkpoints to tamper with, at <root>/<name>/checkpoints/last.pt: a pixel denoiser (mlp2), an
    autoencoder (ae) and a latent denoiser on that autoencoder (ldm)."""
    root = tmp_path_factory.mktemp("genuine")
    run_cli("mindiff.train", *GENUINE["mlp2"], "hydra.run.dir=mlp2", cwd=root)
    run_cli("mindiff.train", *GENUINE["ae"], "hydra.run.dir=ae", cwd=root)
    run_cli("mindiff.train", *GENUINE["ldm"], f"autoencoder.ckpt={root / 'ae/checkpoints/last.pt'}",
            "hydra.run.dir=ldm", cwd=root)
    return root
