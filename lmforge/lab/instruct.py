"""Instruction tuning teaches a model a task through instructions, and the skill carries over
to phrasings it was never trained on.

FLAN (Wei et al., 2021) turned labelled datasets into instructions with several phrasings
per task and found that a model tuned on them follows instructions better, including new
ones. At our scale: SmolLM2-135M-Instruct is asked for the topic of BBC News articles,

    before tuning   ─► answers to the 6 "seen" phrasings and the 3 "held-out" ones
    LoRA SFT on training articles, seen phrasings only (loss on the answers)
    after tuning    ─► answers to the same test articles and phrasings

and each answer is scored by parsing the first topic word it names. The test articles are
the fixed BBC test split (lmforge/data/labelled.py); no test article and no held-out
phrasing is ever trained on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.atomic import atomic_write_json
from lmforge.chat import chat_format, chat_stop_strings, chat_stop_tokens
from lmforge.config import from_dict
from lmforge.data.flan import FlanConfig, build_flan
from lmforge.data.instruct import write_instructions
from lmforge.hub import load_model, load_tokenizer
from lmforge.lab.base import experiment
from lmforge.lab.peft_compare import finetune_child
from lmforge.model.generate import SamplingConfig, generate
from lmforge.peft import load_adapter
from lmforge.plots import plot_bars
from lmforge.recipes.finetune import FinetuneConfig
from lmforge.report import Report

MODEL = "smollm2-135m-instruct"
LABELS = ("business", "entertainment", "politics", "sport", "tech")
ANSWER = re.compile(r"\b(" + "|".join(LABELS) + r")\b")


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(train=16, test=6, chars=300, steps=2, batch=2, max_length=160, new=8, lr=1e-3)
    return dict(train=480, test=225, chars=600, steps=100, batch=8, max_length=256, new=16, lr=1e-3)


def parse_label(answer: str) -> str | None:
    """The first topic word the answer names (case-insensitive), or None."""
    found = ANSWER.search(answer.lower())
    return found.group(1) if found else None


def score(model, tokenizer, records: list, s: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of the parsed answers to the records' prompts, and a few examples."""
    config = SamplingConfig(
        max_new_tokens=s["new"], temperature=0.0, stop=chat_stop_strings(tokenizer)
    )
    prompts = [
        tokenizer.encode(chat_format(r.messages[:-1], tokenizer, add_generation_prompt=True))
        for r in records
    ]
    answers = []
    for i in range(0, len(prompts), 8):
        out = generate(
            model,
            prompts[i : i + 8],
            config,
            eos_token_id=chat_stop_tokens(tokenizer),
            decode=tokenizer.decode,
        )
        answers += [o.text for o in out]
    correct = [parse_label(a) == r.meta["label"] for a, r in zip(answers, records)]
    samples = [
        [r.meta["template_id"], r.meta["label"], " ".join(a.split())[:60]]
        for a, r in list(zip(answers, records))[:3]
    ]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "samples": samples}


def build_data(out_dir: Path, s: dict[str, Any]) -> tuple[Path, dict[str, list]]:
    train = build_flan(FlanConfig(split="train", max_records=s["train"], max_chars=s["chars"]))
    path = out_dir / "train.jsonl"
    write_instructions(train, path)
    tests = {
        phrasing: build_flan(
            FlanConfig(
                split="test",
                phrasings=phrasing,
                max_records=s["test"],
                seed=1,
                max_chars=s["chars"],
            )
        )
        for phrasing in ("seen", "heldout")
    }
    return path, tests


def sft(train_path: Path, out_dir: Path, s: dict[str, Any]) -> dict[str, Any]:
    run_dir = out_dir / "sft"
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(run_dir),
            "method": "lora",
            "delta": {"r": 8, "alpha": 16, "targets": "all-linear"},
            "task": "sft",
            "data": {"source": str(train_path), "max_length": s["max_length"], "holdout": 20},
            "train": {
                "max_steps": s["steps"],
                "batch_size": s["batch"],
                "lr": s["lr"],
                "warmup_steps": max(1, s["steps"] // 10),
                "eval_every": s["steps"],
                "eval_batches": 4,
                "save_every": s["steps"],
                "log_every": 5,
                "weight_decay": 0.0,
            },
        },
    )
    return {**finetune_child(cfg, run_dir), "run_dir": str(run_dir)}


def evaluate_both(adapter: str | None, tests: dict[str, list], s: dict[str, Any]) -> dict:
    tokenizer, model = load_tokenizer(MODEL), load_model(MODEL)
    if adapter:
        delta = load_adapter(adapter, model)
        delta.merge()
        model = delta.model
    return {name: score(model, tokenizer, records, s) for name, records in tests.items()}


@experiment("instruct", "Instruction tuning teaches a task and carries over to new phrasings.", 15)
def run(out_dir: Path, quick: bool) -> Report:
    s = settings(quick)
    report = Report("Instruction tuning SmolLM2-135M on BBC News topics", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    train_path, tests = build_data(out_dir, s)
    stages = tqdm(total=3, desc="instruct", unit="stage")
    before = evaluate_both(None, tests, s)
    stages.update()
    trained = sft(train_path, out_dir, s)
    stages.update()
    if "error" in trained:
        raise RuntimeError(f"instruction tuning failed: {trained['error']}")
    after = evaluate_both(trained["run_dir"], tests, s)
    stages.update()
    stages.close()
    report.text(
        f"Settings: {s['train']} training records (seen phrasings, articles cut to {s['chars']} "
        f"characters), LoRA r=8 on every linear layer, {s['steps']} steps of {s['batch']} "
        f"examples of at most {s['max_length']} tokens at lr {s['lr']:g}, loss on the answers; "
        f"{s['test']} test articles per phrasing set, greedy answers of at most {s['new']} "
        f"tokens. Training took {trained['train_seconds']:.0f} s."
    )
    rows = [
        [name, f"{100 * before[name]['accuracy']:.1f}%", f"{100 * after[name]['accuracy']:.1f}%"]
        for name in ("seen", "heldout")
    ]
    report.table(["phrasings", "before tuning", "after tuning"], rows, "Accuracy of parsed answers")
    bars = {
        f"{when}, {name}": 100 * r[name]["accuracy"]
        for when, r in (("before", before), ("after", after))
        for name in ("seen", "heldout")
    }
    plot_bars(bars, report.figure("accuracy.png", "Accuracy before and after"), ylabel="%")
    samples = [["before", *x] for x in before["heldout"]["samples"]]
    samples += [["after", *x] for x in after["heldout"]["samples"]]
    report.table(["model", "phrasing", "label", "answer"], samples, "Held-out phrasings: answers")
    results = {"settings": s, "before": before, "after": after, "sft": trained}
    atomic_write_json(out_dir / "results.json", results)
    return report
