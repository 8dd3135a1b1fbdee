# ruff: noqa: E501
"""Grammar engines for the planner (issue 51, item 2): xgrammar, outlines-core and
lm-format-enforcer on the same tokenizer and the same constraint.

The constraint is a planner's reply that calls tasks (``PlannerGrammar(mode="calls")``) for a
conversation with one image and one user region, required arguments only, at most two calls,
texts of at most 10 characters. xgrammar compiles vitron's EBNF grammar and, like the other two,
the invocation JSON schema built here from the same ``TaskSpec``s. A JSON schema cannot say that
``$c0.mask`` exists only after a ``segment_image`` call ``c0`` (nor that ids go c0, c1, ... in
order): its reference arguments are enums of every input and every ``$c<j>.<output>`` of the
right kind, whichever task call ``j`` is.

For each engine: (a) the tokenizer setup and the constraint's compile time (median of
``--repeats`` fresh compiles), (b) the time per generated token to advance the engine by the
chosen token and fill the next mask (median over every token of the replies), (c) ``--replies``
replies of a random model (seeded standard-normal logits at each step, masked, argmax: a random
model without the forward pass, so only the engine is timed), each parsed by vitron's own
``parse_invocation``: how many are valid, how many break the reference rule (a ``$c<j>.<output>``
naming no other call of the reply with that output of the argument's kind), how many do not end
within the budget (the grammar's maximal length plus 64 tokens of JSON whitespace).

Tokenizers: ``tiny`` (the tiny planners' byte-level tokenizer, 256 bytes plus specials) and
``smollm2`` (SmolLM2-135M's 49152-token GPT-2-style BPE, read from the GGUF of
``vitron.planners.gguf.fetch_smollm2``; skipped with a message when it is not cached).

outlines-core and lm-format-enforcer are benchmark-only (not dependencies of vitron):

    pip install outlines-core lm-format-enforcer
    python packages/vitron/benchmarks/grammar_engines.py [--tokenizer tiny smollm2] [--replies K]

Writes ``benchmarks/results/grammar_engines.json`` and ``grammar_engines.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENGINES = ("xgrammar", "outlines-core", "lm-format-enforcer")
MODULES = {
    "xgrammar": "xgrammar",
    "outlines-core": "outlines_core",
    "lm-format-enforcer": "lmformatenforcer",
}
INSTALL = "pip install outlines-core lm-format-enforcer (benchmark-only; xgrammar: pip install 'vitron[planner]')"
TOKENIZERS = ("tiny", "smollm2")
LIMITS_ARGS = dict(
    max_calls=2, max_text=10, max_list=2, max_answer=24, int_digits=3, optional_args=False
)
# tokens of JSON whitespace the schema engines may add beyond the grammar's maximal length
SLACK = 64
# no '$' first (it would read as a reference), no escapes; the length in the pattern (xgrammar
# ignores minLength/maxLength next to a pattern)
TEXT_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 ]{0,%d}$"


def counts():
    from vitron.invocations import InputCounts

    return InputCounts(1, 0, region_images=(0,))


def limits():
    from vitron.planners import GrammarLimits

    return GrammarLimits(**LIMITS_ARGS)


# -- the constraint as a JSON schema ----------------------------------------------------------


def invocation_schema(input_counts, grammar_limits) -> dict:
    """The invocation JSON schema of the tasks that can be called: references are enums of the
    inputs and of every ``$c<j>.<output>`` of the argument's kind (any task, any position)."""
    from vitron.invocations.schema import (
        BOOL,
        FLOAT,
        IMAGE,
        INT,
        REGION,
        TASKS,
        TEXT,
        TEXT_LIST,
        VIDEO,
    )

    inputs = {
        IMAGE: [f"$image{k}" for k in range(input_counts.images or 0)],
        VIDEO: [f"$video{k}" for k in range(input_counts.videos or 0)],
        REGION: [f"$region{k}" for k in range(input_counts.regions or 0)],
    }
    text = {"type": "string", "pattern": TEXT_PATTERN % (grammar_limits.max_text - 1)}
    top = 10**grammar_limits.int_digits - 1
    plain = {
        TEXT: text, INT: {"type": "integer", "minimum": 0, "maximum": top},
        FLOAT: {"type": "number", "minimum": 0, "maximum": top}, BOOL: {"type": "boolean"},
        TEXT_LIST: {"type": "array", "items": text, "minItems": 1, "maxItems": grammar_limits.max_list},
    }  # fmt: skip
    calls = []
    for name, spec in TASKS.items():
        properties, required = {}, []
        for arg in spec.args:
            if not arg.required and not grammar_limits.optional_args:
                continue
            if arg.kind in plain:
                value = plain[arg.kind]
            else:
                refs = list(inputs.get(arg.kind, []))
                refs += [
                    f"$c{j}.{out}"
                    for j in range(grammar_limits.max_calls)
                    for out in sorted(
                        {o for s in TASKS.values() for o, k in s.outputs.items() if k == arg.kind}
                    )
                ]
                if not refs:
                    if arg.required:
                        break
                    continue
                value = {"enum": refs}
            properties[arg.name] = value
            if arg.required:
                required.append(arg.name)
        else:
            args = {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }
            calls.append({
                "type": "object",
                "properties": {"id": {"type": "string", "pattern": "^c[0-9]$"}, "task": {"const": name}, "args": args},
                "required": ["id", "task", "args"], "additionalProperties": False,
            })  # fmt: skip
    return {
        "type": "object",
        "properties": {
            "version": {"enum": [1]},  # lm-format-enforcer fails on an integer const
            "calls": {"type": "array", "items": {"anyOf": calls}, "minItems": 1, "maxItems": grammar_limits.max_calls},
        },
        "required": ["version", "calls"], "additionalProperties": False,
    }  # fmt: skip


