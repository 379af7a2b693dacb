"""What `lmforge finetune` learns: one FINETUNE_TASKS entry per task.

    classification  labelled examples ─► template ─► log-likelihood of each class's whole
                    label word after the prompt; validation loss, then test accuracy
    causal-lm       a corpus in packed windows; next-token loss
    sft             instruction data in the model's chat template, loss on the assistant
                    tokens only, optionally packed; every `holdout`-th record validates

An entry turns (config, tokenizer, run directory) into TaskData: training batches,
validation batches, the objective and the test metrics read after training. A new task is
one more entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lmforge.data import (
    Batch,
    BatchSource,
    PackedBatches,
    ValidationBatches,
    build_shards,
    load_corpus,
    load_shards,
)
from lmforge.data.examples import ExampleBatches, fixed_batches
from lmforge.data.instruct import read_instructions
from lmforge.data.labelled import Example, check_split_sources, labelled_splits
from lmforge.data.sft import SFTBatches, collate_padded, encode_conversations
from lmforge.data.subsample import seeded_sample
from lmforge.errors import ConfigError
from lmforge.recipes.rundir import resumes
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer
from lmforge.train import Objective, default_objective
from lmforge.train.objectives import ClassificationObjective, LabelWords, accuracy

if TYPE_CHECKING:  # finetune.py holds the config and this registry's users
    from lmforge.recipes.finetune import FinetuneConfig


def _no_metrics(model: nn.Module) -> dict[str, Any]:
    return {}


@dataclass
class TaskData:
    train: BatchSource  # training batches (resumable)
    val: Iterable[Batch] | None  # validation batches (None: no validation loss)
    objective: Objective = default_objective  # the loss of one batch
    test: Callable[[nn.Module], dict[str, Any]] = _no_metrics  # metrics of the trained model
    facts: dict[str, Any] = field(default_factory=dict)  # what was read, for results.json


def _accept(cfg: FinetuneConfig) -> None:
    return None


@dataclass(frozen=True)
class FinetuneTask:
    prepare: Callable[[FinetuneConfig, Tokenizer, Path], TaskData]  # (config, tokenizer, run dir)
    check: Callable[[FinetuneConfig], None] = _accept  # refuses a config the task cannot use


FINETUNE_TASKS: Registry[FinetuneTask] = Registry("finetune task")


# ── classification ──────────────────────────────────────────────────────────────────────────


def encode_examples(
    examples: list[Example],
    tokenizer: Tokenizer,
    template: str,
    labels: list[str],
    max_length: int,
    reserve: int = 0,
) -> list[tuple[list[int], int]]:
    """Prompt token ids (the text cut so that prompt + `reserve` label tokens fit
    max_length) and class index per example."""
    head, tail = template.split("{text}", 1)
    before = tokenizer.input_specials[0]  # a BOS the checkpoint puts before every input
    head_ids, tail_ids = before + tokenizer.encode(head), tokenizer.encode(tail)
    budget = max_length - len(head_ids) - len(tail_ids) - reserve
    if budget < 1:
        raise ConfigError(
            f"data.template and the label words leave no room for text within {max_length} tokens",
            fix="shorten {data.template} or raise {data.max_length}",
        )
    index = {label: i for i, label in enumerate(labels)}
    rows = []
    for ex in examples:
        if ex.label not in index:
            raise ConfigError(f"{ex.origin}: label {ex.label!r} is not in data.labels {labels}")
        rows.append((head_ids + tokenizer.encode(ex.text)[:budget] + tail_ids, index[ex.label]))
    return rows


def label_words(cfg: FinetuneConfig, tokenizer: Tokenizer, labels: list[str]) -> LabelWords:
    """The word scored for each label: data.words[label], else the label itself."""
    unknown = sorted(set(cfg.data.words) - set(labels))
    if unknown:
        raise ConfigError(
            f"data.words names {unknown}, which are not labels of the data ({labels})",
            fix="map each label to its word in {data.words}",
        )
    where = "data.words" if cfg.data.words else "data.labels"
    return LabelWords.encode(tokenizer, [cfg.data.words.get(x, x) for x in labels], where)


def _check_classification(cfg: FinetuneConfig) -> None:
    check_split_sources(cfg.data.source, cfg.data.eval, cfg.data.test)
    if "{text}" not in cfg.data.template:
        raise ConfigError(
            "data.template must contain {text}, where each example's text goes",
            fix="put {{text}} in {data.template}",
        )


def classification(cfg: FinetuneConfig, tokenizer: Tokenizer, run_dir: Path) -> TaskData:
    """Labelled examples scored by the likelihood of each class's label word after the prompt."""
    d, bs, seed = cfg.data, cfg.train.batch_size, cfg.train.seed
    splits = labelled_splits(d.source, validation=d.eval, test=d.test, split_seed=d.split_seed)
    labels = d.labels or sorted({e.label for e in splits.train})
    words = label_words(cfg, tokenizer, labels)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    def rows(examples: list[Example], n: int) -> list[tuple[list[int], int]]:
        sample = seeded_sample(examples, n, seed)
        return encode_examples(
            sample, tokenizer, d.template, labels, d.max_length, words.longest - 1
        )

    train_rows = rows(splits.train, d.max_train)
    val = fixed_batches(rows(splits.validation, d.max_eval), bs, pad)
    test = fixed_batches(rows(splits.test, d.max_eval), bs, pad)

    def metrics(model: nn.Module) -> dict[str, Any]:
        return {"labels": labels, "test_accuracy": accuracy(model, test, words, d.normalize)}

    return TaskData(
        ExampleBatches(train_rows, bs, pad, seed=seed),
        val,
        ClassificationObjective(words, d.normalize),
        test=metrics,
        facts={
            "splits": splits.describe(),
            "label_words": {
                x: [w, len(t)] for x, w, t in zip(labels, words.words, words.sequences)
            },
        },
    )


