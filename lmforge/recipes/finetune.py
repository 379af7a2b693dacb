"""Fine-tuning a real or native model with any delta method (or all weights) through the loop.

    load_model ─► peft.apply(method) ─► only the delta trains ─► train() ─► delta/ + results.json
                                                 ▲
         task=classification: labelled examples, verbalizer objective, test accuracy
         task=causal-lm:      a corpus in packed windows, next-token loss, perplexity
         task=sft:            instruction data (lmforge/data/instruct.py) in the model's chat
                              template, loss on assistant tokens only, optionally packed

Checkpoints hold only the trainable tensors, so a LoRA run checkpoints and resumes its
few thousand parameters, not the base model.
"""

from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_json
from lmforge.config import apply_overrides, from_dict, read_yaml, save_yaml
from lmforge.errors import ConfigError
from lmforge.train import TrainConfig, default_objective, seed_everything, train
from lmforge.train.distributed import setup as setup_distributed

TASKS = ("classification", "causal-lm", "sft")


@dataclass
class FinetuneDataConfig:
    source: str = "bbc-news"  # labelled dataset/JSONL; a corpus (causal-lm); instruction file(s)
    template: str = "{text}\nTopic:"  # classification prompt; {text} is the example's text
    labels: list[str] = field(default_factory=list)  # class names = label words (empty: from data)
    max_length: int = 256  # tokens per example (classification) or window (causal-lm)
    max_train: int = 0  # use at most this many training examples (0 = all)
    max_eval: int = 0  # score at most this many test examples (0 = all)
    pack: bool = False  # sft: several examples per row, no attention across them
    holdout: int = 20  # sft: every n-th record is held out for validation loss (0 = none)
    skip_bad: bool = False  # sft: skip malformed records (counted) instead of failing


@dataclass
class FinetuneConfig:
    run_dir: str = "runs/finetune"  # where checkpoints, metrics, the delta and results go
    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = "native"  # native | hf
    method: str = "lora"  # a delta method, "full" (every weight) or "none" (evaluate only)
    delta: dict[str, Any] = field(default_factory=dict)  # the method's fields, e.g. {r: 8}
    task: str = "classification"  # classification | causal-lm
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is unknown; choose from {', '.join(TASKS)}")
        if "{text}" not in self.data.template:
            raise ConfigError("data.template must contain {text}")
        if self.train.distributed == "fsdp":
            raise ConfigError(
                "finetune keeps the frozen base whole on every rank; use --train.distributed ddp"
            )


