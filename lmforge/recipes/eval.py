"""`lmforge eval`: score a model (optionally with a fine-tuned delta) on a task.

load_model ─► [load_adapter(RUN_DIR)] ─► evaluate(task, settings) ─► out/results.json
                                                                      out/results.md
                                                                      out/predictions.jsonl

lmforge eval --model smollm2-135m-instruct --task bbc-news --shots 4 --selection nearest
lmforge eval --model runs/ft/model --adapter runs/ft --task bbc-news --calibrate true
lmforge eval --task arithmetic-2 --shots 4 --reasoning cot --samples 5
lmforge eval --task perplexity --data path/to/texts --max_tokens 20000
lmforge eval --task list
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg, pick, save_yaml
from lmforge.eval import (
    TASKS,
    ChoiceSettings,
    CommonSettings,
    EvalSettings,
    GenerationSettings,
    PerplexitySettings,
    TaskResult,
    evaluate,
    get_task,
    write_results,
)
from lmforge.recipes.source import ModelSource, load_source


# Bases in this order put the fields, and so the flags, in this order: model, demonstrations,
# then the settings of each kind of task.
@dataclass
class EvalConfig(
    PerplexitySettings, GenerationSettings, ChoiceSettings, CommonSettings, ModelSource
):
    """What to load and score, and every setting of the harness, flat (flags read --shots 4)."""

    task: str = arg("bbc-news", choices=TASKS.names)  # a task, a task file (.yaml/.jsonl) or list
    out: str = "runs/eval"  # directory for results.json, results.md and predictions.jsonl

    def settings(self) -> EvalSettings:
        """The harness settings: the common ones and one part per kind, from this config."""
        return EvalSettings(
            **vars(pick(CommonSettings, self)),
            choice=pick(ChoiceSettings, self),
            generate=pick(GenerationSettings, self),
            perplexity=pick(PerplexitySettings, self),
        )

    def validate(self) -> None:
        ModelSource.validate(self)
        self.settings().validate()


TASK_FILE_HINT = """
Your own task: --task FILE.yaml (a task file) or --task FILE.jsonl (records alone).
  kind: choice                      # choice | generate | perplexity
  data: reviews.jsonl               # one JSON record a line; fields fill the template
  template: "Review: {text}\\nSentiment:"
  labels: {positive: [good], negative: [bad]}
See docs/eval.md for every field."""


def task_listing() -> str:
    """One line per registered task (name, kind, description), then how to write your own."""
    rows = [f"{name:20} {TASKS.get(name).kind:11} {TASKS.get(name).description}" for name in TASKS]
    return "\n".join(rows) + "\n" + TASK_FILE_HINT


def run_eval(cfg: EvalConfig, *, progress: bool = True) -> TaskResult:
    """Evaluate and write config.yaml, results.json, results.md and predictions.jsonl."""
    get_task(cfg.task)  # an unknown task fails before the model loads
    model, tokenizer = load_source(cfg)
    result = evaluate(model, tokenizer, cfg.task, cfg.settings(), progress=progress)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    meta = {"model": cfg.model, "backend": cfg.backend, "adapter": cfg.adapter}
    write_results(result, out, meta)
    return result
