"""Every YAML preset in configs/ loads and validates; the quickstart YAML mirrors the code."""

from pathlib import Path

import pytest
import yaml

import lmforge
from lmforge import peft
from lmforge.config import load
from lmforge.recipes import align, finetune, pretrain
from lmforge.recipes.agent import AgentConfig
from lmforge.recipes.chat import ChatConfig
from lmforge.recipes.data import builders
from lmforge.recipes.eval import EvalConfig
from lmforge.recipes.export import ExportConfig
from lmforge.recipes.generate import GenerateConfig
from lmforge.recipes.moefy import MoefyConfig
from lmforge.recipes.quickstart import QUICKSTART, TWINS, twin
from lmforge.recipes.rag import ACTIONS as RAG_ACTIONS
from lmforge.recipes.scaling import ACTIONS as SCALING_ACTIONS
from lmforge.recipes.serve import ServeConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def check_pretrain(path):
    cfg = pretrain.load_config(path, [])
    cfg.train.validate()
    assert cfg.model.n_layer > 0 and cfg.data.seq_len <= cfg.model.max_seq_len


def check_finetune(path):
    cfg = finetune.load_config(path, [])
    cfg.train.validate()
    peft.build(cfg.method, cfg.delta)  # the delta fields are the method's own


def check_data(path):
    builder = builders()[path.stem.removeprefix("data-build-")]  # data-build-NAME.yaml
    load(builder.config, path, [f"{k}={v}" for k, v in builder.fixed.items()])


def check_rag(path):
    action = RAG_ACTIONS.get(path.stem.split("-")[1])  # rag-ACTION-....yaml
    load(action.config, path)


def check_align(path):
    action = align.ACTIONS.get(path.stem.removeprefix("align-"))  # align-ACTION.yaml
    cfg = load(action.config, path, [f"{k}={v}" for k, v in action.fixed.items()])
    cfg.validate()
    cfg.train.validate()
    if cfg.delta_method != "full":
        peft.build(cfg.delta_method, cfg.delta)
    if cfg.method in ("ppo", "grpo"):
        assert cfg.rollout.steps_per_rollout(cfg.train.batch_size, cfg.train.grad_accum) >= 1


def check_scaling(path):
    action = SCALING_ACTIONS.get(path.stem.split("-")[1])  # scaling-ACTION-....yaml
    load(action.config, path)


KINDS = {"pretrain": check_pretrain, "quickstart": check_pretrain, "finetune": check_finetune}
KINDS |= {"data": check_data, "eval": lambda p: load(EvalConfig, p)}
KINDS |= {"generate": lambda p: load(GenerateConfig, p), "chat": lambda p: load(ChatConfig, p)}
KINDS |= {"rag": check_rag, "moefy": lambda p: load(MoefyConfig, p).validate()}
KINDS |= {"align": check_align}
KINDS |= {"agent": lambda p: load(AgentConfig, p).validate()}
KINDS |= {"scaling": check_scaling}
KINDS |= {"serve": lambda p: load(ServeConfig, p), "export": lambda p: load(ExportConfig, p)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    kind = path.stem.split("-")[0]
    assert kind in KINDS, f"{path.name}: name configs <kind>-...yaml, kind in {sorted(KINDS)}"
    KINDS[kind](path)


@pytest.mark.parametrize("corpus", TWINS.names())
def test_quickstart_yaml_mirrors_the_recipe(corpus):
    suffix = "" if corpus == "shakespeare" else f"-{corpus}"
    path = Path(__file__).parent.parent / f"configs/quickstart{suffix}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data.pop("run_dir") == f"runs/quickstart{suffix}"
    assert data == twin(corpus)
    assert twin("shakespeare") == QUICKSTART


def test_top_level_api_is_lazy_and_complete():
    for name in lmforge.__all__:
        assert getattr(lmforge, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        lmforge.nonesuch  # noqa: B018
