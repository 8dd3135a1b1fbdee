"""Specialist invocations: the typed schema, the reply parser and the official tag grammar."""

from vitron.invocations.reply import (
    DEFAULT_EOS,
    GRAMMAR_HELP,
    GRAMMARS,
    ParsedReply,
    parse_reply,
    strip_eos,
)
from vitron.invocations.schema import (
    SCHEMA_VERSION,
    TASKS,
    ArgSpec,
    Call,
    InputCounts,
    Invocation,
    InvocationError,
    Ref,
    TaskSpec,
    parse_invocation,
    parse_ref,
)
from vitron.invocations.tags import LETTERS, edit_target, parse_tags, split_instruction

__all__ = [
    "DEFAULT_EOS",
    "GRAMMARS",
    "GRAMMAR_HELP",
    "LETTERS",
    "SCHEMA_VERSION",
    "TASKS",
    "ArgSpec",
    "Call",
    "InputCounts",
    "Invocation",
    "InvocationError",
    "ParsedReply",
    "Ref",
    "TaskSpec",
    "edit_target",
    "parse_invocation",
    "parse_ref",
    "parse_reply",
    "parse_tags",
    "split_instruction",
    "strip_eos",
]
