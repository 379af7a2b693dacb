"""Tasks and runners: generated arithmetic, the registry, choice scoring with calibration on a
tiny model, the generation runner (direct, CoT, self-consistency), errors, and BBC News."""

import re

import pytest
import torch

import lmforge.eval.generation as generation
from lmforge.errors import ConfigError, RegistryError
from lmforge.eval import (
    TASKS,
    ChoiceTask,
    EvalSettings,
    GenerationTask,
    evaluate,
    generate_problems,
    get_task,
)
from lmforge.eval.loglik import Request, encode_request, loglikelihoods
from lmforge.hub import load_model, load_tokenizer
from lmforge.prompting import PromptFormat, Sample, Template, Verbalizer
from lmforge.prompting.calibration import CONTENT_FREE


def test_arithmetic_is_deterministic_and_exact():
    for level in (1, 2, 3):
        problems = generate_problems(50, level, seed=7)
        assert problems == generate_problems(50, level, seed=7)
        assert problems != generate_problems(50, level, seed=8)
        for p in problems:
            steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", p.rationale)
            assert len(steps) == level == p.level
            value = int(re.search(r"has (\d+)", p.question).group(1))
            for a, op, b, result in steps:  # each step starts from the previous result
                assert int(a) == value
                value = {
                    "+": value + int(b),
                    "-": value - int(b),
                    "*": value * int(b),
                    "/": value // int(b),
                }[op]
                assert int(result) == value > 0
            assert p.answer == value and p.question.endswith("have now?")


def test_arithmetic_example_reads_well():
    p = generate_problems(1, 2, seed=0)[0]
    assert p.question == (
        "Ivy has 9 marbles. She gives 6 to Ava. Then she buys 9 more. "
        "How many marbles does Ivy have now?"
    )
    assert p.rationale == "Ivy starts with 9 marbles. 9 - 6 = 3. 3 + 9 = 12." and p.answer == 12


def test_builtin_tasks_are_registered():
    assert set(TASKS.names()) >= {
        "arithmetic", "arithmetic-1", "arithmetic-2", "arithmetic-3", "bbc-news",
        "perplexity", "ppl-peoples-daily", "ppl-shakespeare",
    }  # fmt: skip
    test, pool = get_task("arithmetic-1").test(), get_task("arithmetic-1").pool()
    assert len(test) == 100 and len(pool) <= 100
    assert not {s.fields["question"] for s in test} & {s.fields["question"] for s in pool}
    assert len(get_task("arithmetic").test()) == 300
    with pytest.raises(RegistryError, match="unknown task 'sst2'; registered: arithmetic, "):
        get_task("sst2")


