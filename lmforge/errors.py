"""One exception type per kind of mistake a user can make.

Each message names the file, line or field at fault and says how to fix it. A fix that is a
setting names it in braces — `{skip_bad=true}`, `{max_new_tokens}` — because the same setting
is spelt differently where it is typed:

    str(error)                 ... or pass skip_bad=True to skip it       (Python keywords)
    lmforge data stats         ... or pass --skip_bad to skip it          (that verb's flag)
    lmforge pretrain           ... or pass --data.skip_bad to skip it
"""

from __future__ import annotations

import re
from collections.abc import Callable

# {name} or {name=value}; {a|b} names the same setting as each caller may call it (the
# first that a verb has); {{ and }} are literal braces
SETTING = re.compile(r"\{\{|\}\}|\{([A-Za-z_][\w.|]*)(?:=([^{}]*))?\}")
Spell = Callable[[str, "str | None"], str]  # (setting, value or None) -> how it is typed


def python_spelling(name: str, value: str | None) -> str:
    """`skip_bad=True`, `max_new_tokens`: a setting as a Python keyword argument."""
    name = name.split("|")[0]
    if value is None:
        return name
    words = {"true": "True", "false": "False", "null": "None"}
    return f"{name}={words.get(value, value)}"


class LmforgeError(Exception):
    """Base class of every error lmforge raises on purpose.

    `fix` says how to fix it, naming settings as `{name}` or `{name=value}` (see above);
    `{{` and `}}` are literal braces."""

    def __init__(self, message: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix

    def render(self, spell: Spell = python_spelling) -> str:
        """The message with its fix, each setting spelt by `spell`."""
        if not self.fix:
            return self.message
        literal = {"{{": "{", "}}": "}"}
        fix = SETTING.sub(lambda m: literal.get(m[0]) or spell(m[1], m[2]), self.fix)
        return f"{self.message}; {fix}"

    def __str__(self) -> str:
        return self.render()


class ConfigError(LmforgeError, ValueError):
    """A configuration field is unknown, ill-typed or out of range."""


class DataError(LmforgeError, ValueError):
    """Input data is empty, undecodable or malformed (names file and line/offset)."""


class AssetError(LmforgeError, FileNotFoundError):
    """An embedded model or corpus package is missing or does not verify."""


class CheckpointError(LmforgeError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model shape."""


class TrainingDivergedError(LmforgeError, FloatingPointError):
    """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


class RegistryError(LmforgeError, KeyError):
    """A name was looked up in a registry that does not hold it."""


class RunInterrupted(LmforgeError):
    """A run stopped on SIGTERM or SIGINT after saving a checkpoint; rerunning resumes it."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # what a shell reports for that signal


class CheckpointWarning(UserWarning):
    """A checkpoint was unreadable and an older one was used instead."""