# -- judging a reply --------------------------------------------------------------------------


def reference_violations(data) -> int:
    """References ``$c<j>.<output>`` that name no other call of the reply whose task has that
    output of the argument's kind (vitron's parser refuses them; a JSON schema cannot express
    the rule, the grammar allows only earlier calls); 0 for a reply that is not calls."""
    from vitron.invocations.schema import TASKS

    if not isinstance(data, dict) or not isinstance(data.get("calls"), list):
        return 0
    calls = [c if isinstance(c, dict) else {} for c in data["calls"]]
    found = 0
    for position, call in enumerate(calls):
        if call.get("task") not in TASKS or not isinstance(call.get("args"), dict):
            continue
        kinds = {a.name: a.kind for a in TASKS[call["task"]].args}
        for name, value in call["args"].items():
            if not (isinstance(value, str) and value.startswith("$") and "." in value):
                continue
            ref, output = value[1:].split(".", 1)
            named = [
                c.get("task") for i, c in enumerate(calls) if i != position and c.get("id") == ref
            ]
            if not any(
                t in TASKS and TASKS[t].outputs.get(output) == kinds.get(name) for t in named
            ):
                found += 1
    return found


def judge(text: str | None, input_counts) -> dict:
    """One reply judged: ``finished`` (ended within the budget; ``None`` text: it did not),
    ``valid`` (``parse_invocation`` accepts it), ``reference_violations`` and the parser's error."""
    from vitron.invocations import parse_invocation
    from vitron.invocations.schema import InvocationError

    if text is None:
        return {
            "finished": False,
            "valid": False,
            "reference_violations": 0,
            "error": "did not end within the budget",
        }
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return {
            "finished": True,
            "valid": False,
            "reference_violations": 0,
            "error": f"not JSON: {err}",
        }
    violations = reference_violations(data)
    try:
        parse_invocation(data, input_counts)
    except InvocationError as err:
        return {
            "finished": True,
            "valid": False,
            "reference_violations": violations,
            "error": str(err),
        }
    return {"finished": True, "valid": True, "reference_violations": violations, "error": None}


