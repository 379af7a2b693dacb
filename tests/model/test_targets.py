import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.hf_config import FAMILIES
from lmforge.model.targets import default_targets, match_targets, replace_module
from lmforge.peft.base import count_parameters


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=50))


def test_list_targets_match_name_suffixes(model):
    assert match_targets(model, ["q_proj", "v_proj"]) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert match_targets(model, None) == match_targets(model, ["q_proj", "v_proj"])


def test_regex_and_all_linear(model):
    assert match_targets(model, r"re:.*layers\.1\.mlp\..*") == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]
    everything = match_targets(model, "all-linear")
    assert len(everything) == 14 and "lm_head" not in everything


def test_no_match_lists_what_could_match(model):
    with pytest.raises(ConfigError, match="could match: down_proj, gate_proj, k_proj, lm_head"):
        match_targets(model, ["qq_proj"])
    with pytest.raises(ConfigError, match="re:"):
        match_targets(model, "q_proj")


def test_replace_module_and_count_parameters(model):
    trainable, total = count_parameters(model)
    assert trainable == total == model.num_parameters()
    old = replace_module(model, "model.layers.0.mlp.up_proj", torch.nn.Identity())
    assert isinstance(old, torch.nn.Linear)
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Identity)


def test_default_targets_come_from_the_model_family(model):
    # a native model computes what LlamaForCausalLM does
    assert default_targets(model) == list(FAMILIES.get("LlamaForCausalLM").targets)
    other = torch.nn.Linear(2, 2)
    other.config = type("Config", (), {"model_type": "gemma3"})()
    with pytest.raises(ConfigError, match=r"targets=\[q_proj, v_proj\]"):
        default_targets(other)
