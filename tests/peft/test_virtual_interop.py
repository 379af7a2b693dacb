"""Hugging Face PEFT files for the virtual-token methods, both directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.peft import (
    build,
    ptuning_v2,  # noqa: F401  (registers "ptuning2")
)
from lmforge.peft.interop.lora import save_peft_lora
from lmforge.peft.interop.virtual import load_peft_virtual, save_peft_virtual
from lmforge.peft.prefix import PrefixTuning
from lmforge.peft.prompt_tuning import PromptTuning
from lmforge.peft.ptuning import PTuning
from tests.peft.test_virtual import BACKENDS, CASES, applied, ids, make, max_diff, narrower

# ──────────────────────────────────────────────────────────── Hugging Face PEFT interop

# lmforge case → what peft loads it as (and whether peft's logits include virtual columns).
PEFT_CASES = [
    ("prompt", {"num_virtual_tokens": 4}, True),
    ("prefix", {"num_virtual_tokens": 4, "hidden": 16}, False),
    ("prefix", {"num_virtual_tokens": 3, "hidden": 16, "embedding_only": True}, True),
    ("ptuning", {"num_virtual_tokens": 5, "hidden": 16}, True),
    ("ptuning2", {"num_virtual_tokens": 4, "init_std": 0.5}, False),
]
PEFT_IDS = ["prompt", "prefix", "prefix-embedding-only", "ptuning", "ptuning2"]


def peft_logits(model: nn.Module, x: torch.Tensor, strip: bool) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
    return logits[:, -x.shape[1] :] if strip else logits


@pytest.mark.parametrize("source", BACKENDS)
@pytest.mark.parametrize(("method", "config", "strip"), PEFT_CASES, ids=PEFT_IDS)
def test_lmforge_adapters_load_in_peft(
    source: str, method: str, config: dict, strip: bool, tmp_path
) -> None:
    peft = pytest.importorskip("peft")
    delta, model = applied(source, method, config)
    with torch.no_grad():
        ours = model(ids(), attention_mask=torch.ones_like(ids())).logits
    save_peft_virtual(delta, tmp_path, base_model_name_or_path="tiny-llama")
    theirs = peft.PeftModel.from_pretrained(make("hf"), str(tmp_path)).eval()
    assert max_diff(peft_logits(theirs, ids(), strip), ours) <= 1e-5


PEFT_CONFIGS = {
    "prompt": lambda peft: peft.PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    "prefix": lambda peft: peft.PrefixTuningConfig(
        num_virtual_tokens=4, task_type="CAUSAL_LM", prefix_projection=True, encoder_hidden_size=8
    ),
    "ptuning": lambda peft: peft.PromptEncoderConfig(
        num_virtual_tokens=4, task_type="CAUSAL_LM", encoder_hidden_size=8
    ),
}


@pytest.mark.parametrize("target", BACKENDS)
@pytest.mark.parametrize("kind", sorted(PEFT_CONFIGS))
def test_peft_adapters_load_in_lmforge(target: str, kind: str, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    theirs = peft.get_peft_model(make("hf"), PEFT_CONFIGS[kind](peft)).eval()
    theirs.save_pretrained(str(tmp_path))
    delta = load_peft_virtual(tmp_path, make(target))
    assert type(delta) is {"prompt": PromptTuning, "prefix": PrefixTuning, "ptuning": PTuning}[kind]
    expected = peft_logits(theirs, ids(), strip=kind != "prefix")
    assert (
        max_diff(delta.model(ids(), attention_mask=torch.ones_like(ids())).logits, expected) <= 1e-5
    )


def test_what_peft_cannot_hold_is_refused(tmp_path) -> None:
    infix, _ = applied("hf", "prefix", CASES[2][1])
    with pytest.raises(ConfigError, match="placement='infix' has no peft format"):
        save_peft_virtual(infix, tmp_path)
    template, _ = applied("hf", "ptuning", CASES[3][1])
    with pytest.raises(ConfigError, match="all pseudo tokens before the input"):
        save_peft_virtual(template, tmp_path)
    head, _ = applied("hf", "ptuning2", {"task": "classification", "num_classes": 2})
    with pytest.raises(ConfigError, match="no classification head"):
        save_peft_virtual(head, tmp_path)
    prefix, _ = applied("hf", "prefix", CASES[1][1])
    save_peft_virtual(prefix, tmp_path)
    with pytest.raises(CheckpointError, match="num_layers=2, but this model has 1"):
        load_peft_virtual(tmp_path, make("hf", layers=1))
    prompt = build("prompt", {"num_virtual_tokens": 4})
    prompt.apply(narrower("hf"))
    save_peft_virtual(prompt, tmp_path / "narrow")
    with pytest.raises(CheckpointError, match="another shape"):
        load_peft_virtual(tmp_path / "narrow", make("native"))
    lora = build("lora", {"r": 2})
    lora.apply(make("hf"))
    save_peft_lora(lora, tmp_path / "lora")
    with pytest.raises(CheckpointError, match="peft_type 'LORA' is not a virtual-token format"):
        load_peft_virtual(tmp_path / "lora", make("hf"))