TOPIC = PromptFormat(Template("Line: {text}\nWord:"), instruction="Name the key word.")
LINES = [
    ("To be, or not to be, that is the question", "question"),
    ("The slings and arrows of outrageous fortune", "fortune"),
    ("Whether 'tis nobler in the mind to suffer", "question"),
    ("Or to take arms against a sea of troubles", "fortune"),
]
SAMPLES = [Sample({"text": t}, label, origin=f"line {i}") for i, (t, label) in enumerate(LINES)]
CHOICE = ChoiceTask(
    name="tiny-choice",
    description="test",
    test=lambda: SAMPLES,
    pool=lambda: SAMPLES,
    format=TOPIC,
    verbalizer=Verbalizer({"question": ("question",), "fortune": ("fortune", "sea")}),
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def _label_probs(model, tok, prompt):
    """Softmax over labels of log Σ_words p(word | prompt), computed directly."""
    words = [("question", " question"), ("fortune", " fortune"), ("fortune", " sea")]
    lls = loglikelihoods(model, tok, [Request(prompt, w) for _, w in words])
    q = torch.tensor([lls[0].logprob])
    f = torch.tensor([lls[1].logprob, lls[2].logprob]).logsumexp(0, keepdim=True)
    return torch.cat([q, f]).softmax(0)


def test_choice_runner_scores_label_words(tiny):
    model, tok = tiny
    result = evaluate(model, tok, CHOICE, EvalSettings())
    first = result.predictions[0]
    expected = _label_probs(model, tok, TOPIC.render(SAMPLES[0].fields))
    assert [first["probabilities"][k] for k in ("question", "fortune")] == pytest.approx(
        expected.tolist(), abs=1e-5
    )
    assert (
        result.example_prompt
        == "Name the key word.\n\nLine: To be, or not to be, that is the question\nWord:"
    )
    correct = [r["prediction"] == r["target"] for r in result.predictions]
    assert result.metrics["accuracy"] == sum(correct) / 4 and result.n == 4


def test_calibrated_choice_by_hand(tiny):
    model, tok = tiny
    result = evaluate(model, tok, CHOICE, EvalSettings.from_fields(calibrate=True))
    cf = torch.stack(
        [_label_probs(model, tok, TOPIC.render({"text": t})) for t in ("N/A", "[MASK]", "")]
    )
    p_cf = cf.mean(0) / cf.mean(0).sum()
    for sample, record in zip(SAMPLES, result.predictions):
        p = _label_probs(model, tok, TOPIC.render(sample.fields))
        q = (p / p_cf).softmax(0)
        assert list(record["probabilities"].values()) == pytest.approx(q.tolist(), abs=1e-5)
        assert record["prediction"] == ["question", "fortune"][int(q.argmax())]


ZH_FORMAT = PromptFormat(Template("句子：{text}\n类型："), instruction="判断词语的类型。")
ZH_SAMPLES = [
    Sample({"text": "江泽民主席发表新年讲话"}, "人名", origin="zh 0"),
    Sample({"text": "北京的冬天很冷"}, "地名", origin="zh 1"),
]
ZH_CHOICE = ChoiceTask(
    name="tiny-zh",
    description="test",
    test=lambda: ZH_SAMPLES,
    pool=lambda: ZH_SAMPLES,
    format=ZH_FORMAT,
    verbalizer=Verbalizer({"人名": ("人名",), "地名": ("地名", "地点")}),
)


def _brute_label_probs(model, tok, prompt):
    """Label probabilities from one unpadded row per word: the reference for any length."""
    scores = {}
    for label, words in ZH_CHOICE.verbalizer.words.items():
        per_word = []
        for w in words:
            whole, n = encode_request(tok, Request(prompt, " " + w), 1000)
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
            per_word.append(sum(logp[i - 1, whole[i]] for i in range(n, len(whole))))
        scores[label] = torch.stack(per_word).logsumexp(0)
    return torch.stack(list(scores.values())).softmax(0)


def test_chinese_words_of_many_tokens_are_scored_whole_and_calibrated(tiny):
    model, tok = tiny
    assert min(len(tok.encode(" " + w)) for w in ("人名", "地名", "地点")) > 3  # byte pieces
    result = evaluate(model, tok, ZH_CHOICE, EvalSettings.from_fields(calibrate=True))
    cf = torch.stack(
        [_brute_label_probs(model, tok, ZH_FORMAT.render({"text": t})) for t in CONTENT_FREE]
    )
    p_cf = cf.mean(0) / cf.mean(0).sum()
    for sample, record in zip(ZH_SAMPLES, result.predictions):
        p = _brute_label_probs(model, tok, ZH_FORMAT.render(sample.fields))
        q = (p / p_cf).softmax(0)
        assert list(record["probabilities"].values()) == pytest.approx(q.tolist(), abs=1e-5)
    assert result.example_prompt == "判断词语的类型。\n\n句子：江泽民主席发表新年讲话\n类型："


def test_few_shot_choice_is_deterministic(tiny):
    model, tok = tiny
    s = EvalSettings.from_fields(shots=2, selection="balanced", seed=4, calibrate=True)
    a, b = evaluate(model, tok, CHOICE, s), evaluate(model, tok, CHOICE, s)
    assert a.predictions == b.predictions and a.example_prompt == b.example_prompt
    assert a.example_prompt.count("Word:") == 3  # two demonstrations and the query


def test_bad_settings_and_inputs(tiny):
    model, tok = tiny
    with pytest.raises(
        ConfigError, match="shots=5 asks for more demonstrations than the pool holds \\(4\\)"
    ):
        evaluate(model, tok, CHOICE, EvalSettings.from_fields(shots=5))
    broken = ChoiceTask(
        "broken",
        "",
        test=lambda: SAMPLES,
        format=PromptFormat(Template("{body}:")),
        verbalizer=CHOICE.verbalizer,
    )
    with pytest.raises(ConfigError, match="names the field 'body'"):
        evaluate(model, tok, broken, EvalSettings())
    with pytest.raises(ConfigError, match="selection 'knn' is unknown; choose from balanced"):
        evaluate(model, tok, CHOICE, EvalSettings.from_fields(selection="knn"))
    with pytest.raises(RegistryError, match="unknown task 'nope'; registered"):
        evaluate(model, tok, "nope")


ARITH = [
    Sample({"question": f"What is {a} + {b}?"}, str(a + b), f"{a} + {b} = {a + b}.", f"q{a}")
    for a, b in [(2, 3), (4, 1)]
]
GEN = GenerationTask(
    "tiny-gen",
    "test",
    test=lambda: ARITH,
    pool=lambda: ARITH,
    format=PromptFormat(Template("Question: {question}\nAnswer:")),
)


def scripted(outputs_for):
    """A stand-in for generate_texts that records its prompts and returns scripted texts."""
    calls = []

    def fake(model, tokenizer, prompts, config, *, n=1, batch_size=8, progress=False):
        calls.append((prompts, config, n))
        return [[outputs_for(p, j) for j in range(n)] for p in prompts]

    return fake, calls


def test_direct_generation_extracts_the_first_number(monkeypatch):
    fake, calls = scripted(lambda p, j: " 5 apples" if "2 + 3" in p.splitlines()[-2] else " 6")
    monkeypatch.setattr(generation, "generate_texts", fake)
    result = evaluate(None, None, GEN, EvalSettings.from_fields(shots=1, selection="fixed"))
    assert [r["prediction"] for r in result.predictions] == ["5", "6"]
    assert result.metrics == {"accuracy": 0.5}
    prompts, config, n = calls[0]
    assert config.temperature == 0.0 and config.max_new_tokens == 16 and n == 1
    assert (
        prompts[0].endswith("Question: What is 2 + 3?\nAnswer:")
        and prompts[0].count("Answer:") == 2
    )


def test_self_consistency_votes_over_rationales(monkeypatch):
    votes = {
        0: " 2 + 3 = 6. The answer is 6.",
        1: " The answer is 5.",
        2: " So 5. The answer is 5.",
    }
    fake, calls = scripted(lambda p, j: votes[j])
    monkeypatch.setattr(generation, "generate_texts", fake)
    s = EvalSettings.from_fields(
        shots=1, selection="fixed", reasoning="cot", samples=3, temperature=0.5, seed=9
    )
    result = evaluate(None, None, GEN, s)
    assert [r["answers"] for r in result.predictions] == [["6", "5", "5"]] * 2
    assert [r["prediction"] for r in result.predictions] == ["5", "5"]
    prompts, config, n = calls[0]
    assert n == 3 and config.temperature == 0.5 and config.seed == 9 and config.max_new_tokens == 96
    assert config.stop == ["\n\n"]  # a rationale may span lines
    assert "The answer is" in prompts[0]  # the demonstration carries its rationale


def test_zero_shot_cot_asks_for_the_answer_in_a_second_call(monkeypatch):
    fake, calls = scripted(lambda p, j: " 7" if p.endswith("the answer is") else " 2 and 3 make 5.")
    monkeypatch.setattr(generation, "generate_texts", fake)
    result = evaluate(None, None, GEN, EvalSettings.from_fields(reasoning="cot"))
    first, second = calls[0][0], calls[1][0]
    assert first[0] == "Question: What is 2 + 3?\nAnswer: Let's think step by step."
    assert second[0] == first[0] + " 2 and 3 make 5. Therefore, the answer is"
    assert [r["prediction"] for r in result.predictions] == ["7", "7"]
    assert result.predictions[0]["outputs"] == [" 2 and 3 make 5. Therefore, the answer is 7"]


def test_generation_on_a_tiny_model_runs_end_to_end(tiny):
    model, tok = tiny
    result = evaluate(
        model, tok, "arithmetic-1", EvalSettings.from_fields(shots=2, limit=3, max_new_tokens=4)
    )
    assert result.n == 3 and 0.0 <= result.metrics["accuracy"] <= 1.0
    again = evaluate(
        model, tok, "arithmetic-1", EvalSettings.from_fields(shots=2, limit=3, max_new_tokens=4)
    )
    assert again.predictions == result.predictions


@pytest.mark.assets
def test_bbc_task_uses_the_fixed_split():
    from lmforge.data.labelled import load_labelled

    task = get_task("bbc-news")
    test = task.test()
    assert len(test) == 225 and [s.origin for s in test] == [
        e.origin for e in load_labelled("bbc-news", "test")
    ]
    assert len(task.pool()) == 1777
    assert set(task.verbalizer.labels) == {s.target for s in test}
