"""Every config group option composes; the schemas and `validate` reject bad values by name."""

import dataclasses

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf

import mindiff.build  # noqa: F401  (registers the schemas, and the resolvers the model YAMLs use)
import mindiff.build  # noqa: F401  (registers the latent-shape resolvers, as the train CLI does)
from mindiff.config import SCHEMAS, ConfigError, validate

from conftest import CONF

GROUPS = ["dataset", "model", "schedule", "optim", "trainer", "eval", "logger", "experiment"]
REQUIRED = {"image_folder": {"dataset.root"}}  # keys an option leaves ??? on purpose: the user must set them


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_cfg(f"{group}={option}")
    OmegaConf.resolve(cfg)
    assert set(OmegaConf.missing_keys(cfg)) == REQUIRED.get(option, set()), "a key no YAML sets"
    for key in REQUIRED.get(option, ()):
        with pytest.raises(ConfigError, match=f"{key} has no value"):
            validate(cfg)
        OmegaConf.update(cfg, key, "somewhere")
    validate(cfg)
    if group != "experiment":
        assert OmegaConf.select(cfg, group) is not None


def test_defaults_are_the_reference_toy():
    cfg = compose_cfg()
    assert cfg.model.hidden_dim == 4096 and cfg.model.class_embed_dim == 239 and cfg.model.classes == 10
    assert cfg.trainer.batch_size == 512 and cfg.optim.algorithm == "schedulefree_adamw"
    assert cfg.optim.lr == 2e-3 and cfg.optim.weight_decay == 0.01 and cfg.optim.warmup_steps == 1000
    assert cfg.schedule.t_sampling == "uniform" and cfg.schedule.sample_steps == 32
    assert cfg.trainer.sample_grid == 16


@pytest.mark.parametrize("override,key", [
    ("trainer.epochs=abc", "epochs"),
    ("optim.lr=fast", "lr"),
    ("model.hidden_dim=1.5", "hidden_dim"),
    ("schedule.sample_steps=many", "sample_steps"),
    ("dataset.download=maybe", "download"),
    ("logger.tags=3", "tags"),
    ("trainer.epochs=null", "epochs"),
])
def test_schema_rejects_wrong_types_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(override)
    assert key in str(e.value) or key in str(e.value.__cause__)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="trainer.epoch"):
        compose_cfg("trainer.epoch=3")


@pytest.mark.parametrize("override,message", [
    ("optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("trainer.batch_size=0", "trainer.batch_size=0 must be > 0"),
    ("trainer.epochs=-1", "trainer.epochs=-1 must be > 0"),
    ("schedule.sample_steps=0", "schedule.sample_steps=0 must be > 0"),
    ("trainer.precision=fp16", "choose one of fp32, bf16"),
    ("logger.mode=cloud", "choose one of auto, online, offline, disabled"),
    ("schedule.t_sampling=beta", "choose one of uniform, logit_normal"),
    ("schedule.loss_terms=[target,v]", "each term must be one of target, eps, x0, ssim"),
])
def test_validate_rejects_impossible_values(override, message):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value)


@pytest.mark.parametrize("name,schema", [(n, s) for nodes in SCHEMAS.values() for n, s in nodes.items()])
def test_schemas_hold_types_only(name, schema):
    """One home per default: a value stated in a schema too could disagree with the YAML's (and never take effect)."""
    for f in dataclasses.fields(schema):
        assert f.default is MISSING and f.default_factory is dataclasses.MISSING, \
            f"{name}.{f.name} has a default in mindiff/config.py; its value belongs in the YAML option(s) only"


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in SCHEMAS for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_option_sets_every_key_of_its_schema(group, option):
    """Each option's YAML is complete: a user finds every knob's value by reading that one file."""
    spec = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
    schemas = [d for d in spec.get("defaults", []) if isinstance(d, str) and d in SCHEMAS[group]]
    assert len(schemas) == 1, f"conf/{group}/{option}.yaml extends none (or several) of {', '.join(SCHEMAS[group])}"
    unset = [f.name for f in dataclasses.fields(SCHEMAS[group][schemas[0]]) if f.name not in spec]
    assert not unset, f"conf/{group}/{option}.yaml does not set {', '.join(f'{group}.{k}' for k in unset)}"


@pytest.mark.parametrize("key", ["trainer.max_steps", "trainer.keep_last", "trainer.resume", "eval.every",
                                 "eval.inception_weights", "logger.entity", "logger.group", "model.classes"])
def test_optional_keys_accept_null(key):
    assert OmegaConf.select(compose_cfg(f"{key}=null"), key) is None
    assert compose_cfg("dataset=image_folder", "dataset.root=somewhere").dataset.test_root is None
