"""Generation tasks: generate an answer, read it out of the text, compare with the gold one.

    prompt ─► generate (greedy; or N samples at temperature T) ─► extract ─► vote ─► metric
      │                                                            ▲
      └─ zero-shot CoT: prompt + " Let's think step by step." ─► rationale
                        + " Therefore, the answer is" ─► generate ─┘   (Kojima et al., 2022)

The reasoning style (prompting/cot.py) decides how demonstrations show their answers
(bare, or a worked rationale ending "The answer is N.") and which extractor reads the
generated text. With samples > 1 every question is answered N times by sampling and the
most frequent extracted answer wins (self-consistency, Wang et al., 2023).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from torch import nn
from tqdm import tqdm

from lmforge.eval.base import (
    KINDS,
    EvalSettings,
    GenerationTask,
    TaskKind,
    TaskResult,
    select_demos,
    shots_phrase,
    task_samples,
)
from lmforge.eval.metrics import mean_metric
from lmforge.model.generate import SamplingConfig, generate
from lmforge.prompting.cot import EXTRACTORS, REASONING, majority_vote
from lmforge.prompting.template import Sample
from lmforge.tokenizer import EOS_CANDIDATES, Tokenizer


def stop_ids(tokenizer: Tokenizer) -> list[int]:
    """The tokenizer's EOS and every other end-of-text token it holds."""
    ids = [tokenizer.eos_id] + [tokenizer.token_to_id(t) for t in EOS_CANDIDATES]
    return sorted({i for i in ids if i is not None})


def generate_texts(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    *,
    n: int = 1,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[str]]:
    """n continuations of every prompt, batched by prompt length; [prompt][sample] texts."""
    ids = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    rows = [i for i in range(len(prompts)) for _ in range(n)]  # prompt of each generated row
    order = sorted(range(len(rows)), key=lambda j: len(ids[rows[j]]))
    texts: list[str] = [""] * len(rows)
    starts = range(0, len(order), batch_size)
    for b, start in enumerate(tqdm(starts, desc="generate", unit="batch", disable=not progress)):
        chunk = order[start : start + batch_size]
        seed = None if config.seed is None else config.seed + b  # a fixed stream per batch
        results = generate(
            model,
            [ids[rows[j]] for j in chunk],
            dataclasses.replace(config, seed=seed),
            eos_token_id=stop_ids(tokenizer),
            pad_token_id=tokenizer.pad_id or 0,
            decode=tokenizer.decode,
            truncate=True,  # a prompt longer than the context keeps its last tokens
        )
        for j, result in zip(chunk, results):
            texts[j] = result.text or ""
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def run_generation(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: GenerationTask,
    s: EvalSettings,
    *,
    embed: Callable | None = None,
    progress: bool = False,
) -> TaskResult:
    """The task's metrics of the (majority-voted) extracted answers."""
    start = time.time()
    g = s.generate
    style = REASONING.get(g.reasoning)
    test, pool = task_samples(task, tokenizer, s)
    demos = select_demos(task, test, pool, s, embed)
    prompts = [
        task.format.render(q.fields, [(d, style.demo_answer(d)) for d in ds])
        for q, ds in zip(test, demos)
    ]
    zero_shot = s.shots == 0 and bool(style.zero_shot_trigger)
    if zero_shot:
        prompts = [f"{p} {style.zero_shot_trigger}" for p in prompts]
    config = sampling_config(task, s, style.rationale)
    outputs = generate_texts(
        model, tokenizer, prompts, config, n=g.samples, batch_size=s.batch_size, progress=progress
    )
    read, extract = outputs, EXTRACTORS.get(style.extractor or task.extract)
    if zero_shot and style.answer_trigger:  # second stage: ask for the answer itself
        read = answer_stage(model, tokenizer, prompts, outputs, style.answer_trigger, task, s)
        outputs = [
            [f"{r} {style.answer_trigger}{a}" for r, a in zip(rs, answers)]
            for rs, answers in zip(outputs, read)
        ]
        extract = EXTRACTORS.get(task.extract)
    answers = [[extract(text) for text in texts] for texts in read]
    result = scored(task, s, test, answers, outputs, time.time() - start)
    result.example_prompt = prompts[0] if prompts else ""
    return result


def sampling_config(task: GenerationTask, s: EvalSettings, rationale: bool) -> SamplingConfig:
    """Greedy for one answer per question, sampling at the temperature for several."""
    g, default = s.generate, task.cot_new_tokens if rationale else task.max_new_tokens
    return SamplingConfig(
        max_new_tokens=g.max_new_tokens or default,
        temperature=g.temperature if g.samples > 1 else 0.0,
        seed=s.seed,
        stop=list(task.cot_stop if rationale else task.stop),
    )


def scored(
    task: GenerationTask,
    s: EvalSettings,
    test: list[Sample],
    answers: list[list[str | None]],
    outputs: list[list[str]],
    seconds: float,
) -> TaskResult:
    """Majority vote per question, the task's metrics, one record per question."""
    predicted = [majority_vote(a) for a in answers]
    shown = [p if p is not None else "" for p in predicted]  # no answer scores as ""
    records = [
        {
            "origin": x.origin,
            "target": x.target,
            "prediction": p,
            "correct": p == x.target,
            "answers": a,
            "outputs": texts,
        }
        for x, p, a, texts in zip(test, predicted, answers, outputs)
    ]
    return TaskResult(
        task=task.name,
        metrics={m: mean_metric(m, shown, [x.target for x in test]) for m in task.metrics},
        n=len(test),
        seconds=seconds,
        settings=s.record(s.generate),
        predictions=records,
    )


def answer_stage(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[str],
    rationales: list[list[str]],
    trigger: str,
    task: GenerationTask,
    s: EvalSettings,
) -> list[list[str]]:
    """Zero-shot CoT's second call: prompt + rationale + trigger → the answer text (greedy)."""
    second = [f"{p}{r} {trigger}" for p, rs in zip(prompts, rationales) for r in rs]
    config = SamplingConfig(
        max_new_tokens=task.max_new_tokens, temperature=0.0, stop=list(task.stop)
    )
    answers = iter(generate_texts(model, tokenizer, second, config, batch_size=s.batch_size))
    return [[next(answers)[0] for _ in rs] for rs in rationales]


def describe_generation(settings: dict) -> str:
    """'0-shot, cot, 5 samples'."""
    text = f"{shots_phrase(settings)}, {settings['reasoning']}"
    return text + (f", {settings['samples']} samples" if settings["samples"] > 1 else "")


KINDS.add("generate", TaskKind(run_generation, describe_generation))
