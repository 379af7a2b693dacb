"""Weight-only 8-bit / 4-bit layers for decoding: the products their formulas define, a whole
native model swapped, and the serving engine on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.quant.decode import Int4Linear, Int8Linear, group_codes, quantize_for_decoding


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def rounded4(w: torch.Tensor, group: int = 32) -> torch.Tensor:
    """The 4-bit weight by its formula: 16 levels per group of inputs from its minimum to its
    maximum, the step and the zero point (code 8) rounded to bfloat16 first."""
    g = w.view(w.shape[0], -1, group)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = bf16((high - low) / 15)
    zero = bf16(low + 8 * step)
    q = (torch.round((g - zero) / step) + 8).clamp(0, 15)
    return ((q - 8) * step + zero).view(w.shape)


def rounded(w: torch.Tensor, bits: int) -> torch.Tensor:
    """What each format stores: 4 bits; 8 bits = 4 bits plus 4 bits of the residual."""
    first = rounded4(w)
    return first if bits == 4 else first + rounded4(w - first)


def kernel_product(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """x·wᵀ (+ bias) with the input rounded to bfloat16, as the kernel takes it."""
    return F.linear(x.to(torch.bfloat16).float(), w, bias)


def test_codes_are_min_max_levels_per_group_on_a_bfloat16_grid():
    w = torch.tensor([[0.0, 1.5, 3.0, 7.5, -8.0, 8.0, 1.0, 2.0]] * 16)
    q, scale, zero = group_codes(w, 4, 16, 8)
    assert scale[0].tolist() == [0.5, 1.0703125]  # 16/15 rounded to bfloat16
    assert zero[0].tolist() == [4.0, 0.5625]  # −8 + 8 · 1.0703125, a bfloat16 value
    assert q[0].tolist() == [0, 3, 6, 15, 0, 15, 8, 9]
    with pytest.raises(ConfigError, match="divisible by 32"):
        Int4Linear(torch.randn(16, 40), None)


@pytest.mark.parametrize(("layer", "bits"), [(Int8Linear, 8), (Int4Linear, 4)])
def test_each_layer_computes_its_rounded_weight(layer, bits):
    torch.manual_seed(0)
    w, b, x = torch.randn(96, 128), torch.randn(96), torch.randn(3, 5, 128)
    out = layer(w, b)(x)
    expected = kernel_product(x, rounded(w, bits), b)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 96)
    # the kernel returns bfloat16: 8 significant bits of each output
    assert torch.allclose(out, expected, rtol=2**-7, atol=2e-2)
    error = (rounded(w, bits) - w).abs().max()
    step = (w.view(96, 4, 32).amax(-1) - w.view(96, 4, 32).amin(-1)).max() / 15
    assert error <= step / (2 if bits == 4 else 15)  # half a step; the residual's half step


def test_eight_bits_are_closer_to_the_float_layer_than_four():
    torch.manual_seed(1)
    w, x = torch.randn(64, 256), torch.randn(8, 256)
    exact = F.linear(x, w)
    err8 = (Int8Linear(w, None)(x) - exact).abs().mean()
    err4 = (Int4Linear(w, None)(x) - exact).abs().mean()
    assert err8 < err4 / 4


def model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=96, tie_embeddings=False, init_std=0.3)).eval()


@pytest.mark.parametrize(("kind", "bits"), [("int8", 8), ("int4", 4)])
def test_a_native_model_is_swapped_whole_and_decodes_as_its_rounded_weights(kind, bits):
    rounded_model, quantized = model(), model()
    with torch.no_grad():
        for m in rounded_model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(rounded(m.weight, bits))
    swapped = quantize_for_decoding(quantized, kind)
    assert len(swapped) == 2 * 7 + 1  # every projection of both blocks, and the head
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    prompt = [[5, 6, 7, 8, 9, 10]]  # vocab 96: the head's rows split in 16s
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    tokens = generate(quantized, prompt, greedy)[0].token_ids
    with torch.no_grad():  # the same logits but for bfloat16's rounding of each product
        ids = torch.tensor([prompt[0] + tokens])
        ours, theirs = quantized(ids).logits, rounded_model(ids).logits
    assert (ours - theirs).abs().max() < 0.02 * theirs.abs().max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9
    with pytest.raises(ConfigError, match="unknown decoding quantization"):
        quantize_for_decoding(model(), "int3")
