"""Tool use on SmolLM2-135M: a calculator in a ReAct loop, Toolformer-style tuning, and
constrained decoding of the calls.

The claims (handbook, "tool learning"; Schick et al., 2023; Yao et al., 2023): a small
model that cannot add 4-digit numbers in its head can with a calculator it knows how to
call, and it can learn when and how to call from data its own loss selected. At our scale,
on multi-step word problems with 3- and 4-digit quantities (exact answers):

    SmolLM2, no tools             ─► answers in its own words (the last number counts)
    SmolLM2 + calculator (ReAct)  ─► one worked demonstration, the first reply must call
    Toolformer data               ─► candidate calls on training rationales, kept where
                                     SmolLM2's loss drops, written as function-calling SFT
    LoRA SFT (lmforge finetune --task sft) ─► the tuned model, with and without the tool

Every ReAct run is made twice: calls generated under the calculator's JSON Schema
(constrained) and freely; the invalid-call rate counts calls that do not parse or do not
validate against the schema. Targets: tool use at least doubles accuracy; constrained
decoding brings invalid calls to 0%.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from lmforge.agents import LocalChatModel, Transcript, format_event, react_many
from lmforge.atomic import atomic_write_json
from lmforge.chat import chat_format, chat_stop_strings, chat_stop_tokens
from lmforge.config import from_dict
from lmforge.eval.arithmetic import Problem, generate_big_problems
from lmforge.hub import load_model, load_tokenizer
from lmforge.lab.base import experiment
from lmforge.lab.peft_compare import finetune_child
from lmforge.lab.tools_data import build_sft, demonstration
from lmforge.model.generate import SamplingConfig, generate
from lmforge.peft import load_adapter
from lmforge.plots import plot_bars
from lmforge.recipes.finetune import FinetuneConfig
from lmforge.report import Report
from lmforge.tokenizer import Tokenizer
from lmforge.tools import Toolbox, ToolCall, calculator

MODEL = "smollm2-135m-instruct"
NUMBER = re.compile(r"-?\d[\d,]*")
DIRECT_SYSTEM = "Solve the problem step by step. End with: The answer is N."


@dataclass(frozen=True)
class Condition:
    name: str
    model: str  # base | tuned
    tools: bool
    constrain: bool = True
    first: str = "auto"  # tool_choice of the first reply
    demo: bool = False  # one worked demonstration before the question


CONDITIONS = [
    Condition("SmolLM2, no tools", "base", False),
    Condition("SmolLM2 + calculator, constrained", "base", True, True, "required", True),
    Condition("SmolLM2 + calculator, free", "base", True, False, "required", True),
    Condition("tuned, no tools", "tuned", False),
    Condition("tuned + calculator, constrained", "tuned", True, True),
    Condition("tuned + calculator, free", "tuned", True, False),
]


def plan(quick: bool) -> dict[str, Any]:
    """Sizes: the full run is meant to fit ~55 minutes on 2 idle CPU cores, quick ~2."""
    if quick:
        return dict(per_digits=1, digits=(3, 4), steps=2, train=6, sampled=1, positions=1,
                    samples=1, threshold=0.3, max_steps=2, new_tokens=40, direct_tokens=32,
                    ft_steps=2, ft_batch=2, ft_length=640, lr=1e-3, rank=8)  # fmt: skip
    return dict(per_digits=15, digits=(3, 4), steps=2, train=96, sampled=24, positions=2,
                samples=2, threshold=0.3, max_steps=5, new_tokens=48, direct_tokens=96,
                ft_steps=40, ft_batch=4, ft_length=640, lr=1e-3, rank=16)  # fmt: skip


def final_number(text: str) -> int | None:
    found = NUMBER.findall(text or "")
    return int(found[-1].replace(",", "")) if found else None


def invalid_calls(log: Transcript, box: Toolbox) -> tuple[int, int]:
    """(call attempts, attempts that do not parse or do not validate) of one transcript."""
    attempts = invalid = 0
    for message in log.messages:
        for entry in message.get("tool_calls") or []:
            attempts += 1
            invalid += box.check(ToolCall.from_openai(entry))[2] is not None
    parse_errors = sum(e.kind == "error" and e.text.startswith("tool call ") for e in log.events)
    return attempts + parse_errors, invalid + parse_errors


def direct_answers(
    model: nn.Module, tokenizer: Tokenizer, problems: list[Problem], p: dict[str, Any]
) -> list[str]:
    """Replies without tools (a chat prompt; the model may reason before its answer)."""
    stops = chat_stop_strings(tokenizer)
    config = SamplingConfig(max_new_tokens=p["direct_tokens"], temperature=0.0, stop=stops)
    prompts = []
    for problem in problems:
        messages = [
            {"role": "system", "content": DIRECT_SYSTEM},
            {"role": "user", "content": problem.question},
        ]
        prompts.append(tokenizer.encode(chat_format(messages, tokenizer)))
    texts = []
    for i in range(0, len(prompts), 8):
        results = generate(
            model,
            prompts[i : i + 8],
            config,
            eos_token_id=chat_stop_tokens(tokenizer),
            pad_token_id=tokenizer.pad_id or 0,
            decode=tokenizer.decode,
        )
        texts += [r.text or "" for r in results]
    return texts


def run_condition(
    cond: Condition,
    model: nn.Module,
    tokenizer: Tokenizer,
    problems: list[Problem],
    demo: list[dict],
    p: dict[str, Any],
) -> dict[str, Any]:
    """Accuracy per digit count, calls per problem, invalid-call rate, one transcript."""
    start, box = time.time(), Toolbox([calculator])
    if not cond.tools:
        replies = direct_answers(model, tokenizer, problems, p)
        answers = [final_number(r) for r in replies]
        attempts = invalid = 0
        example = f"{problems[0].question}\n→ {replies[0]}"
    else:
        sampling = SamplingConfig(max_new_tokens=p["new_tokens"], temperature=0.0)
        chat = LocalChatModel(model, tokenizer, sampling, constrain=cond.constrain, batch=8)
        logs: list[Transcript] = []
        for i in tqdm(range(0, len(problems), 8), desc=cond.name, leave=False):
            questions = [q.question for q in problems[i : i + 8]]
            logs += react_many(chat, box, questions, examples=demo if cond.demo else (),
                               max_steps=p["max_steps"], first_tool_choice=cond.first)  # fmt: skip
        answers = [final_number(g.answer) if g.stop_reason == "answer" else None for g in logs]
        counts = [invalid_calls(g, box) for g in logs]
        attempts, invalid = sum(a for a, _ in counts), sum(b for _, b in counts)
        example = _show(logs[0])
    correct = [a == q.answer for a, q in zip(answers, problems)]
    by_digits = {}
    for d in p["digits"]:
        mine = [c for c, q in zip(correct, problems) if digits(q) == d]
        by_digits[d] = sum(mine) / max(1, len(mine))
    return {
        "name": cond.name,
        "accuracy": sum(correct) / len(problems),
        "by_digits": by_digits,
        "calls_per_problem": attempts / len(problems),
        "attempts": attempts,
        "invalid": invalid,
        "invalid_rate": invalid / attempts if attempts else None,
        "seconds": time.time() - start,
        "example": example,
    }


def _show(log: Transcript) -> str:
    return "\n".join(format_event(e) for e in log.events)


def digits(problem: Problem) -> int:
    """How many digits the problem's quantities have (those of its first number)."""
    return len(NUMBER.search(problem.question).group())