FINETUNE_TASKS.add("classification", FinetuneTask(classification, _check_classification))


# ── causal-lm ───────────────────────────────────────────────────────────────────────────────


def causal_lm(cfg: FinetuneConfig, tokenizer: Tokenizer, run_dir: Path) -> TaskData:
    """A corpus (name, file or folder) cut into windows of data.max_length tokens."""
    corpus = load_corpus(cfg.data.source, skip_bad=cfg.data.skip_bad)
    build_shards(corpus, tokenizer, run_dir / "data", progress=False, must_reuse=resumes(cfg))
    train_tokens, val_tokens, _ = load_shards(run_dir / "data")
    n, bs = cfg.data.max_length, cfg.train.batch_size
    return TaskData(
        PackedBatches(train_tokens, n, bs, seed=cfg.train.seed),
        ValidationBatches(val_tokens, n, bs, max_batches=cfg.train.eval_batches),
    )


FINETUNE_TASKS.add("causal-lm", FinetuneTask(causal_lm))


# ── sft ─────────────────────────────────────────────────────────────────────────────────────


def sft(cfg: FinetuneConfig, tokenizer: Tokenizer, run_dir: Path) -> TaskData:
    """Conversations from instruction files (comma-separated), loss on the replies only."""
    d, bs = cfg.data, cfg.train.batch_size
    paths = [p for p in d.source.split(",") if p]
    records = read_instructions(paths, skip_bad=d.skip_bad, dedup=True)
    convs = seeded_sample(records.records, d.max_train, cfg.train.seed)
    examples, truncation = encode_conversations(convs, tokenizer, max_length=d.max_length)
    held = [e for i, e in enumerate(examples) if d.holdout and i % d.holdout == 0]
    train_ex = [e for i, e in enumerate(examples) if not (d.holdout and i % d.holdout == 0)]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return TaskData(
        SFTBatches(train_ex, bs, pad, pack=d.pack, max_length=d.max_length, seed=cfg.train.seed),
        [collate_padded(held[i : i + bs], pad) for i in range(0, len(held), bs)] or None,
        facts=dict(
            records=len(records),
            skipped=len(records.skipped),
            duplicates=records.duplicates,
            truncated=truncation.truncated,
            train_examples=len(train_ex),
            val_examples=len(held),
        ),
    )


FINETUNE_TASKS.add("sft", FinetuneTask(sft))