def load_config(path: str | Path | None, overrides: list[str]) -> FinetuneConfig:
    raw = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        return from_dict(FinetuneConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def encode_examples(
    examples, tokenizer, template: str, labels: list[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Prompt token ids (the text cut to fit max_length) and class index per example."""
    head, tail = template.split("{text}", 1)
    head_ids, tail_ids = tokenizer.encode(head), tokenizer.encode(tail)
    budget = max_length - len(head_ids) - len(tail_ids)
    if budget < 1:
        raise ConfigError(f"data.template leaves no room for text within {max_length} tokens")
    index = {label: i for i, label in enumerate(labels)}
    rows = []
    for ex in examples:
        if ex.label not in index:
            raise ConfigError(f"{ex.origin}: label {ex.label!r} is not in data.labels {labels}")
        rows.append((head_ids + tokenizer.encode(ex.text)[:budget] + tail_ids, index[ex.label]))
    return rows


def prepare_model(cfg: FinetuneConfig):
    """The base model with the method applied; returns (model to train, delta or None)."""
    from lmforge import peft
    from lmforge.hub import load_model

    quantize = None
    if cfg.method == "qlora":  # quantize while loading: the float model is never held
        quantize = peft.build("qlora", cfg.delta).quantization()
    model = load_model(cfg.model, backend=cfg.backend, quantize=quantize)
    if cfg.method in ("full", "none"):
        return model.requires_grad_(cfg.method == "full"), None
    if cfg.method not in peft.METHODS:
        raise ConfigError(
            f"unknown method {cfg.method!r}; registered: "
            f"{', '.join(['full', 'none', *peft.METHODS.names()])}"
        )
    delta = peft.apply(model, cfg.method, cfg.delta)
    return delta.model, delta


def _sample(examples: list, n: int, seed: int) -> list:
    """At most n examples, drawn without bias (dataset files are often sorted by class)."""
    if not n or n >= len(examples):
        return examples
    order = random.Random(seed).sample(range(len(examples)), n)
    return [examples[i] for i in sorted(order)]


def _classification_data(cfg: FinetuneConfig, tokenizer):
    from lmforge.data.examples import ExampleBatches, fixed_batches
    from lmforge.data.labelled import load_labelled
    from lmforge.train.objectives import ClassificationObjective, label_token_ids

    d, bs, seed = cfg.data, cfg.train.batch_size, cfg.train.seed
    train_ex = load_labelled(d.source, "train")
    labels = d.labels or sorted({e.label for e in train_ex})

    def rows(examples: list, n: int) -> list:
        return encode_examples(
            _sample(examples, n, seed), tokenizer, d.template, labels, d.max_length
        )

    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    train_rows = rows(train_ex, d.max_train)
    val_rows = rows(load_labelled(d.source, "validation"), d.max_eval)
    test_rows = rows(load_labelled(d.source, "test"), d.max_eval)
    label_ids = label_token_ids(tokenizer, labels)
    return (
        ExampleBatches(train_rows, bs, pad, seed=seed),
        fixed_batches(val_rows, bs, pad),
        fixed_batches(test_rows, bs, pad),
        ClassificationObjective(label_ids),
        label_ids,
        labels,
    )


def finetune(cfg: FinetuneConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (method "none": only evaluate) and write results.json; returns the results."""
    from lmforge.hub import load_tokenizer
    from lmforge.peft import count_parameters
    from lmforge.train import evaluate
    from lmforge.train.objectives import accuracy

    ctx = setup_distributed(cfg.train)  # one rank of several under torchrun, else alone
    progress = progress and ctx.is_main
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")
    with ctx.main_first():  # rank 0 converts an embedded model and builds shards first
        tokenizer = load_tokenizer(cfg.model)
        seed_everything(cfg.train.seed)  # the method's initial weights are the same everywhere
        model, delta = prepare_model(cfg)
        trainable, total = count_parameters(model)
        if progress:
            print(
                f"{cfg.method}: {trainable:,} trainable of {total:,} parameters "
                f"({100 * trainable / total:.3f}%)"
            )
        results: dict[str, Any] = {"method": cfg.method, "trainable": trainable, "total": total}
        if cfg.task == "classification":
            data, val, test, objective, label_ids, labels = _classification_data(cfg, tokenizer)
        elif cfg.task == "sft":
            (data, val), objective = _sft_data(cfg, tokenizer, results), None
        else:
            (data, val), objective = _causal_lm_data(cfg, tokenizer, run_dir), None
    start = time.time()
    if cfg.method == "none":  # the untuned baseline
        results["val_loss"] = evaluate(model, val, objective or default_objective)[0]
    else:
        result = train(
            model, data, cfg.train, run_dir, val_data=val, objective=objective, progress=progress
        )
        results.update(val_loss=result.val_loss, tokens_per_s=result.tokens_per_s)
    results["train_seconds"] = time.time() - start
    if not ctx.is_main:  # rank 0 scores the model and writes what the run leaves
        return results
    if cfg.task == "classification":
        results.update(labels=labels, test_accuracy=accuracy(model, test, label_ids))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if delta is not None:
        delta.save(run_dir / "delta")
    atomic_write_json(run_dir / "results.json", results)
    return results


def _causal_lm_data(cfg: FinetuneConfig, tokenizer, run_dir: Path):
    from lmforge.data import (
        PackedBatches,
        ValidationBatches,
        build_shards,
        load_corpus,
        load_shards,
    )

    corpus = load_corpus(cfg.data.source)
    build_shards(corpus, tokenizer, run_dir / "data", progress=False)
    train_tokens, val_tokens, _ = load_shards(run_dir / "data")
    n, bs = cfg.data.max_length, cfg.train.batch_size
    return (
        PackedBatches(train_tokens, n, bs, seed=cfg.train.seed),
        ValidationBatches(val_tokens, n, bs, max_batches=cfg.train.eval_batches),
    )


def _sft_data(cfg: FinetuneConfig, tokenizer, results: dict[str, Any]):
    """Training batches and validation batches of conversations; records what was read."""
    from lmforge.data.instruct import read_instructions
    from lmforge.data.sft import SFTBatches, collate_padded, encode_conversations

    d, bs = cfg.data, cfg.train.batch_size
    paths = [p for p in d.source.split(",") if p]
    records = read_instructions(paths, skip_bad=d.skip_bad, dedup=True)
    convs = _sample(records.records, d.max_train, cfg.train.seed)
    examples, truncation = encode_conversations(convs, tokenizer, max_length=d.max_length)
    held = [e for i, e in enumerate(examples) if d.holdout and i % d.holdout == 0]
    train_ex = [e for i, e in enumerate(examples) if not (d.holdout and i % d.holdout == 0)]
    results.update(
        records=len(records),
        skipped=len(records.skipped),
        duplicates=records.duplicates,
        truncated=truncation.truncated,
        train_examples=len(train_ex),
        val_examples=len(held),
    )
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    train = SFTBatches(train_ex, bs, pad, pack=d.pack, max_length=d.max_length, seed=cfg.train.seed)
    val = [collate_padded(held[i : i + bs], pad) for i in range(0, len(held), bs)] or None
    return train, val
