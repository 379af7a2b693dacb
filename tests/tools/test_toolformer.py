"""The Toolformer filter keeps exactly the calls that lower the loss (toy model, closed form);
positions, sampling and proposals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers
from torch import nn

from lmforge.model import CausalLM, preset
from lmforge.tokenizer import Tokenizer
from lmforge.tools import calculator
from lmforge.tools.toolformer import (
    Candidate,
    ToolformerConfig,
    api_text,
    call_positions,
    filter_calls,
    loss_weights,
    propose_calls,
    sample_calls,
    weighted_losses,
)

WORDS = [
    "<unk>", "[", "calculator", "(", ")", "→", "]", "=", "-", "+", "*", ".", "Mia", "has",
    "apples", "gives", "away", "remain", "buys", "more", "4732", "1298", "3434", "6030",
    "6142136", "10", "3444", "0",
]  # fmt: skip
TEXT = (
    "Mia has 4732 apples . She gives 1298 away . 4732 - 1298 = 3434 apples remain . "
    "3434 + 10 = 3444 ."
)
ALPHA = 6.0


def word_tokenizer() -> Tokenizer:
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(hf)


class CopyAfterEquals(nn.Module):
    """A toy LM: uniform logits, except that right after "=" every token written between
    "→" and "]" earlier in the row gets logit ALPHA (it copies a call's result)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.v = tokenizer.vocab_size
        self.arrow, self.close, self.equals = (tokenizer.token_to_id(w) for w in "→]=")
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        logits = torch.zeros(*input_ids.shape, self.v)
        for b, row in enumerate(input_ids.tolist()):
            inside, results = False, set()
            for t, token in enumerate(row):
                inside = token == self.arrow or (inside and token != self.close)
                if inside and token != self.arrow:
                    results.add(token)
                if token == self.equals and results:
                    logits[b, t, sorted(results)] = ALPHA
        return SimpleNamespace(logits=logits)


def expected_gain(correct: bool, v: int, w0: float) -> float:
    """L⁻ − L⁺ in closed form: only the first token after "=" changes (weight w0)."""
    z = math.log(math.exp(ALPHA) + v - 1)
    with_result = z - ALPHA if correct else z  # −log p(true next token)
    return w0 * (math.log(v) - with_result)


def test_filter_keeps_exactly_the_calls_that_lower_the_loss():
    tokenizer = word_tokenizer()
    model = CopyAfterEquals(tokenizer)
    first, second = TEXT.index("= 3434") + 1, TEXT.index("= 3444") + 1
    candidates = [
        Candidate(0, first, "4732 - 1298", "3434", "proposed"),
        Candidate(0, first, "4732 + 1298", "6030", "proposed"),
        Candidate(0, first, "4732 * 1298", "6142136", "model"),
        Candidate(0, second, "3434 + 10", "3444", "model"),
        Candidate(0, second, "3434 / 0", None, "model"),  # failed: never scored
    ]
    config = ToolformerConfig(threshold=0.5)
    kept = filter_calls(model, tokenizer, calculator, [TEXT], candidates, config)
    assert [c.argument for c in kept] == ["4732 - 1298", "3434 + 10"]
    w0 = loss_weights(64, config.decay)[0]
    v = tokenizer.vocab_size
    for c in candidates[:4]:
        correct = c.argument in ("4732 - 1298", "3434 + 10")
        assert math.isclose(c.gain, expected_gain(correct, v, w0), rel_tol=1e-5)
    assert all((c.gain >= config.threshold) == (c in kept) for c in candidates[:4])
    assert candidates[4].loss_plus == 0.0  # a failed call is not scored


def test_loss_weights_and_api_text():
    assert [round(w, 4) for w in loss_weights(64, 0.2)] == [0.3333, 0.2667, 0.2, 0.1333, 0.0667]
    assert api_text(calculator, "2 + 2", "4") == "[calculator(2 + 2) → 4]"
    assert api_text(calculator, "2 + 2") == "[calculator(2 + 2)]"


def test_weighted_losses_equal_a_direct_computation():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=50)).eval()
    rows = [([1, 2, 3], [4, 5, 6, 7]), ([9], [10, 11])]
    weights = [0.5, 0.3, 0.2]
    got = weighted_losses(model, rows, weights)
    for (context, continuation), value in zip(rows, got):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        want = sum(-w * float(logp[len(context) - 1 + t, continuation[t]])
                   for t, w in enumerate(weights[: len(continuation)]))  # fmt: skip
        assert math.isclose(value, want, rel_tol=1e-4)


def test_positions_are_where_the_model_most_expects_a_call_and_samples_come_from_there():
    tokenizer = Tokenizer.train([TEXT + " [calculator(2 + 2) → 4]" * 3] * 20, vocab_size=320)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size, init_std=0.2)).eval()
    prompt, text = "Calls: [calculator(1 + 1) → 2] 2.\n", "4732 - 1298 = 3434 apples."
    spots = call_positions(model, tokenizer, prompt, text, k=2)
    head, pieces = tokenizer.encode(prompt), tokenizer.encode(text)
    opener = tokenizer.encode(" [")[0]
    probs = []
    for j in range(1, len(pieces)):  # brute force: one forward per prefix
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([head + pieces[:j]])).logits[0, -1]
        probs.append((float(logits.softmax(-1)[opener]), len(tokenizer.decode(pieces[:j]))))
    assert spots == sorted(offset for _, offset in sorted(probs, reverse=True)[:2])
    config = ToolformerConfig(positions=2, samples=3, call_tokens=8, seed=1)
    found = sample_calls(model, tokenizer, calculator, prompt, [text], config)
    assert 0 < len(found) <= 6 and {c.position for c in found} <= set(spots)
    for c in found:
        assert c.source == "model" and c.argument
        ok = calculator.fn(c.argument) if c.result is not None else None
        assert c.result == ok


def test_proposals_come_from_the_equations():
    texts = ["Mia starts with 4732 apples. 4732 - 1298 = 3434. 3 * 315 = 945."]
    found = [(c.position, c.argument, c.result) for c in propose_calls(calculator, texts)]
    first, second = texts[0].index("= 3434") + 1, texts[0].index("= 945") + 1
    assert found == [
        (first, "4732 - 1298", "3434"), (first, "4732 + 1298", "6030"),
        (first, "4732 * 1298", "6142136"), (second, "3 * 315", "945"),
        (second, "3 + 315", "318"), (second, "3 - 315", "-312"),
    ]  # fmt: skip
