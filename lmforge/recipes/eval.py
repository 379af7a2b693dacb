"""`lmforge eval`: score a model (optionally with a fine-tuned delta) on a task.

load_model ─► [load_delta(RUN_DIR/delta)] ─► evaluate(task, settings) ─► out/results.json
                                                                          out/results.md
                                                                          out/predictions.jsonl

lmforge eval --model smollm2-135m-instruct --task bbc-news --shots 4 --selection nearest
lmforge eval --model runs/ft/model --adapter runs/ft --task bbc-news --calibrate true
lmforge eval --task arithmetic-2 --shots 4 --reasoning cot --samples 5
lmforge eval --task perplexity --data path/to/texts --max_tokens 20000
lmforge eval --task list
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmforge.config import apply_overrides, from_dict, read_yaml, save_yaml
from lmforge.errors import ConfigError
from lmforge.eval import TASKS, EvalSettings, TaskResult, evaluate, get_task, write_results


@dataclass
class EvalConfig(EvalSettings):
    """The harness settings (EvalSettings, flat so flags read --shots 4) plus what to load."""

    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = "native"  # native | hf
    adapter: str = ""  # a finetune run directory, its delta/ or a peft adapter directory
    task: str = "bbc-news"  # a registered task; `list` prints them
    out: str = "runs/eval"  # directory for results.json, results.md and predictions.jsonl

    def settings(self) -> EvalSettings:
        """The harness settings: every field of EvalSettings, taken from this config."""
        return EvalSettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalSettings)}
        )

    def validate(self) -> None:
        if self.backend not in ("native", "hf"):
            raise ConfigError(f"backend {self.backend!r} is unknown; choose native or hf")
        self.settings().validate()


def load_config(path: str | Path | None, overrides: list[str]) -> EvalConfig:
    raw = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        return from_dict(EvalConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def task_listing() -> str:
    """One line per registered task: name, kind, description."""
    return "\n".join(
        f"{name:20} {TASKS.get(name).kind:11} {TASKS.get(name).description}" for name in TASKS
    )


def load_for_eval(cfg: EvalConfig):
    """(model in eval mode with the adapter applied, tokenizer)."""
    from lmforge.hub import load_model, load_tokenizer
    from lmforge.peft import load_adapter

    tokenizer = load_tokenizer(cfg.model)
    model: nn.Module = load_model(cfg.model, backend=cfg.backend)
    if cfg.adapter:
        model = load_adapter(cfg.adapter, model).model
    return model.eval(), tokenizer


def run_eval(cfg: EvalConfig, *, progress: bool = True) -> TaskResult:
    """Evaluate and write config.yaml, results.json, results.md and predictions.jsonl."""
    get_task(cfg.task)  # an unknown task fails before the model loads
    model, tokenizer = load_for_eval(cfg)
    result = evaluate(model, tokenizer, cfg.task, cfg.settings(), progress=progress)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    meta = {"model": cfg.model, "backend": cfg.backend, "adapter": cfg.adapter}
    write_results(result, out, meta)
    return result
