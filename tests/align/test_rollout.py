"""The rollout phase: batches of sampled replies scored by a judge, prepared by the objective,
served in shuffled passes, and resumed exactly from a JSON state mid-rollout; judges and
build-preferences."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.align.build import BuildPreferencesConfig, best_and_worst, build_pairs
from lmforge.align.grpo import GRPOObjective, GRPOSettings
from lmforge.align.judges import RULES, RuleJudge, make_judge
from lmforge.align.logprobs import Reference
from lmforge.align.rollout import RolloutSettings, RolloutSource, sample_replies
from lmforge.data.preferences import PromptRecord
from lmforge.errors import ConfigError, DataError
from lmforge.model.generate import SamplingConfig
from tests.align.helpers import chat_tokenizer, make

PROMPTS = [
    PromptRecord([{"role": "user", "content": f"What is {i} plus {i}?"}], {"answer": 2 * i})
    for i in range(1, 7)
] + [PromptRecord([{"role": "user", "content": "二加二等于几?"}], {"answer": 4})]


def length_judge(prompts, replies):
    """A judge with spread: longer replies score higher (characters / 10)."""
    return [len(r) / 10 for r in replies]


def source(model, tokenizer, epochs=2):
    settings = RolloutSettings(prompts=2, samples=2, epochs=epochs, max_new_tokens=6)
    objective = GRPOObjective(
        GRPOSettings(beta=0.1),
        2,
        Reference(model),
        max_new_tokens=6,
        updates_per_rollout=epochs * 2,
    )
    return RolloutSource(
        model, objective, PROMPTS, tokenizer, length_judge, settings, batch_size=2, seed=7
    )


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_sampled_replies_end_with_the_token_that_ended_them(backend):
    tok = chat_tokenizer()
    model = make(backend, vocab=tok.vocab_size)
    config = SamplingConfig(max_new_tokens=5, temperature=1.0, seed=0)
    sampled = sample_replies(model, tok, PROMPTS[:2], 3, config)
    assert [s.prompt for s in sampled] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    for s in sampled:
        assert len(s.reply_ids) <= 6 and s.prompt_ids[-1] == tok.encode("\n")[-1]
    again = sample_replies(model, tok, PROMPTS[:2], 3, config)
    assert [s.reply_ids for s in again] == [s.reply_ids for s in sampled]  # seeded


def test_rollout_batches_and_exact_resume_mid_rollout():
    tok = chat_tokenizer()
    model = make("native", vocab=tok.vocab_size)
    data = source(model, tok)
    first = data.next_batch()
    assert set(first) >= {"input_ids", "labels", "rewards", "advantages", "old_logps", "ref_logps"}
    assert first["input_ids"].shape[0] == 2 and data.rollouts == 1 and len(data.queue) == 3
    scored = first["labels"] != -100
    assert (first["old_logps"][scored] < 0).all() and (first["old_logps"][~scored] == 0).all()
    state = json.loads(json.dumps(data.state_dict()))  # what a checkpoint keeps
    want = [data.next_batch() for _ in range(5)]  # the rest of this rollout, then a new one
    assert data.rollouts == 2
    resumed = source(model, tok)
    resumed.load_state_dict(state)
    for a, b in zip(want, [resumed.next_batch() for _ in range(5)]):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_rollout_sizes_are_checked():
    tok = chat_tokenizer()
    model = make("native", vocab=tok.vocab_size)
    with pytest.raises(ConfigError, match="multiple of train.batch_size"):
        RolloutSource(
            model,
            None,
            PROMPTS,
            tok,
            length_judge,
            RolloutSettings(prompts=3, samples=1),
            batch_size=2,
        )
    with pytest.raises(DataError, match="cannot fill one rollout"):
        RolloutSource(
            model,
            None,
            PROMPTS[:1],
            tok,
            length_judge,
            RolloutSettings(prompts=2, samples=1),
            batch_size=2,
        )
    with pytest.raises(ConfigError, match="train.grad_accum=3"):
        RolloutSettings(prompts=2, samples=2).steps_per_rollout(2, 3)


def test_rules_and_python_judges():
    record = PromptRecord([{"role": "user", "content": "topic?"}], {"answer": "sport"})
    judge = make_judge("exact", chat_tokenizer())
    assert judge([record] * 4, ["Sport.", "It is sport, I think", "sports", "tech"]) == [
        1.0,
        0.5,
        0.0,
        0.0,
    ]
    options = PromptRecord(record.messages, {"answer": "sport", "choices": ["tech", "sport"]})
    assert judge([options] * 3, ["sport", "It is sport, I think", "sport or tech"]) == [
        1.0,
        0.5,
        0.0,
    ]
    zh = PromptRecord(record.messages, {"answer": "体育", "choices": ["体育", "财经"]})
    replies = ["体育。", "这篇文章属于体育版", "属于财经和体育", "财经"]
    assert judge([zh] * 4, replies) == [1.0, 0.5, 0.0, 0.0]  # no spaces around Chinese words
    assert judge([options], ["这是sport新闻"]) == [0.5]
    number = make_judge("first-number", chat_tokenizer())
    sums = PromptRecord([{"role": "user", "content": "2+2"}], {"answer": 4})
    assert number([sums] * 3, ["It is 4.", "4.0", "5, not 4"]) == [1.0, 1.0, 0.0]
    custom = make_judge("python:tests.align.test_rollout:chinese_rule", chat_tokenizer())
    assert custom([record] * 2, ["体育", "sport"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="cannot import nope"):
        make_judge("python:tests.align.test_rollout:nope", chat_tokenizer())
    with pytest.raises(ConfigError, match="exact, first-number"):
        make_judge("vibes", chat_tokenizer())
    odd = PromptRecord(record.messages, {"answer": "sport", "choices": "sport", "origin": "p:3"})
    with pytest.raises(DataError, match="p:3: 'choices' must be a list"):
        RULES.get("exact")(odd, "sport, I think")
    with pytest.raises(DataError, match="'answer' field"):
        RULES.get("exact")(PromptRecord(record.messages, {}), "x")


def chinese_rule(prompt: PromptRecord, reply: str) -> float:
    return float(any("\u4e00" <= c <= "\u9fff" for c in reply))


def test_best_and_worst_pairs():
    record = PromptRecord([{"role": "user", "content": "q"}], {"answer": "a", "origin": "f:1"})
    pair = best_and_worst(record, ["x", "a", "y", "a!"], [0.0, 1.0, 0.0, 1.0], 0.0)
    assert (pair.chosen, pair.rejected) == ("a", "x")  # ties: the earlier reply
    assert pair.meta == {
        "answer": "a",
        "prompt_origin": "f:1",
        "chosen_score": 1.0,
        "rejected_score": 0.0,
    }
    assert best_and_worst(record, ["x", "y"], [0.5, 0.5], 0.0) is None
    # a reference reply (after the `sampled` ones) competes for the chosen side only
    pair = best_and_worst(record, ["x", "y", "a"], [0.0, 0.5, 1.0], 0.0, sampled=2)
    assert (pair.chosen, pair.rejected) == ("a", "x")
    pair = best_and_worst(record, ["x", "y", "zz"], [0.5, 1.0, 0.0], 0.0, sampled=2)
    assert (pair.chosen, pair.rejected) == ("y", "x")
    assert best_and_worst(record, ["x", "y"], [0.6, 0.5], 0.2) is None


def test_build_pairs_from_a_policys_own_replies():
    tok = chat_tokenizer()
    model = make("native", vocab=tok.vocab_size)
    cfg = BuildPreferencesConfig(
        prompts="unused",
        samples=3,
        batch_size=4,
        sampling=SamplingConfig(max_new_tokens=8, temperature=1.0, seed=3),
    )
    pairs, counts = build_pairs(model, tok, PROMPTS, RuleJudge(_length), cfg, progress=False)
    assert counts["prompts"] == 7 and counts["replies"] == 21
    assert counts["pairs"] == len(pairs) > 0
    for p in pairs:
        assert len(p.chosen) > len(p.rejected) and p.meta["chosen_score"] > p.meta["rejected_score"]
    again, _ = build_pairs(model, tok, PROMPTS, RuleJudge(_length), cfg, progress=False)
    assert [(p.chosen, p.rejected) for p in again] == [(p.chosen, p.rejected) for p in pairs]
    long = "一个很长的参考答案 — a demonstration longer than any eight-token reply"
    shown = [PromptRecord(PROMPTS[0].messages, {"reference": long}), *PROMPTS[1:]]
    with_ref, _ = build_pairs(model, tok, shown, RuleJudge(_length), cfg, progress=False)
    assert with_ref[0].chosen == long and "reference" not in with_ref[0].meta
    assert len(with_ref) >= len(pairs) and with_ref[0].rejected != long


def _length(prompt: PromptRecord, reply: str) -> float:
    return float(len(reply))
