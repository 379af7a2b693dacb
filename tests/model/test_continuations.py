"""Whole-sequence scores of continuations after a shared prompt: equal to one plain row per
continuation on native and transformers models, through every delta method, with the
same gradients; the fallback without a cache; label checks."""

import warnings

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from torch import nn

from lmforge import knowledge, peft  # noqa: F401  (knowledge registers its delta method)
from lmforge.errors import ConfigError
from lmforge.model.continuations import (
    NORMALIZERS,
    Continuations,
    check_label_sequences,
    left_pad,
    score_continuations,
)
from lmforge.model.host import set_gradient_checkpointing
from lmforge.model.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer
from tests.models import BACKENDS, make
from tests.peft.test_contract import CASES

PROMPTS = [[5, 9, 3, 7], [11, 2], [8, 8, 1, 4, 6, 2]]
LONG = [[4], [12, 13, 14], [12, 15]]  # one token; two that share their first token
SHORT = [[4], [12], [30]]
METHOD_CASES = {
    **CASES,
    "ptuning": {"num_virtual_tokens": 4, "template": "[P][P] {input} [P][P] {output}"},
}


def reference(model: nn.Module, prompt: list[int], cont: list[int]) -> torch.Tensor:
    """One unpadded row, the whole logits: Σ log p(cont_j | prompt, cont_<j). Labels mark the
    continuation, so P-tuning reads its infix between the prompt and the label."""
    row = torch.tensor([prompt + cont])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + cont])
    logp = model(input_ids=row, labels=labels).logits[0].float().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(cont))


def scored(model: nn.Module, conts: list[list[int]]) -> torch.Tensor:
    ids, mask = left_pad(PROMPTS, pad_id=0)
    cont = Continuations.same_for_all(conts, len(PROMPTS))
    return score_continuations(model, ids, mask, cont).total().view(len(PROMPTS), len(conts))


def expected(model: nn.Module, conts: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.stack([reference(model, p, c) for c in conts]) for p in PROMPTS])


def nudged(backend: str, method: str) -> nn.Module:
    delta = peft.apply(make(backend), method, METHOD_CASES[method])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.05)
    return delta.model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["none", *METHOD_CASES])
def test_scores_equal_one_row_per_continuation(backend, method):
    model = make(backend) if method == "none" else nudged(backend, method)
    with torch.no_grad():
        for conts in (LONG, SHORT):
            assert scored(model, conts) == pytest.approx(expected(model, conts), abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_gradients_flow_through_the_shared_prompt(backend, method):
    model = nudged(backend, method)
    params = [p for p in model.parameters() if p.requires_grad]
    scored(model, LONG).sum().backward()
    got = [p.grad.clone() for p in params]
    model.zero_grad()
    expected(model, LONG).sum().backward()
    for g, want in zip(got, [p.grad for p in params]):
        assert torch.allclose(g, want, atol=1e-5)


def test_without_a_cache_each_row_is_read_whole():
    model = make("hf").train()
    set_gradient_checkpointing(model)  # transformers drops the cache while training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers says it drops the cache
        got = scored(model, LONG)
    model.eval()
    with torch.no_grad():
        assert got.detach() == pytest.approx(expected(model, LONG), abs=1e-4)

    class Opaque(nn.Module):  # no host knows it: no cache, no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    with torch.no_grad():
        opaque = scored(Opaque(make("native")), LONG)
        assert opaque == pytest.approx(expected(make("native"), LONG), abs=1e-4)


def test_virtual_tokens_without_a_cache_are_refused():
    base = make("hf")
    set_gradient_checkpointing(base)
    model = peft.apply(base, "prompt", {"num_virtual_tokens": 4}).model.train()
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="gradient_checkpointing"):
        warnings.simplefilter("ignore")
        scored(model, LONG)


def test_greedy_and_normalisation():
    model = make("native")
    ids, mask = left_pad(PROMPTS[:1], 0)
    with torch.no_grad():
        best = int(model(input_ids=torch.tensor(PROMPTS[:1])).logits[0, -1].argmax())
        cont = Continuations.build([[[best], [(best + 1) % 61]]])
        scores = score_continuations(model, ids, mask, cont)
    assert scores.greedy.tolist() == [True, False]
    logp, tokens, chars = scores.total(), torch.tensor([3.0, 3.0]), torch.tensor([6.0, 2.0])
    assert torch.equal(NORMALIZERS.get("mean")(logp, tokens, chars), logp / 3)
    assert torch.equal(NORMALIZERS.get("char")(logp, tokens, chars), logp / chars)
    assert NORMALIZERS.get("mean")(-6.0, 3, 2) == -2.0  # floats alike


def lead_byte_tokenizer() -> Tokenizer:
    """A byte-level BPE that spells 正 and 改 (both begin with the byte E6) only as their lead
    byte after a space: the rest of their bytes are missing from its vocabulary."""
    symbols = pre_tokenizers.ByteLevel.alphabet()
    keep = sorted(s for s in symbols if s.isascii()) + ["Ġ", "æ", "Ġæ", "é", "Ŀ", "¢"]
    hf = HFTokenizer(models.BPE({s: i for i, s in enumerate(keep)}, [("Ġ", "æ")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return Tokenizer(hf)


def test_identical_label_tokens_are_refused_and_lone_byte_pieces_flagged():
    tok = lead_byte_tokenizer()
    zheng, gai = tok.encode(" 正"), tok.encode(" 改")
    assert zheng == gai == [tok.token_to_id("Ġæ")]
    with pytest.raises(ConfigError, match="'正' and '改' are the same tokens"):
        check_label_sequences(tok, {"正": zheng, "改": gai})
    with pytest.warns(UserWarning, match="'正' is read as the single token 'Ġæ'.*shares it"):
        check_label_sequences(tok, {"正": zheng, "b": tok.encode(" b")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole characters, of any length: no warning
        check_label_sequences(tok, {"a": tok.encode(" a"), "bc": tok.encode(" bc")})
