"""`lmforge agent --tools calculator,python "question"`: a model answers with tools, step by step.

load model (+ adapter) ─► LocalChatModel (its chat template, constrained calls)
                      ─► Toolbox of the named built-in tools (tools/builtin.py)
                      ─► react | plan-and-execute, each event printed as it happens
                      ─► the answer (and the transcript as JSON with --transcript)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lmforge.agents import (
    Event,
    LocalChatModel,
    Transcript,
    format_event,
    plan_and_execute,
    react,
)
from lmforge.agents.model import TOOL_CHOICES
from lmforge.agents.react import REACT_SYSTEM
from lmforge.config import apply_overrides, from_dict, read_yaml
from lmforge.errors import ConfigError
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig
from lmforge.peft.loading import load_adapter
from lmforge.tools.builtin import ToolsConfig, make_toolbox

MODES = ("react", "plan")


@dataclass
class AgentConfig:
    question: str = ""  # the task (the verb's positional argument sets it too)
    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = "native"  # native | hf
    adapter: str = ""  # a finetune run directory, its delta/ or a peft adapter directory
    tools: str = "calculator"  # comma-separated built-in tools: calculator, python, read_file
    mode: str = "react"  # react | plan (plan-and-execute)
    max_steps: int = 6  # most model replies (per plan step in plan mode)
    constrain: bool = True  # generate every call under its JSON Schema (it always parses)
    tool_choice: str = "auto"  # the first reply: auto | required (it must call a tool) | none
    system: str = ""  # system prompt; empty = the ReAct default
    max_new_tokens: int = 160  # most tokens per reply
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0  # sampling seed (when temperature > 0)
    files_root: str = "."  # read_file reads beneath this directory only
    sandbox_seconds: float = 5.0  # python: wall-clock limit per program
    sandbox_memory_mb: int = 512  # python: address-space limit per program
    transcript: str = ""  # write the transcript as JSON to this file (empty: do not)

    def validate(self) -> None:
        if self.tool_choice not in TOOL_CHOICES:
            raise ConfigError(
                f"tool_choice {self.tool_choice!r}: choose from {', '.join(TOOL_CHOICES)}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; choose from {', '.join(MODES)}")

    def toolbox_config(self) -> ToolsConfig:
        names = [n.strip() for n in self.tools.split(",") if n.strip()]
        return ToolsConfig(names, self.files_root, self.sandbox_seconds, self.sandbox_memory_mb)


def load_config(path: str | Path | None, overrides: list[str]) -> AgentConfig:
    raw = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        return from_dict(AgentConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def chat_model(cfg: AgentConfig) -> LocalChatModel:
    """The model (with its adapter merged where the method allows) as a chat model."""
    model = load_model(cfg.model, backend=cfg.backend)
    if cfg.adapter:
        delta = load_adapter(cfg.adapter, model)
        if delta.mergeable:
            delta.merge()
        model = delta.model
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed
    )
    return LocalChatModel(
        model.eval(), load_tokenizer(cfg.model), sampling, constrain=cfg.constrain
    )


def run_agent(cfg: AgentConfig, out: TextIO | None = None) -> Transcript:
    """Run the agent on cfg.question, printing the transcript as it runs."""
    cfg.validate()
    if not cfg.question.strip():
        raise ConfigError('give the question: lmforge agent --tools calculator "What is 17 * 23?"')
    out = out or sys.stdout
    box = make_toolbox(cfg.toolbox_config())
    chat = chat_model(cfg)

    def show(event: Event) -> None:
        out.write(format_event(event) + "\n")
        out.flush()

    if cfg.mode == "plan":
        log = plan_and_execute(chat, box, cfg.question, max_steps=cfg.max_steps, on_event=show)
    else:
        system = cfg.system or REACT_SYSTEM
        log = react(chat, box, cfg.question, system=system, max_steps=cfg.max_steps,
                    first_tool_choice=cfg.tool_choice, on_event=show)  # fmt: skip
    if cfg.transcript:
        log.save(cfg.transcript)
    return log
