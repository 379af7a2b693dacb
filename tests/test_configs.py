"""Every YAML preset in configs/ loads and validates; the quickstart YAML mirrors the code."""

from pathlib import Path

import pytest
import yaml

import lmforge
from lmforge.recipes import align, finetune, pretrain
from lmforge.recipes import eval as eval_recipe
from lmforge.recipes.quickstart import QUICKSTART

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def check_pretrain(path):
    cfg = pretrain.load_config(path, [])
    cfg.train.validate()
    assert cfg.model.n_layer > 0 and cfg.data.seq_len <= cfg.model.max_seq_len


def check_finetune(path):
    from lmforge import peft

    cfg = finetune.load_config(path, [])
    cfg.validate()
    cfg.train.validate()
    peft.build(cfg.method, cfg.delta)  # the delta fields are the method's own


def check_eval(path):
    eval_recipe.load_config(path, []).validate()


def check_align(path):
    from lmforge import peft

    cfg = align.load_config(path, [])
    cfg.validate()
    cfg.train.validate()
    if cfg.delta_method != "full":
        peft.build(cfg.delta_method, cfg.delta)
    if cfg.method in ("ppo", "grpo"):
        assert cfg.rollout.steps_per_rollout(cfg.train.batch_size, cfg.train.grad_accum) >= 1


KINDS = {"pretrain": check_pretrain, "quickstart": check_pretrain}
KINDS |= {"finetune": check_finetune, "eval": check_eval, "align": check_align}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    kind = path.stem.split("-")[0]
    assert kind in KINDS, f"{path.name}: name configs <kind>-...yaml, kind in {sorted(KINDS)}"
    KINDS[kind](path)


def test_quickstart_yaml_mirrors_the_recipe():
    data = yaml.safe_load((Path(__file__).parent.parent / "configs/quickstart.yaml").read_text())
    assert data.pop("run_dir") == "runs/quickstart"
    assert data == QUICKSTART


def test_top_level_api_is_lazy_and_complete():
    for name in lmforge.__all__:
        assert getattr(lmforge, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        lmforge.nonesuch  # noqa: B018
