"""Choice tasks: every label is scored by the log-likelihood of its words after the prompt.

    prompt_i   = format.render(query_i, demonstrations_i)
    score(i,c) = log Σ_w exp(norm(log p(answer(w) | prompt_i)))    w: the words of label c

log p(answer(w) | prompt) is the likelihood of the word's whole token sequence, however
many tokens it takes (a Chinese word is often six byte-level tokens), computed with the
prompt once (eval/loglik.py). Two words spelt by the same tokens are refused.
    p_i        = softmax_c score(i, ·)
    calibrate: the same prompt with content-free queries ("N/A", "[MASK]", "") gives p_cf_i,
               and q_i = softmax(p_i / p_cf_i)   (Zhao et al., 2021)
    prediction = argmax_c

With "sum" normalisation and one word per label, p_i is the label words' probability
renormalised over the labels, as in Zhao et al.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError, DataError
from lmforge.eval.base import (
    KINDS,
    ChoiceTask,
    EvalSettings,
    TaskKind,
    TaskResult,
    select_demos,
    shots_phrase,
    task_samples,
)
from lmforge.eval.loglik import Request, choice_scores, context_length, encode_request
from lmforge.eval.metrics import mean_metric
from lmforge.model.continuations import check_label_sequences
from lmforge.prompting.calibration import CONTENT_FREE, ContextualCalibration, content_free_fields
from lmforge.prompting.template import PromptFormat, Verbalizer
from lmforge.tokenizer import Tokenizer


def class_scores(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[str],
    fmt: PromptFormat,
    verbalizer: Verbalizer,
    s: EvalSettings,
    progress: bool = False,
) -> Tensor:
    """(N, C) log-scores of each label after each prompt (log-sum-exp over its words)."""
    words = [
        (c, fmt.answer_text(w))
        for c, lab in enumerate(verbalizer.labels)
        for w in verbalizer.words[lab]
    ]
    flat = choice_scores(
        model,
        tokenizer,
        prompts,
        [[text for _, text in words]] * len(prompts),
        normalize=s.choice.normalize,
        batch_size=s.batch_size,
        max_length=s.max_length,
        progress=progress,
    )
    per_word = torch.tensor(flat, dtype=torch.float64).view(len(prompts), len(words))  # (N, W)
    owner = torch.tensor([c for c, _ in words])  # (W,)
    columns = [per_word[:, owner == c].logsumexp(dim=-1) for c in range(len(verbalizer.labels))]
    return torch.stack(columns, dim=-1)  # (N, C)


def check_words(
    model: nn.Module, tokenizer: Tokenizer, task: ChoiceTask, prompt: str, s: EvalSettings
) -> None:
    """Refuse words the tokenizer spells alike after `prompt`; flag lone byte pieces."""
    limit = context_length(model, s.max_length)
    sequences = {}
    for words in task.verbalizer.words.values():
        for w in words:
            whole, n = encode_request(tokenizer, Request(prompt, task.format.answer_text(w)), limit)
            sequences[w] = whole[n:]
    check_label_sequences(tokenizer, sequences, f"task {task.name!r}: the verbalizer's words")


def calibrated(
    model: nn.Module,
    tokenizer: Tokenizer,
    scores: Tensor,
    shown: list[list],
    task: ChoiceTask,
    s: EvalSettings,
) -> Tensor:
    """(N, C) calibrated probabilities; content-free prompts keep each example's demos."""
    fmt = task.format
    cf_prompts = [
        fmt.render(content_free_fields(fmt.template.fields, text), demos)
        for demos in shown
        for text in CONTENT_FREE
    ]  # identical prompts (shared demonstrations) are scored once
    cf = class_scores(model, tokenizer, cf_prompts, fmt, task.verbalizer, s)
    cf = cf.view(len(shown), len(CONTENT_FREE), -1)  # (N, N_cf, C)
    rows = [ContextualCalibration.fit(cf[i])(scores[i : i + 1])[0] for i in range(len(shown))]
    return torch.stack(rows)  # (N, C)


def run_choice(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: ChoiceTask,
    s: EvalSettings,
    *,
    embed: Callable | None = None,
    progress: bool = False,
) -> TaskResult:
    """Accuracy (and the task's other metrics) of the best-scoring label per example."""
    if task.verbalizer is None:
        raise ConfigError(f"choice task {task.name!r} has no verbalizer")
    start = time.time()
    test, pool = task_samples(task, tokenizer, s)
    labels = task.verbalizer.labels
    for x in test:
        if x.target not in labels:
            raise DataError(f"{x.origin}: label {x.target!r} is not one of {labels}")
    demos = select_demos(task, test, pool, s, embed)
    shown = [[(d, task.verbalizer.word(d.target)) for d in ds] for ds in demos]
    prompts = [task.format.render(q.fields, sh) for q, sh in zip(test, shown)]
    if prompts:
        check_words(model, tokenizer, task, prompts[0], s)
    scores = class_scores(model, tokenizer, prompts, task.format, task.verbalizer, s, progress)
    probs = scores.softmax(dim=-1)  # (N, C)
    if s.choice.calibrate:
        probs = calibrated(model, tokenizer, scores, shown, task, s)
    predicted = [labels[int(i)] for i in probs.argmax(dim=-1)]
    targets = [x.target for x in test]
    records = [
        {
            "origin": x.origin,
            "target": x.target,
            "prediction": p,
            "correct": p == x.target,
            "probabilities": dict(zip(labels, [round(float(v), 6) for v in row])),
        }
        for x, p, row in zip(test, predicted, probs)
    ]
    return TaskResult(
        task=task.name,
        metrics={m: mean_metric(m, predicted, targets) for m in task.metrics},
        n=len(test),
        seconds=time.time() - start,
        settings=s.record(s.choice),
        predictions=records,
        example_prompt=prompts[0] if prompts else "",
    )


def describe_choice(settings: dict) -> str:
    """'4-shot random, calibrated'."""
    return shots_phrase(settings) + (", calibrated" if settings["calibrate"] else "")


KINDS.add("choice", TaskKind(run_choice, describe_choice))
