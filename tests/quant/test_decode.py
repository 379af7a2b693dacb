"""Weight-only int8 / 4-bit layers for decoding: the products their formulas define, a whole
native model swapped, and the serving engine on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.quant.decode import Int4Linear, Int8Linear, quantize_for_decoding


def test_int8_rows_are_symmetric_with_one_scale_each():
    torch.manual_seed(0)
    w, b, x = torch.randn(96, 128), torch.randn(96), torch.randn(3, 5, 128)
    layer = Int8Linear(w, b)
    scale = w.abs().amax(1) / 127
    expected = torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None]
    assert torch.allclose(layer.dequantize(), expected)
    assert torch.allclose(layer(x), F.linear(x, expected, b), atol=1e-4)
    assert (layer.dequantize() - w).abs().max() <= scale.max() / 2 + 1e-6


def test_int4_groups_are_min_max_with_sixteen_levels():
    torch.manual_seed(1)
    w, x = torch.randn(64, 96), torch.randn(4, 96)
    layer = Int4Linear(w, None, group_size=32)
    groups = w.view(64, 3, 32)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (high - low) / 15
    expected = (torch.round((groups - low) / step) * step + low).view(64, 96)
    assert torch.allclose(layer(x), F.linear(x, expected), atol=1e-4)
    with pytest.raises(ConfigError, match="divisible by 32"):
        Int4Linear(torch.randn(8, 40), None)


def model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=96, tie_embeddings=False, init_std=0.3)).eval()


def int4_rounded(w: torch.Tensor, group: int = 32) -> torch.Tensor:
    g = w.view(w.shape[0], -1, group)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = (high - low) / 15
    return (torch.round((g - low) / step) * step + low).view(w.shape)


ROUNDED = {
    "int8": lambda w: Int8Linear(w, None).dequantize(),
    "int4": int4_rounded,
}


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_native_model_is_swapped_whole_and_decodes_as_its_rounded_weights(kind):
    rounded, quantized = model(), model()
    with torch.no_grad():
        for m in rounded.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(ROUNDED[kind](m.weight))
    swapped = quantize_for_decoding(quantized, kind)
    assert len(swapped) == 2 * 7 + 1  # every projection of both blocks, and the head
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    prompt = [[5, 6, 7, 8, 9, 10]]  # vocab 96: the head's rows split in 16s for int4
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    assert (
        generate(quantized, prompt, greedy)[0].token_ids
        == generate(rounded, prompt, greedy)[0].token_ids
    )
    with pytest.raises(ConfigError, match="unknown decoding quantization"):
        quantize_for_decoding(model(), "int3")
