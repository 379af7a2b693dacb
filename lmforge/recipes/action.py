"""An action of a verb with sub-commands (`lmforge data build flan`, `lmforge rag ask`): its
config dataclass (the flags) and the recipe that runs it. The CLI makes one command of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Action:
    help: str  # one line in the verb's list of actions
    config: type  # its config dataclass (the flags)
    run: Callable[[Any], Any]  # the recipe, called with the loaded config
    fixed: dict[str, str] = field(default_factory=dict)  # fields the action sets itself
