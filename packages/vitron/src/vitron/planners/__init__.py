"""Planners that need no Vitron training: any transformers chat model, zero-shot, its replies held
to the invocation grammar (see ``docs/planner.md``)."""

from vitron.planners.chat import ChatPlanner, PlannerAssistant, require_grammar_engine
from vitron.planners.grammar import GrammarLimits, PlannerGrammar, describe_tasks
from vitron.planners.regions import CONVENTIONS, convention_of, describe_region

__all__ = [
    "CONVENTIONS",
    "ChatPlanner",
    "GrammarLimits",
    "PlannerAssistant",
    "PlannerGrammar",
    "convention_of",
    "describe_region",
    "describe_tasks",
    "require_grammar_engine",
]