def tune(data: Path, examples: int, out: Path, p: dict[str, Any]) -> dict[str, Any]:
    """LoRA SFT on the Toolformer data (`lmforge finetune --task sft`, in a child process);
    every 10th conversation is held out for the validation loss once there are 20."""
    holdout = 10 if examples >= 20 else 0
    batch = max(1, min(p["ft_batch"], examples - (examples // holdout if holdout else 0)))
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(out),
            "model": MODEL,
            "method": "lora",
            "task": "sft",
            "delta": {"r": p["rank"], "alpha": 2 * p["rank"], "targets": "all-linear"},
            "data": {"source": str(data), "max_length": p["ft_length"], "holdout": holdout},
            "train": {
                "max_steps": p["ft_steps"],
                "batch_size": batch,
                "lr": p["lr"],
                "warmup_steps": max(1, p["ft_steps"] // 10),
                "eval_every": p["ft_steps"],
                "eval_batches": 4,
                "save_every": p["ft_steps"],
                "log_every": 5,
                "weight_decay": 0.0,
            },
        },
    )
    return finetune_child(cfg, out)


def tuned_model(run_dir: Path) -> nn.Module:
    model = load_model(MODEL)
    delta = load_adapter(str(run_dir), model)
    delta.merge()
    return delta.model.eval()


def problems(p: dict[str, Any], seed: int, n: int) -> list[Problem]:
    """n problems per digit count (test: seed 0; training rationales: seed 1)."""
    return [q for d in p["digits"] for q in generate_big_problems(n, p["steps"], d, seed)]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _ratio(a: float, b: float) -> str:
    ratio = a / b if b else (float("inf") if a else 1.0)
    return f"×{ratio:.1f}; {'meets' if ratio >= 2 else 'misses'} the target of ×2"


def verdict(rows: list[dict[str, Any]]) -> str:
    """The claims, read off the table: each constrained tool condition against the untuned
    model without tools (and the tuned one against itself); invalid calls free vs constrained."""
    acc = {r["name"]: r["accuracy"] for r in rows}
    base = acc.get("SmolLM2, no tools")
    lines = []
    for model in ("SmolLM2", "tuned"):
        tool, own = f"{model} + calculator, constrained", f"{model}, no tools"
        if tool in acc and base is not None:
            line = (f"{tool}: {_pct(acc[tool])} against {_pct(base)} for SmolLM2 without "
                    f"tools ({_ratio(acc[tool], base)})")  # fmt: skip
            if own != "SmolLM2, no tools" and own in acc:
                line += f", {_pct(acc[own])} for the tuned model without tools"
            lines.append(line + ".")
        rates = {r["name"].split(", ")[-1]: r["invalid_rate"] for r in rows
                 if r["name"].startswith(f"{model} + calculator")}  # fmt: skip
        if "constrained" in rates and "free" in rates:
            lines.append(f"{model}: invalid calls {_pct(rates['free'])} when free, "
                         f"{_pct(rates['constrained'])} constrained (target 0%).")  # fmt: skip
    return "\n".join(f"- {line}" for line in lines)


def tuning_sentence(p: dict[str, Any], ft: dict[str, Any]) -> str:
    """What the fine-tuning run did, or why it failed."""
    if "error" in ft:
        return f"Fine-tuning failed: {ft['error']}"
    loss = ft.get("val_loss")  # None when too few conversations to hold any out
    held = f"validation loss {loss:.3f}" if loss is not None else "no held-out set"
    return (
        f"LoRA r={p['rank']} (all linear layers), {p['ft_steps']} steps of {p['ft_batch']}: "
        f"{held}, {ft.get('train_examples', 0)} training conversations."
    )


def _write(report: Report, p: dict, rows: list, data: dict, ft: dict, out: Path) -> None:
    digits = list(p["digits"])
    report.table(
        ["condition", *[f"{d}-digit" for d in digits], "all", "calls / problem",
         "invalid calls", "time"],
        [[r["name"], *[_pct(r["by_digits"][d]) for d in digits], _pct(r["accuracy"]),
          f"{r['calls_per_problem']:.1f}", _pct(r["invalid_rate"]), f"{r['seconds']:.0f} s"]
         for r in rows],
        f"Multi-step word problems, {p['per_digits']} per digit count ({p['steps']} operations)",
    )  # fmt: skip
    report.text(verdict(rows))
    plot_bars(
        {r["name"]: 100 * r["accuracy"] for r in rows},
        report.figure("accuracy.png", "Accuracy per condition"),
        title="Multi-step arithmetic, SmolLM2-135M",
        ylabel="accuracy (%)",
    )
    report.table(
        ["τ (nats)", "kept calls", "of which right", "problems with a kept call at every step"],
        [[t, v["kept"], v["right"], v["covered"]] for t, v in data["thresholds"].items()],
        "The filter's threshold: how much it keeps, and how much of that is right (the "
        "result is the number the text writes there)",
    )
    by = data["by_source"]
    report.table(
        ["source", "candidates", "ran", "right", "kept", "kept and right",
         "mean loss drop of kept (nats)"],
        [[s, v["candidates"], v["executed"], v["right"], v["kept"], v["kept_right"],
          f"{v['mean_gain_kept']:.2f}"] for s, v in by.items()],
        f"Toolformer filter on {data['problems']} training rationales (τ = {p['threshold']}): "
        f"{data['covered']} problems had a kept call at every step and became SFT examples",
    )  # fmt: skip
    report.text(tuning_sentence(p, ft))
    for r in rows:
        if r["example"]:
            report.text(f"**{r['name']}**, first problem:\n\n```\n{r['example']}\n```")
    atomic_write_json(
        out / "results.json", {"plan": p, "rows": rows, "toolformer": data, "finetune": ft}
    )


def _conditions(
    model_name: str, model: nn.Module, tokenizer: Tokenizer, test: list[Problem], demo: list,
    p: dict[str, Any], out: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of one model's conditions; a row already in conditions.json for the same
    plan is reused, and each new one is saved at once (a stopped run resumes)."""
    saved = out / "conditions.json"
    kept = json.loads(saved.read_text()) if saved.exists() else {}
    if kept.get("plan") != json.loads(json.dumps(p)):
        kept = {"plan": p, "rows": {}}
    rows = []
    for cond in (c for c in CONDITIONS if c.model == model_name):
        if cond.name not in kept["rows"]:
            kept["rows"][cond.name] = run_condition(cond, model, tokenizer, test, demo, p)
            atomic_write_json(saved, kept)
        rows.append(kept["rows"][cond.name])
    return rows


def run_plan(p: dict[str, Any], out: Path) -> Report:
    """The whole experiment at the sizes of plan `p` (see `plan`)."""
    out.mkdir(parents=True, exist_ok=True)
    test, train = problems(p, 0, p["per_digits"]), problems(p, 1, p["train"] // len(p["digits"]))
    model, tokenizer = load_model(MODEL).eval(), load_tokenizer(MODEL)
    demo = demonstration(train[-1])
    rows = _conditions("base", model, tokenizer, test, demo, p, out)
    data = build_sft(model, tokenizer, train, p, out / "toolformer.jsonl")
    del model
    ft = {"error": "the filter kept no complete solution"}
    if data["covered"]:
        ft = tune(out / "toolformer.jsonl", data["covered"], out / "finetune", p)
    if "error" not in ft:
        rows += _conditions("tuned", tuned_model(out / "finetune"), tokenizer, test, demo, p, out)
    report = Report("Tool use: a calculator, Toolformer-style tuning, constrained calls", out)
    report.text(__doc__.split("\n\n", 1)[1].split("\n\n    ")[0])
    report.text(
        f"Settings: {MODEL}, fp32 on the CPU, greedy decoding, at most {p['max_steps']} ReAct "
        f"replies of {p['new_tokens']} tokens; the untuned model gets one worked "
        "demonstration and must call on its first reply; the tuned model gets neither."
    )
    _write(report, p, rows, data, ft, out)
    return report


@experiment(
    "tools",
    "A calculator the model learns to call at least doubles its accuracy on multi-step "
    "arithmetic with 3- and 4-digit numbers; constrained decoding makes every call valid.",
    minutes=55,
)
def run(out_dir: Path, quick: bool) -> Report:
    return run_plan(plan(quick), Path(out_dir))
