import pytest

from mindiff.config import ConfigError
from mindiff.tracking import choose_mode


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return monkeypatch


def test_auto_is_offline_without_a_key_and_online_with_one(no_wandb_env, tmp_path):
    assert choose_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert choose_mode("auto") == "online"
    (tmp_path / "netrc").unlink()
    no_wandb_env.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_mode("auto") == "online"


def test_auto_follows_wandb_mode_and_explicit_modes_win(no_wandb_env):
    no_wandb_env.setenv("WANDB_MODE", "disabled")
    assert choose_mode("auto") == "disabled"
    assert choose_mode("offline") == "offline"


def test_a_bad_wandb_mode_variable_is_a_clear_error(no_wandb_env):
    no_wandb_env.setenv("WANDB_MODE", "")
    with pytest.raises(ConfigError, match="WANDB_MODE='' is not a W&B mode"):
        choose_mode("auto")
