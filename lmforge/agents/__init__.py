"""Agents: ReAct, plan-and-execute and teams of roles, over any chat model and a Toolbox."""

from lmforge.agents.model import ChatModel, LocalChatModel, Reply, ScriptedModel
from lmforge.agents.plan import plan_and_execute
from lmforge.agents.react import Event, Transcript, format_event, react, react_many
from lmforge.agents.team import Message, Role, Team, TeamResult

__all__ = [
    "ChatModel",
    "Event",
    "LocalChatModel",
    "Message",
    "Reply",
    "Role",
    "ScriptedModel",
    "Team",
    "TeamResult",
    "Transcript",
    "format_event",
    "plan_and_execute",
    "react",
    "react_many",
]
