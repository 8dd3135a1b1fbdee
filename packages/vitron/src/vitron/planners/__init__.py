"""Planners that need no Vitron training: any transformers chat model or GGUF file, zero-shot, its
replies held to the invocation grammar (see ``docs/planner.md``)."""

from vitron.planners.catalog import BUILTIN_PLANNERS, open_planner
from vitron.planners.chat import ChatPlanner, PlannerAssistant, ReplyStats, require_grammar_engine
from vitron.planners.grammar import GrammarLimits, PlannerGrammar, describe_tasks
from vitron.planners.regions import CONVENTIONS, convention_of, describe_region

__all__ = [
    "BUILTIN_PLANNERS",
    "CONVENTIONS",
    "ChatPlanner",
    "GrammarLimits",
    "PlannerAssistant",
    "PlannerGrammar",
    "ReplyStats",
    "convention_of",
    "describe_region",
    "describe_tasks",
    "open_planner",
    "require_grammar_engine",
]
