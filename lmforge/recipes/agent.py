"""`lmforge agent --tools calculator,python "question"`: a model answers with tools, step by step.

load model (+ adapter) ─► LocalChatModel (its chat template, constrained calls)
                      ─► Toolbox of the named built-in tools (tools/builtin.py)
                      ─► react | plan-and-execute, each event printed as it happens
                      ─► the answer (and the transcript as JSON with --transcript)

Sampling follows generate and chat: an unset setting is the checkpoint's
generation_config.json's, else greedy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

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
from lmforge.config import arg
from lmforge.errors import ConfigError
from lmforge.hub import GenerationDefaults, generation_defaults
from lmforge.recipes.source import ModelSource, SamplingFlags, describe_sampling, load_source
from lmforge.tools.builtin import BUILTIN_TOOLS, ToolsConfig, make_toolbox

MODES = ("react", "plan")


@dataclass
class AgentConfig(SamplingFlags, ModelSource):  # fields (and flags): model first
    question: str = arg("", positional=True, aliases=("--question",))  # the task
    tools: str = arg("calculator", choices=BUILTIN_TOOLS.names)  # comma-separated built-in tools
    mode: str = arg("react", choices=lambda: MODES)  # the loop; plan = plan-and-execute
    max_steps: int = 6  # most model replies (per plan step in plan mode)
    constrain: bool = True  # generate every call under its JSON Schema (it always parses)
    tool_choice: str = arg("auto", choices=lambda: TOOL_CHOICES)  # first reply (required: a call)
    system: str = ""  # system prompt; empty = the ReAct default
    max_new_tokens: int = 160  # most tokens per reply
    temperature: float | None = None  # 0 = greedy; default: the checkpoint's, else 0
    files_root: str = "."  # read_file reads beneath this directory only
    sandbox_seconds: float = 5.0  # python: wall-clock limit per program
    sandbox_memory_mb: int = 512  # python: address-space limit per program
    index: str = ""  # search: a knowledge index directory (`lmforge rag index --out DIR`)
    search_mode: str = "hybrid"  # search: bm25 | dense | hybrid
    search_k: int = 3  # search: passages per query
    transcript: str = ""  # write the transcript as JSON to this file (empty: do not)

    defaults: ClassVar[dict[str, Any]] = {**SamplingFlags.defaults, "temperature": 0.0}

    def validate(self) -> None:
        ModelSource.validate(self)
        self.sampling(GenerationDefaults({}, [], ""))  # the flags' own ranges
        if self.tool_choice not in TOOL_CHOICES:
            raise ConfigError(
                f"tool_choice {self.tool_choice!r} is unknown",
                fix="choose {tool_choice} from " + ", ".join(TOOL_CHOICES),
            )
        if self.mode not in MODES:
            raise ConfigError(
                f"mode {self.mode!r} is unknown", fix="choose {mode} from " + ", ".join(MODES)
            )

    def toolbox_config(self) -> ToolsConfig:
        names = [n.strip() for n in self.tools.split(",") if n.strip()]
        return ToolsConfig(
            names, self.files_root, self.sandbox_seconds, self.sandbox_memory_mb,
            index=self.index, search_mode=self.search_mode, search_k=self.search_k,
        )  # fmt: skip


def chat_model(cfg: AgentConfig, log: TextIO) -> LocalChatModel:
    """The model (its adapter merged where the method allows) as a chat model."""
    model, tokenizer = load_source(cfg, merge=True)
    sampling, origin = cfg.sampling(generation_defaults(cfg.model))
    log.write(describe_sampling(sampling, origin) + "\n")
    return LocalChatModel(model, tokenizer, sampling, constrain=cfg.constrain)


def run_agent(cfg: AgentConfig, out: TextIO | None = None) -> Transcript:
    """Run the agent on cfg.question, printing the transcript as it runs."""
    cfg.validate()
    if not cfg.question.strip():
        raise ConfigError(
            "no question given", fix='give one: lmforge agent --tools calculator "What is 6 * 7?"'
        )
    out = out or sys.stdout
    box = make_toolbox(cfg.toolbox_config())
    chat = chat_model(cfg, sys.stderr)

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
