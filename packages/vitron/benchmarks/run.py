# ruff: noqa: E501
"""Reply-parser benchmark: vitron's tag parser vs. a parser with the official one's behaviour.

A seeded corpus of official-grammar replies mixes the pitfalls listed in the spec (several
modules, colons inside instructions, stray end-of-sequence tokens, whitespace around module
letters, text between unrelated tags). For each parser: the share of replies whose calls (task,
instruction) come out exactly right, the share whose free text is kept intact, the median
parse time, and the peak memory of a fresh process running it. The baseline follows the
official behaviour as the spec describes it (first module only, split on the last colon, EOS
left in, text between any two tags deleted, spaced letters fall back to chat); it is written
here from that description, not copied.

    python packages/vitron/benchmarks/run.py [--quick]

Writes ``benchmarks/results/parser.json`` and ``parser.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LETTER_TASKS = {
    "A": "generate_image",
    "B": "segment_image",
    "C": "edit_image",
    "D": "generate_video",
}
LABELS = {
    "A": "image generation",
    "B": "image segmentation",
    "C": "image editing",
    "D": "video generation",
}
INSTRUCTIONS = {
    "A": ["a red fox in snow", "a poster reading Note: closed", "a cat, photorealistic"],
    "B": ["the dog", "the sign saying Exit: left", "the person in red"],
    "C": ["a cat", "a board saying Menu: soup", "a wooden door"],
    "D": ["waves at dusk", "a timer showing 10:30", "a dancing robot"],
}


def make_corpus(size: int, seed: int = 0) -> list[dict]:
    """Replies with their expected calls and free text."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(size):
        modules = rng.sample("BCA", rng.choice([1, 1, 2, 3]))
        if "C" in modules:  # an edit needs a segmentation before it
            modules = ["B", *[m for m in modules if m != "B"]]
        text = rng.choice(["Sure.", "Here it is: <b>done</b> soon.", "OK"])
        reply, calls = text, []
        for letter in modules:
            instruction = rng.choice(INSTRUCTIONS[letter])
            spaced = f" {letter} " if rng.random() < 0.3 else letter
            reply += f"<module>{spaced}</module><instruction>{LABELS[letter]}: {instruction}</instruction>"
            calls.append((LETTER_TASKS[letter], instruction))
        if rng.random() < 0.5:
            reply += "</s>"
        corpus.append({"reply": reply, "calls": calls, "text": text})
    return corpus


def official_like(reply: str) -> tuple[list[tuple[str, str]], str]:
    """The official behaviour as described: first module only, last-colon split, EOS kept."""
    module = re.search(r"<module>([A-G])</module>", reply)
    text = re.sub(r"<.*>", "", reply).strip()  # greedy: everything between the first and last tag
    if module is None:
        return [], text
    instruction = re.search(r"<instruction>(.*?)</instruction>", reply)
    body = instruction.group(1) if instruction else ""
    return [(LETTER_TASKS[module.group(1)], body.split(":")[-1].strip())], text


def vitron_parser(reply: str) -> tuple[list[tuple[str, str]], str]:
    from vitron.invocations import InputCounts, parse_reply

    parsed = parse_reply(reply, grammar="tags", counts=InputCounts(images=1))
    calls = [] if parsed.invocation is None else parsed.invocation.calls
    return [(c.task, c.args["text"]) for c in calls], parsed.text


PARSERS = {"official-like": official_like, "vitron": vitron_parser}


def measure(name: str, corpus: list[dict], repeats: int) -> dict:
    """Accuracy, median time per reply and peak RSS of one parser (run in this process)."""
    parse = PARSERS[name]
    parse(corpus[0]["reply"])  # warm-up (imports)
    calls_ok = sum(parse(item["reply"])[0] == item["calls"] for item in corpus)
    text_ok = sum(parse(item["reply"])[1] == item["text"] for item in corpus)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in corpus:
            parse(item["reply"])
        times.append((time.perf_counter() - start) / len(corpus))
    return {
        "parser": name,
        "replies": len(corpus),
        "calls_exact": calls_ok / len(corpus),
        "text_intact": text_ok / len(corpus),
        "us_per_reply_median": 1e6 * statistics.median(times),
        "us_per_reply_min": 1e6 * min(times),
        "us_per_reply_max": 1e6 * max(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_in_subprocess(name: str, size: int, repeats: int) -> dict:
    folder = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {folder!r}); import run; "
        f"print(json.dumps(run.measure({name!r}, run.make_corpus({size}), {repeats})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    base = rows[0]["us_per_reply_median"]
    lines = [
        "| parser | replies | calls exactly right | free text intact | us/reply (median, min-max) | time vs baseline | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['parser']} | {r['replies']} | {100 * r['calls_exact']:.1f}% | {100 * r['text_intact']:.1f}% "
            f"| {r['us_per_reply_median']:.1f} ({r['us_per_reply_min']:.1f}-{r['us_per_reply_max']:.1f}) "
            f"| {r['us_per_reply_median'] / base:.2f}x | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    from common_kernels.runtime.bench import figure

    rows = data["rows"]
    names = [r["parser"] for r in rows]
    with figure(path, 1, 2, figsize=(8, 3), savefig={"dpi": 100}) as (fig, axes):
        axes[0].bar(names, [100 * r["calls_exact"] for r in rows], color=["#999", "#36c"])
        axes[0].set_ylabel("calls exactly right (%)")
        axes[1].bar(names, [r["us_per_reply_median"] for r in rows], color=["#999", "#36c"])
        axes[1].set_ylabel("us per reply (median)")
        fig.suptitle(f"tag-grammar parsing, {rows[0]['replies']} replies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 replies, 3 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from common_kernels.runtime.cli import (
        check_benchmark_setup,  # here: the parsers' processes stay light
    )

    check_benchmark_setup("run.py", "vitron", modules=("matplotlib",), folders={"--out": args.out})
    size, repeats = (200, 3) if args.quick else (2000, 7)
    rows = [run_in_subprocess(name, size, repeats) for name in PARSERS]
    import torch

    data = {
        "rows": rows,
        "threads": 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "command": "python packages/vitron/benchmarks/run.py" + (" --quick" if args.quick else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parser.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, args.out / "parser.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