def tally(judged: list[dict]) -> dict:
    """Counts of a list of :func:`judge` results."""
    return {
        "replies": len(judged),
        "valid": sum(j["valid"] for j in judged),
        "unfinished": sum(not j["finished"] for j in judged),
        "with_reference_violation": sum(j["reference_violations"] > 0 for j in judged),
        "errors": sorted({j["error"] for j in judged if j["error"]})[:5],
    }


# -- the engines ------------------------------------------------------------------------------


@functools.cache  # loaded once for the three engines (SmolLM2's GGUF: ~30 s)
def load_tokenizer(name: str):
    """The tokenizer ``tiny`` or ``smollm2`` (``None``, reason: not available here)."""
    if name == "tiny":
        from vitron.planners.tiny import tiny_planner

        return tiny_planner("llama")[1], None
    from vitron.planners.gguf import SMOLLM2, cache_folder

    path = cache_folder() / SMOLLM2.filename
    if not path.is_file():
        return None, f"{path} not cached (vitron.planners.gguf.fetch_smollm2 fetches it)"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), None


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Each non-special token's bytes (byte-level BPE: the GPT-2 byte-to-unicode map inverted)."""
    # GPT-2's map: printable bytes stand for themselves, the others for chr(256 + n) in order
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    inverse = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    special = set(tokenizer.all_special_ids)
    out = {}
    for token, i in tokenizer.get_vocab().items():
        if i in special or i in tokenizer.added_tokens_decoder:
            continue
        if all(c in inverse for c in token):
            out[i] = bytes(inverse[c] for c in token)
    return out


class Xgrammar:
    """xgrammar: a grammar matcher filling a 32-bit bitmask."""

    def __init__(self, tokenizer, vocab: int) -> None:
        import xgrammar as xgr

        self.xgr, self.vocab = xgr, vocab
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=[tokenizer.eos_token_id]
        )

    def compile(self, constraint: str, kind: str):
        compiler = self.xgr.GrammarCompiler(self.info, cache_enabled=False)
        if kind == "ebnf":
            return compiler.compile_grammar(constraint)
        return compiler.compile_json_schema(constraint, any_whitespace=False)

    def start(self, compiled) -> None:
        self.matcher = self.xgr.GrammarMatcher(compiled)
        self.mask = self.xgr.allocate_token_bitmask(1, self.vocab)

    def step(self, token: int | None):
        if token is not None:
            assert self.matcher.accept_token(token)
        self.matcher.fill_next_token_bitmask(self.mask, 0)
        return self.mask[0]


