"""config.json read as plain JSON gives the ModelConfig transformers' reading gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, LlamaConfig, MistralConfig, Qwen2Config

from lmforge.model.hf_config import config_from_hf, load_hf_config, plain_config
from tests.model.test_hf import TINY_FIELDS as SMALL
from tests.model.test_hf import tiny_hf

CLASSES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def saved(tmp_path: Path, family: str, **fields: object) -> Path:
    """A checkpoint directory whose config.json transformers wrote."""
    CLASSES[family](**{**SMALL, **fields}).save_pretrained(tmp_path)
    return tmp_path


def written(tmp_path: Path, raw: dict) -> Path:
    """A checkpoint directory whose config.json is exactly `raw`."""
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def both_readings(path: Path) -> tuple[object, object]:
    return config_from_hf(load_hf_config(path)), config_from_hf(AutoConfig.from_pretrained(path))


@pytest.mark.parametrize("family", sorted(CLASSES))
@pytest.mark.parametrize("tied", [False, True])
def test_saved_configs_read_plainly_and_equal_transformers(tmp_path, family, tied):
    path = saved(tmp_path, family, tie_word_embeddings=tied)
    assert plain_config(json.loads((path / "config.json").read_text())) is not None
    mine, theirs = both_readings(path)
    assert mine == theirs
    assert mine.tie_embeddings is tied and mine.attention_bias is (family == "qwen2")


def test_old_style_rope_theta_and_null_kv_heads(tmp_path):
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **SMALL,
        "num_key_value_heads": None,
        "rope_theta": 321.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
    }
    path = written(tmp_path, raw)
    assert plain_config(raw) is not None
    mine, theirs = both_readings(path)
    assert mine == theirs
    assert (mine.rope_theta, mine.n_kv_head) == (321.0, 4)


@pytest.mark.parametrize(
    "change",
    [
        {"tie_word_embeddings": None},  # unstated: transformers' class default decides
        {"rms_norm_eps": None},
        {"rope_theta": None},
        {"model_type": "mistral"},  # architecture and model_type disagree
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
    ],
)
def test_configs_that_need_transformers_are_not_read_plainly(change):
    raw = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SMALL}
    raw |= {"rope_theta": 500.0, "tie_word_embeddings": False}
    raw |= change
    raw = {k: v for k, v in raw.items() if v is not None}
    assert plain_config(raw) is None


def test_unstated_defaults_fall_back_to_transformers(tmp_path):
    raw = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **SMALL}
    raw["rope_theta"] = 500.0  # tie_word_embeddings and sliding_window unstated
    mine, theirs = both_readings(written(tmp_path, raw))
    assert mine == theirs


def test_qwen2_window_off_unless_used(tmp_path):
    path = saved(tmp_path, "qwen2", sliding_window=16, use_sliding_window=False)
    raw = json.loads((path / "config.json").read_text())
    raw.pop("layer_types", None)  # older files carry only use_sliding_window
    raw["sliding_window"] = 16
    mine, theirs = both_readings(written(tmp_path, raw))
    assert mine == theirs and mine.max_seq_len == 64
    assert plain_config({**raw, "use_sliding_window": True}) is None


def test_mistral_window_caps_the_context(tmp_path):
    mine, theirs = both_readings(saved(tmp_path, "mistral", sliding_window=32))
    assert mine == theirs and mine.max_seq_len == 32


def test_native_loading_never_imports_transformers(tmp_path):
    tiny_hf("llama").save_pretrained(tmp_path)
    code = (
        "import sys; from lmforge.model.hf import load_hf_dir; "
        f"load_hf_dir({str(tmp_path)!r}); print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
