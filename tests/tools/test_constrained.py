"""Constrained decoding: 200 sampled calls from a random model all parse and validate."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer
from lmforge.tools import Toolbox, calculator, tool
from lmforge.tools.constrained import (
    GrammarConstraint,
    call_pattern,
    compile_grammar,
    token_bytes,
)
from lmforge.tools.formats import CALL_FORMATS, ToolPrompt

pytest.importorskip("outlines_core")
TEXT = 'calculate {"name": "x", "arguments": [1, 2.5, -3]} 北京 weather metric imperial ' * 30


@tool
def weather(city: str, days: int, unit: Literal["metric", "imperial"] = "metric") -> str:
    """Forecast.

    Args:
        city: a city
        days: days ahead
        unit: units
    """
    return city


@tool
def total(values: list[float], note: str | None = None) -> str:
    """Add numbers.

    Args:
        values: the numbers
        note: a remark
    """
    return str(sum(values))


@pytest.fixture(scope="module")
def setup():
    tokenizer = Tokenizer.train([TEXT], vocab_size=400)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size, init_std=0.2)).eval()
    box = Toolbox([calculator, weather, total])
    prompt = ToolPrompt(tokenizer).render([{"role": "user", "content": "北京?"}], box.specs())
    return tokenizer, model, box, tokenizer.encode(prompt)[-40:]  # the tiny model reads 128


def invalid_rate(replies: list[str], box: Toolbox) -> float:
    bad = 0
    for text in replies:
        parsed = CALL_FORMATS.get("hermes").parse(text)
        ok = len(parsed.calls) == 1 and not parsed.errors and box.check(parsed.calls[0])[2] is None
        bad += not ok
    return bad / len(replies)


def test_200_sampled_calls_all_parse_and_validate(setup):
    tokenizer, model, box, ids = setup
    fmt = CALL_FORMATS.get("hermes")
    grammar = compile_grammar(call_pattern(box.specs(), fmt), tokenizer)
    config = SamplingConfig(max_new_tokens=60, temperature=1.0, seed=0)
    eos = [tokenizer.eos_id, tokenizer.token_to_id("<|im_end|>")]
    constraint = GrammarConstraint(grammar, eos, config.max_new_tokens)
    out = generate(model, [ids] * 200, config, eos_token_id=eos, decode=tokenizer.decode,
                   logits_processor=constraint)  # fmt: skip
    replies = [r.text for r in out]
    assert invalid_rate(replies, box) == 0.0
    assert all(r.finish_reason in ("eos", "length") for r in out)
    names = {CALL_FORMATS.get("hermes").parse(t).calls[0].name for t in replies}
    assert names == {"calculator", "weather", "total"}  # sampling reaches every tool
    free = generate(model, [ids] * 50, config, eos_token_id=eos, decode=tokenizer.decode)
    assert invalid_rate([r.text for r in free], box) == 1.0  # a random model never manages alone


def test_budget_is_respected_and_too_small_budgets_are_refused(setup):
    tokenizer, model, box, ids = setup
    grammar = compile_grammar(
        call_pattern([calculator.spec()], CALL_FORMATS.get("hermes")), tokenizer
    )
    need = grammar.distance[grammar.start]
    with pytest.raises(ConfigError, match=f"needs at least {need} tokens"):
        GrammarConstraint(grammar, [0], need - 1)
    config = SamplingConfig(max_new_tokens=need, temperature=1.0, seed=3)
    constraint = GrammarConstraint(grammar, [0], need)
    out = generate(model, [ids] * 20, config, eos_token_id=[0], decode=tokenizer.decode,
                   logits_processor=constraint)  # fmt: skip
    assert invalid_rate([r.text for r in out], Toolbox([calculator])) == 0.0
    assert all(len(r.token_ids) == need for r in out)  # the shortest call, exactly


def test_token_bytes_cover_the_vocabulary(setup):
    tokenizer = setup[0]
    table = token_bytes(tokenizer)
    assert sum(len(v) for v in table.values()) == tokenizer.vocab_size - 4  # 4 specials
    assert all(tokenizer.decode(ids[:1]).encode() == data for data, ids in table.items()
               if data.decode("utf-8", "ignore").encode() == data)  # fmt: skip