class OutlinesCore:
    """outlines-core: a regular expression from the JSON schema, its token index, a guide."""

    def __init__(self, tokenizer, vocab: int) -> None:
        import outlines_core as oc
        import torch

        self.oc, self.torch, self.vocab = oc, torch, vocab
        by_bytes: dict[bytes, list[int]] = {}
        for i, raw in token_bytes(tokenizer).items():
            by_bytes.setdefault(raw, []).append(i)
        self.vocabulary = oc.Vocabulary(tokenizer.eos_token_id, by_bytes)

    def compile(self, constraint: str, kind: str):
        from outlines_core.json_schema import build_regex_from_schema

        assert kind == "schema", (
            "outlines-core takes a JSON schema or a regular expression, not EBNF"
        )
        return self.oc.Index(
            build_regex_from_schema(constraint, whitespace_pattern=""), self.vocabulary
        )

    def start(self, compiled) -> None:
        self.guide = self.oc.Guide(compiled)
        self.mask = self.torch.zeros((self.vocab + 31) // 32, dtype=self.torch.int32)

    def step(self, token: int | None):
        if token is not None:
            self.guide.advance(token)
        self.guide.write_mask_into(self.mask.data_ptr(), self.mask.numel(), 4)
        return self.mask


class LmFormatEnforcer:
    """lm-format-enforcer: a character-level JSON-schema parser walked over a token prefix tree.

    Its transformers integration does not import with transformers 5 (it imports
    ``transformers.tokenization_utils.PreTrainedTokenizerBase``), so the tokenizer data is built
    here from each token's text: decoded after a ``0`` token, the text past the ``0``; a word
    start when that is longer than the token decoded alone (a leading space)."""

    def __init__(self, tokenizer, vocab: int) -> None:
        import lmformatenforcer.characterlevelparser as clp
        from lmformatenforcer import TokenEnforcerTokenizerData

        # at most one whitespace in a row (its default is 12; the other two engines write none)
        os.environ[clp.CONFIG_ENV_VAR_MAX_CONSECUTIVE_WHITESPACES] = "1"
        self.vocab = vocab
        zero = tokenizer.encode("0", add_special_tokens=False)[-1]
        special = set(tokenizer.all_special_ids)
        regular = []
        for i in range(vocab):
            if i in special:
                continue
            after = tokenizer.decode([zero, i])[1:]
            regular.append((i, after, len(after) > len(tokenizer.decode([i]))))
        decode = lambda ids: tokenizer.decode(ids).rstrip("\ufffd")  # noqa: E731 (a partial UTF-8 tail)
        self.data = TokenEnforcerTokenizerData(
            regular, decode, tokenizer.eos_token_id, False, vocab
        )

    def compile(self, constraint: str, kind: str):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        assert kind == "schema", (
            "lm-format-enforcer takes a JSON schema or a regular expression, not EBNF"
        )
        self.schema = json.loads(constraint)
        return TokenEnforcer(self.data, JsonSchemaParser(self.schema))  # lazy: no work yet

    def start(self, compiled) -> None:
        # a fresh enforcer per reply: one shared would answer a replayed prefix from its cache
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.enforcer, self.tokens = TokenEnforcer(self.data, JsonSchemaParser(self.schema)), []

    def step(self, token: int | None):
        if token is not None:
            self.tokens.append(token)
        allowed = self.enforcer.get_allowed_tokens(list(self.tokens))
        return getattr(allowed, "allowed_tokens", allowed)


CLASSES = {
    "xgrammar": Xgrammar,
    "outlines-core": OutlinesCore,
    "lm-format-enforcer": LmFormatEnforcer,
}


def allowed_of(mask, vocab: int):
    """A bool tensor (vocab,) from a 32-bit bitmask (ceil(vocab/32),), a token list or a bool tensor."""
    import torch

    if isinstance(mask, torch.Tensor) and mask.dtype == torch.int32:
        bits = (mask.to(torch.int64)[:, None] >> torch.arange(32)) & 1  # (ceil(V/32), 32)
        return bits.reshape(-1)[:vocab].bool()  # (V,)
    if isinstance(mask, torch.Tensor):
        return mask[:vocab].bool()
    out = torch.zeros(vocab, dtype=torch.bool)
    out[[t for t in mask if t < vocab]] = True
    return out


def generate(
    engine, compiled, eos: int, vocab: int, budget: int, seed: int, decode
) -> tuple[str | None, list[float]]:
    """One reply of the random model under ``engine``: its text (``None``: no end within
    ``budget`` tokens) and the seconds of each step (advance + next mask)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    engine.start(compiled)
    token, out, times = None, [], []
    for _ in range(budget + 1):
        start = time.perf_counter()
        mask = engine.step(token)
        times.append(time.perf_counter() - start)
        allowed = allowed_of(mask, vocab)
        if not bool(allowed.any()):  # the constraint is complete (outlines: nothing after the end)
            return decode(out), times
        scores = torch.randn(vocab, generator=generator).masked_fill(~allowed, float("-inf"))
        token = int(scores.argmax())
        if token == eos:
            return decode(out), times
        out.append(token)
    return None, times


def measure(
    engine_name: str, tokenizer_name: str, kinds: list[str], replies: int, repeats: int
) -> list[dict]:
    """Rows of one engine on one tokenizer, one per constraint kind."""
    from vitron.planners import PlannerGrammar

    tokenizer, reason = load_tokenizer(tokenizer_name)
    if tokenizer is None:
        return [
            {"engine": engine_name, "tokenizer": tokenizer_name, "constraint": k, "skipped": reason}
            for k in kinds
        ]
    vocab = len(tokenizer)
    start = time.perf_counter()
    engine = CLASSES[engine_name](tokenizer, vocab)
    setup_s = time.perf_counter() - start
    grammar = PlannerGrammar(counts(), limits=limits(), mode="calls")
    constraints = {
        "ebnf": grammar.ebnf,
        "schema": json.dumps(invocation_schema(counts(), limits())),
    }
    rows = []
    for kind in kinds:
        compile_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            compiled = engine.compile(constraints[kind], kind)
            compile_times.append(time.perf_counter() - start)
        step_times, judged, first = [], [], []
        for seed in range(replies):
            text, times = generate(
                engine, compiled, tokenizer.eos_token_id, vocab, grammar.max_bytes + SLACK, seed,
                lambda ids: tokenizer.decode(ids),
            )  # fmt: skip
            first.append(times[0])
            step_times += times[1:]
            judged.append(judge(text, counts()) | {"text": text})
        rows.append({
            "engine": engine_name, "tokenizer": tokenizer_name, "vocab": vocab, "constraint": kind,
            "setup_s": setup_s, "compile_s": statistics.median(compile_times),
            "first_mask_ms": 1e3 * statistics.median(first),
            "token_ms": 1e3 * statistics.median(step_times) if step_times else None,
            "tokens": len(step_times), **tally(judged), "samples": [j["text"] for j in judged[:3]],
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table: one line per engine, tokenizer and constraint."""
    lines = [
        "| engine | tokenizer | constraint | setup s | compile s | first mask ms | per token ms | valid | reference rule broken | unfinished |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['engine']} | {r['tokenizer']} | {'vitron EBNF' if r['constraint'] == 'ebnf' else 'JSON schema'} |"
        if "skipped" in r:
            lines.append(f"{head} {r['skipped']} | | | | | | |")
            continue
        lines.append(
            f"{head} {r['setup_s']:.3f} | {r['compile_s']:.3f} | {r['first_mask_ms']:.2f} | {r['token_ms']:.3f} "
            f"| {r['valid']}/{r['replies']} | {r['with_reference_violation']}/{r['replies']} | {r['unfinished']}/{r['replies']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="grammar_engines.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tokenizer", nargs="+", default=list(TOKENIZERS), choices=TOKENIZERS)
    parser.add_argument("--engine", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument(
        "--replies", type=int, default=20, help="random-model replies per engine (>= 1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="compiles timed per constraint (>= 1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, value in (("--replies", args.replies), ("--repeats", args.repeats)):
        if value < 1:
            print(f"grammar_engines.py: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    missing = [e for e in args.engine if importlib.util.find_spec(MODULES[e]) is None]
    if missing:
        print(
            f"grammar_engines.py: error: {', '.join(missing)} not installed: {INSTALL}",
            file=sys.stderr,
        )
        return 2
    rows = []
    for tokenizer_name in args.tokenizer:
        for engine_name in args.engine:
            kinds = ["ebnf", "schema"] if engine_name == "xgrammar" else ["schema"]
            print(
                f"grammar_engines.py: {engine_name} on {tokenizer_name} ...",
                file=sys.stderr,
                flush=True,
            )
            rows += measure(engine_name, tokenizer_name, kinds, args.replies, args.repeats)
    import torch

    from vitron.io import write_json

    versions = {}
    for e in args.engine:
        from importlib.metadata import version

        versions[e] = version(e)
    data = {
        "rows": rows, "versions": versions, "python": platform.python_version(), "torch": torch.__version__,
        "limits": LIMITS_ARGS, "counts": "1 image, 1 region", "mode": "calls",
        "schema_cannot_express": "that $c<j>.<output> names an earlier call j whose task has that output (and ids in order)",
        "command": " ".join(["python packages/vitron/benchmarks/grammar_engines.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "grammar_engines.json", data)
    text = table(rows)
    part = args.out / "grammar_engines.md.part"
    part.write_text(f"<!-- {data['command']} -->\n{text}\n")
    part.replace(args.out / "grammar_engines.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
