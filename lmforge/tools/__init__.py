"""Tool learning: tools from typed functions, safe built-in tools, call formats, constraints."""

from lmforge.tools.builtin import BUILTIN_TOOLS, ToolsConfig, make_toolbox
from lmforge.tools.calculator import calculate, calculator
from lmforge.tools.files import file_reader
from lmforge.tools.formats import CALL_FORMATS, ToolPrompt
from lmforge.tools.registry import Tool, Toolbox, ToolCall, ToolError, ToolResult, tool
from lmforge.tools.retrieval import index_search, retrieval_tool
from lmforge.tools.sandbox import SandboxLimits, SandboxResult, python_tool, run_python
from lmforge.tools.schema import function_schema

__all__ = [
    "BUILTIN_TOOLS",
    "CALL_FORMATS",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolPrompt",
    "ToolResult",
    "Toolbox",
    "ToolsConfig",
    "calculate",
    "calculator",
    "file_reader",
    "function_schema",
    "index_search",
    "make_toolbox",
    "python_tool",
    "retrieval_tool",
    "run_python",
    "tool",
]
