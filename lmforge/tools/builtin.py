"""The built-in tools by name, as `lmforge agent --tools calculator,python,read_file` builds them.

    calculator   arithmetic through the syntax tree (calculator.py)
    python       a program in the sandbox: no network, no host files, limits (sandbox.py)
    read_file    text files beneath one directory (files.py)

A retrieval tool needs a knowledge index object: build it in Python with
`lmforge.tools.retrieval_tool(index)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.errors import ConfigError
from lmforge.registry import Registry
from lmforge.tools.calculator import calculator
from lmforge.tools.files import file_reader
from lmforge.tools.registry import Tool, Toolbox
from lmforge.tools.sandbox import SandboxLimits, python_tool


@dataclass
class ToolsConfig:
    names: list[str] = field(default_factory=lambda: ["calculator"])  # tools the agent may call
    root: str = "."  # read_file reads beneath this directory only
    seconds: float = 5.0  # python: wall-clock limit per program
    memory_mb: int = 512  # python: address-space limit
    disk_mb: int = 16  # python: size of its writable working directory

    def sandbox(self) -> SandboxLimits:
        return SandboxLimits(
            seconds=self.seconds,
            cpu_seconds=max(1, int(self.seconds)),
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
        )


BUILTIN_TOOLS: Registry[Callable[[ToolsConfig], Tool]] = Registry("tool")
BUILTIN_TOOLS.add("calculator", lambda cfg: calculator)
BUILTIN_TOOLS.add("python", lambda cfg: python_tool(cfg.sandbox()))
BUILTIN_TOOLS.add("read_file", lambda cfg: file_reader(cfg.root))


def make_toolbox(cfg: ToolsConfig) -> Toolbox:
    """The Toolbox of the named built-in tools."""
    unknown = [n for n in cfg.names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ConfigError(
            f"tools.names: unknown tool {unknown[0]!r}; choose from {', '.join(BUILTIN_TOOLS)} "
            "(e.g. --tools calculator,python)"
        )
    return Toolbox(BUILTIN_TOOLS.get(n)(cfg) for n in cfg.names)
