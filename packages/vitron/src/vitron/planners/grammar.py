"""The planner's reply grammar: the invocation JSON of :mod:`vitron.invocations.schema`, as an
EBNF grammar generated from the same ``TaskSpec``s, so that every constrained reply parses.

A reply is one JSON object, either a final answer or an invocation:

    {"answer": "There is a dog on the left."}
    {"version": 1, "calls": [{"id": "c0", "task": "segment_image",
      "args": {"image": "$image0", "text": "dog"}}, ...]}

What a JSON schema alone cannot say, the grammar says by construction: call ids are ``c0``,
``c1``, ... in order; an argument refers only to inputs the conversation holds (``$image0`` ..
``$image{n-1}``, ``$region<k>``) and to outputs of *earlier* calls whose kind fits (``$c0.mask``
only after a ``segment_image`` call ``c0``), so there are no dangling references and no cycles.
Texts are non-empty, bounded, without escapes, and never start with ``$`` (so none reads as a
reference); integers are JSON integers of at most ``int_digits`` digits; arguments come in the
spec's order, required ones first. Region arguments take the user's regions only (no box
literals, whose ``x1 < x2`` a context-free grammar cannot hold).

The final answer's text is the one part the grammar leaves unbounded (``char*``): a bounded
repetition of an alternation (``(char | escape){0,512}``) makes xgrammar's matcher carry one
state per possible count, and its mask then costs about a second a token on a 49k vocabulary
(``benchmarks/planner_speed.py``), where ``char*`` costs microseconds. The answer's length is
held instead by the decoder's rule (:class:`vitron.planners.rules.AnswerRules`: at most
``max_answer`` tokens of text, then only a token that closes it), so a reply still has a maximal
length in tokens (:attr:`PlannerGrammar.max_tokens`): a decoding budget of that many tokens
always reaches the end of the JSON. Rule names use letters, digits and ``-`` only, so the same
text is a GBNF grammar for llama.cpp (:attr:`PlannerGrammar.gbnf`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vitron.invocations.schema import (
    BOOL,
    FLOAT,
    IMAGE,
    INT,
    REGION,
    SCHEMA_VERSION,
    TASKS,
    TEXT,
    TEXT_LIST,
    VIDEO,
    ArgSpec,
    InputCounts,
    TaskSpec,
)

# how every final answer starts: the decoder's answer rules find the answer's text after it
ANSWER_HEAD = '{"answer": "'
# a text's first character: printable ASCII except space, '"', '$' and '\' (non-empty after
# strip(), never a reference, no escapes); its other characters: anything but '"', '\' and
# control characters
MODES = ("any", "answer", "calls")
_FIRST = r"[!#%-\[\]-~]"
_REST = r'[^"\\\x00-\x1f]'


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds of a reply (each keeps the grammar finite, so every reply ends).

    Args:
        max_calls: calls per invocation, in [1, 4] (the grammar tracks which outputs earlier
            calls made: 5 output signatures ** (max_calls - 1) states).
        max_text: characters of a text argument, >= 1.
        max_list: items of a text-list argument, >= 1.
        max_answer: tokens of a final answer's text, >= 1 (held while decoding by
            :class:`~vitron.planners.rules.AnswerRules`, not by the grammar).
        int_digits: digits of an integer argument, in [1, 9].
        optional_args: offer the tasks' optional arguments (False: required ones only; shorter
            replies, and no defaults for a small model to get wrong).
    """

    max_calls: int = 3
    max_text: int = 96
    max_list: int = 4
    max_answer: int = 256
    int_digits: int = 5
    optional_args: bool = True

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_calls", 1, 4), ("max_text", 1, None), ("max_list", 1, None),
            ("max_answer", 1, None), ("int_digits", 1, 9),
        ):  # fmt: skip
            value = getattr(self, name)
            if type(value) is not int or value < low or (high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def _lit(text: str) -> tuple[str, int]:
    """An EBNF string literal of ``text`` and its length in bytes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"', len(text.encode("utf-8"))


@dataclass
class _Rules:
    """Named EBNF rules with the maximal byte length of what each one matches."""

    rules: dict[str, str] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, body: str, length: int) -> tuple[str, int]:
        if name not in self.rules:
            self.rules[name] = body
            self.lengths[name] = length
        return name, self.lengths[name]

    def text(self) -> str:
        return "\n".join(f"{name} ::= {body}" for name, body in self.rules.items()) + "\n"


def _signature(spec: TaskSpec) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(spec.outputs.items()))


# the distinct output sets of the tasks: a rule's state is the output sets of the calls before
_SIGNATURES = sorted({_signature(spec) for spec in TASKS.values()})


class PlannerGrammar:
    """The reply grammar for a conversation's inputs and a set of tasks.

    Args:
        counts: the conversation's images, videos and regions (``None`` counts as 0).
        tasks: the task names offered (default: every task of the schema).
        limits: the bounds of a reply.
        mode: ``"any"`` (an answer or calls), ``"answer"`` (the last round of a turn) or
            ``"calls"`` (calls only; an answer only when no task can be called).
    """

    def __init__(
        self,
        counts: InputCounts,
        tasks: Iterable[str] | None = None,
        limits: GrammarLimits | None = None,
        mode: str = "any",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.limits = limits or GrammarLimits()
        names = list(TASKS if tasks is None else tasks)
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown {unknown} (known: {', '.join(TASKS)})")
        self.tasks: dict[str, TaskSpec] = {t: TASKS[t] for t in names}
        self.counts = counts
        self.inputs = {
            IMAGE: [f"$image{k}" for k in range(counts.images or 0)],
            VIDEO: [f"$video{k}" for k in range(counts.videos or 0)],
            REGION: [f"$region{k}" for k in range(counts.regions or 0)],
        }
        self._r = _Rules()
        self._base()
        options = ["answer"]
        if mode != "answer":
            head, head_len = _lit(f'{{"version": {SCHEMA_VERSION}, "calls": [')
            calls = self._calls(())
            if calls is not None:
                tail, tail_len = _lit("]}")
                self._r.add(
                    "invocation", f"{head} {calls[0]} {tail}", head_len + calls[1] + tail_len
                )
                options = ["invocation"] if mode == "calls" else [*options, "invocation"]
        # every token is at least one byte, so an invocation's length in bytes bounds its tokens
        self.max_tokens = max(self._r.lengths[o] for o in options)
        self._r.rules = {"root": " | ".join(options), **self._r.rules}
        self.ebnf = self._r.text()

    @property
    def gbnf(self) -> str:
        """The grammar as llama.cpp's GBNF: the same text (both engines read this syntax), checked
        by :func:`check_gbnf` first."""
        check_gbnf(self.ebnf)
        return self.ebnf

    def _base(self) -> None:
        r, lim = self._r, self.limits
        r.add("text", f'"\\"" {_FIRST} {_REST}{{0,{lim.max_text - 1}}} "\\""', lim.max_text * 4 + 2)
        more = f'(", " text){{0,{lim.max_list - 1}}}' if lim.max_list > 1 else '""'
        r.add("text-list", f'"[" text {more} "]"', lim.max_list * (r.lengths["text"] + 2))
        digits = lim.int_digits
        tail = f" [0-9]{{0,{digits - 1}}}" if digits > 1 else ""
        r.add("int", f'"0" | [1-9]{tail}', digits)
        r.add("float", 'int ("." [0-9]{1,4})?', digits + 5)
        r.add("bool", '"true" | "false"', 5)
        # the answer's text is unbounded here and held to max_answer tokens by AnswerRules (see
        # the module's docstring): the head's bytes, the text's tokens and at most three that
        # finish an escape or a character, then '"' and '}'
        char = r'[^"\\\x00-\x1f] | "\\" ["\\/nt]'
        head, head_len = _lit(ANSWER_HEAD[:-1])
        r.add("answer", f'{head} "\\"" ({char})* "\\"}}"', head_len + 1 + lim.max_answer + 5)

    def _refs(self, kind: str, state: tuple[str, ...]) -> list[str]:
        """The references an argument of ``kind`` may take after the calls ``state``."""
        found = list(self.inputs.get(kind, []))
        for j, task in enumerate(state):
            found += [f"$c{j}.{name}" for name, k in TASKS[task].outputs.items() if k == kind]
        return found

    def _value(self, arg: ArgSpec, state: tuple[str, ...]) -> tuple[str, int] | None:
        """The EBNF of an argument's value (``None``: no value possible here)."""
        plain = {TEXT: "text", INT: "int", FLOAT: "float", BOOL: "bool", TEXT_LIST: "text-list"}
        if arg.kind in plain:
            name = plain[arg.kind]
            return name, self._r.lengths[name]
        refs = self._refs(arg.kind, state)
        if not refs:
            return None
        literals = [_lit(f'"{ref}"') for ref in refs]
        return "(" + " | ".join(e for e, _ in literals) + ")", max(n for _, n in literals)

    def _args(self, spec: TaskSpec, state: tuple[str, ...]) -> tuple[str, int] | None:
        """``"name": value, ...`` of a call's arguments (``None``: a required one has no value)."""
        required, optional = [], []
        for arg in spec.args:
            if not arg.required and not self.limits.optional_args:
                continue
            value = self._value(arg, state)
            if value is None:
                if arg.required:
                    return None
                continue
            key, key_len = _lit(f'"{arg.name}": ')
            pair = (f"{key} {value[0]}", key_len + value[1])
            (required if arg.required else optional).append(pair)

        def optional_tail(pairs) -> tuple[str, int]:
            if not pairs:
                return '""', 0
            parts = [f'(", " {body})?' for body, _ in pairs]
            return " ".join(parts), sum(n + 2 for _, n in pairs)

        if required:
            body = ' ", " '.join(b for b, _ in required)
            length = sum(n for _, n in required) + 2 * (len(required) - 1)
            tail, tail_len = optional_tail(optional)
            return f"{body} {tail}", length + tail_len
        # no required argument: nothing, or the first optional one written and those after it
        alternatives, longest = ['""'], 0
        for i, (body, n) in enumerate(optional):
            tail, tail_len = optional_tail(optional[i + 1 :])
            alternatives.append(f"({body} {tail})")
            longest = max(longest, n + tail_len)
        return " | ".join(alternatives), longest

    def _calls(self, state: tuple[str, ...]) -> tuple[str, int] | None:
        """The rule of one more call after ``state`` and everything after it (``None``: none
        of the tasks can be called here)."""
        key = "-".join(str(_SIGNATURES.index(_signature(TASKS[task]))) for task in state)
        name = f"calls-{key}" if key else "calls"

        if name in self._r.rules:
            return name, self._r.lengths[name]
        position = len(state)
        alternatives, longest = [], 0
        for task, spec in self.tasks.items():
            args = self._args(spec, state)
            if args is None:
                continue
            head, head_len = _lit(f'{{"id": "c{position}", "task": "{task}", "args": {{')
            close, close_len = _lit("}}")
            body, length = f"{head} {args[0]} {close}", head_len + args[1] + close_len
            if position + 1 < self.limits.max_calls:
                after = self._calls((*state, task))
                if after is not None:
                    body += f' (", " {after[0]})?'
                    length += 2 + after[1]
            alternatives.append(f"({body})")
            longest = max(longest, length)
        if not alternatives:
            return None
        return self._r.add(name, " | ".join(alternatives), longest)


def describe_tasks(tasks: Mapping[str, TaskSpec]) -> str:
    """One line per task for the system prompt: its arguments (kind, required) and outputs."""
    lines = []
    for name, spec in tasks.items():
        args = ", ".join(
            f"{a.name}: {a.kind}{' (required)' if a.required else ''}"
            + (f" - {a.help}" if a.help else "")
            for a in spec.args
        )
        outputs = ", ".join(f"{n} ({k})" for n, k in spec.outputs.items())
        lines.append(f"- {name}: {spec.help}. Arguments: {args}. Outputs: {outputs}.")
    return "\n".join(lines)


# GBNF's lexical rules, as llama.cpp's parser (llama-grammar.cpp) reads them
_GBNF_NAME = r"[A-Za-z0-9-]+"
_GBNF_ESCAPE = r'\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[nrt\\"\[\]])'
_GBNF_TOKEN = re.compile(
    rf'\s+|"(?:[^"\\]|{_GBNF_ESCAPE})*"|\[\^?(?:[^\]\\]|{_GBNF_ESCAPE})*\]'
    rf"|(?P<name>{_GBNF_NAME})|[|()?*+]|\{{\d+(?:,\d*)?\}}"
)


def check_gbnf(text: str) -> None:
    """Refuse a grammar text that llama.cpp's GBNF parser would not read (its binding aborts the
    process on a parse error instead of raising): every rule ``NAME ::= BODY`` on one line,
    names of letters, digits and ``-``, literal and class escapes GBNF knows, every referenced
    rule defined, a ``root`` rule.

    Raises:
        ValueError: the first fault, with its line.
    """
    defined, used = set(), {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, body = line.partition(" ::= ")
        if not sep or not re.fullmatch(_GBNF_NAME, name):
            raise ValueError(
                f"GBNF line {number}: not NAME ::= BODY with a name of letters, digits and "
                f"'-': {line[:80]!r}"
            )
        defined.add(name)
        position = 0
        while position < len(body):
            found = _GBNF_TOKEN.match(body, position)
            if found is None:
                raise ValueError(
                    f"GBNF line {number} ({name}): cannot read {body[position : position + 40]!r}"
                )
            if found.group("name"):
                used.setdefault(found.group("name"), number)
            position = found.end()
    missing = sorted(set(used) - defined)
    if missing:
        raise ValueError(f"GBNF: rule {missing[0]!r} (line {used[missing[0]]}) is not defined")
    if "root" not in defined:
        raise ValueError("GBNF: no root rule")
