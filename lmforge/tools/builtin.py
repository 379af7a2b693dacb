"""The built-in tools by name, as `lmforge agent --tools calculator,python,read_file` builds them.

calculator   arithmetic through the syntax tree (calculator.py)
python       a program in the sandbox: no network, no host files, limits (sandbox.py)
read_file    text files beneath one directory (files.py)
search       passages of a knowledge index built by `lmforge rag index` (retrieval.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.errors import ConfigError
from lmforge.registry import Registry
from lmforge.tools.calculator import calculator
from lmforge.tools.files import file_reader
from lmforge.tools.registry import Tool, Toolbox
from lmforge.tools.retrieval import index_search
from lmforge.tools.sandbox import SandboxLimits, python_tool


@dataclass
class ToolsConfig:
    names: list[str] = field(default_factory=lambda: ["calculator"])  # tools the agent may call
    root: str = "."  # read_file reads beneath this directory only
    seconds: float = 5.0  # python: wall-clock limit per program
    memory_mb: int = 512  # python: address-space limit
    disk_mb: int = 16  # python: size of its writable working directory
    index: str = ""  # search: the knowledge index directory (`lmforge rag index --out`)
    search_mode: str = "hybrid"  # search: bm25 | dense | hybrid
    search_k: int = 3  # search: passages per query

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
BUILTIN_TOOLS.add("search", lambda cfg: index_search(cfg.index, cfg.search_mode, cfg.search_k))


def make_toolbox(cfg: ToolsConfig) -> Toolbox:
    """The Toolbox of the named built-in tools."""
    unknown = [n for n in cfg.names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ConfigError(
            f"unknown tool {unknown[0]!r}; choose from {', '.join(BUILTIN_TOOLS)}",
            fix="name them with commas: {tools|names=calculator,python}",
        )
    return Toolbox(BUILTIN_TOOLS.get(n)(cfg) for n in cfg.names)
