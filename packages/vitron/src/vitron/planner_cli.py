"""``--planner ID`` of ``vitron run``, ``chat`` and ``app``: any transformers chat model as the
planner (:mod:`vitron.planners`), beside ``--model`` (a Vitron folder). Kept out of
:mod:`vitron.cli` so that the command stays thin; nothing heavy is imported here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common_kernels.runtime.errors import InvalidValue


def add_model_source_options(parser: argparse.ArgumentParser, planner: bool = True) -> None:
    """``--model`` and ``--planner`` (exactly one of them), and with ``planner`` the planner's
    ``--engine`` and ``--no-repeat``."""
    parser.add_argument("--model", help="Vitron folder or hub id (save_pretrained)")
    parser.add_argument(
        "--planner", metavar="ID",
        help="a transformers chat model (hub id or folder) as the planner, zero-shot, its replies "
        "held to the calls' grammar (pip install 'vitron[planner]'; see docs/planner.md)",
    )  # fmt: skip
    if planner:
        add_planner_decoding_options(parser)


def add_planner_decoding_options(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--no-repeat``: how a ``--planner`` decodes."""
    from vitron.planners.catalog import ENGINES

    parser.add_argument(
        "--engine", choices=ENGINES, default="auto",
        help="what runs --planner: auto: llama.cpp for a .gguf file when llama-cpp-python is "
        "installed (pip install 'vitron[gguf]'), else transformers (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--no-repeat", type=int, default=4, metavar="N",
        help="a --planner's final answer never repeats a run of N tokens, 0 (off) or >= 2 "
        "(default: %(default)s)",
    )  # fmt: skip


def check_model_source(args: argparse.Namespace) -> None:
    """One of ``--model`` and ``--planner`` (``eval``: ``--model``; ``app``: at most one, none
    for the default planner), and the planner's ``--engine`` and ``--no-repeat`` (only with a
    planner), refused before any work."""
    planner = getattr(args, "planner", None)
    if args.command == "eval" and planner is not None:
        raise InvalidValue("planner", "{planner}: vitron eval runs a Vitron model (--model)")
    check_planner_options(args)
    if args.command == "app" and args.model is None and planner is None:
        return  # vitron.planners.default
    if (args.model is None) == (planner is None):
        which = "both" if planner is not None else "neither"
        raise InvalidValue("model", f"give one of {{model}} and --planner ({which} given)")


def check_planner_options(args: argparse.Namespace) -> None:
    from vitron.planners.catalog import check_engine
    from vitron.planners.rules import check_no_repeat

    engine = getattr(args, "engine", "auto")
    if args.model is not None and engine != "auto":
        raise InvalidValue("engine", "{engine} chooses what runs a --planner, not a {model}")
    check_no_repeat(getattr(args, "no_repeat", 4))
    if args.planner is not None:
        check_engine(args.planner, engine)
    elif engine == "llama.cpp":  # the page's default planner is a transformers model
        raise InvalidValue("engine", "{engine} llama.cpp runs a --planner FILE.gguf; give one")


def open_assistant(options, scripted: Sequence[str] = (), args: argparse.Namespace | None = None):
    """The Vitron Assistant of ``options``, or with ``--planner`` a
    :class:`~vitron.planners.PlannerAssistant` (grammar engine, source, chat template checked
    before any weight loads; ``--max-new-tokens`` caps the final answer in characters)."""
    from vitron.options import open_assistant as open_vitron

    planner = getattr(args, "planner", None)
    if planner is None:
        return open_vitron(options, scripted)
    from vitron.planners.catalog import open_planner

    def load(**decoding):
        return open_planner(planner, engine=args.engine, say=say, **decoding)

    return planner_assistant(options, load, scripted, args)


def say(line: str) -> None:
    """A note of the command's on stderr (which engine runs a GGUF planner)."""
    print(f"vitron: {line}", file=sys.stderr)


def open_page_assistant(options, args: argparse.Namespace) -> tuple[Any, Path, str]:
    """``vitron app``'s ``(assistant, output folder, note)``, the arguments of its
    :class:`~vitron.app.ChatSession` (the note: what the page says about the model):
    ``--model``'s Vitron, ``--planner``'s chat model, or with neither the default planner
    (:mod:`vitron.planners.default`: a cached hub model, else a tiny random one and the command
    that gets the hub model)."""
    if args.model is not None:
        return open_assistant(options, (), args), options.output, ""
    if args.planner is not None:
        note = f"Planner: `{args.planner}`, its replies held to the calls' grammar."
        return open_assistant(options, (), args), options.output, note
    from common_kernels.runtime.cli import UsageError
    from vitron.planners.chat import GRAMMAR_INSTALL, require_grammar_engine
    from vitron.planners.default import choose_default_planner, open_default_planner

    try:
        require_grammar_engine()
    except InvalidValue:  # its message names --planner, which was not given
        raise UsageError(
            f"the page's default planner needs the grammar engine xgrammar: {GRAMMAR_INSTALL}; "
            "or give --model"
        ) from None
    choice = choose_default_planner()
    load = lambda **decoding: open_default_planner(choice, **decoding)  # noqa: E731
    return planner_assistant(options, load, (), args), options.output, choice.note


def planner_assistant(options, load, scripted: Sequence[str], args):
    """A :class:`~vitron.planners.PlannerAssistant` of ``options`` over ``load(device=, dtype=,
    **decoding)``'s planner, every option checked before it loads."""
    from common_kernels.runtime.cli import check_device
    from common_kernels.runtime.errors import argument_errors
    from vitron.checks import check_output_folder
    from vitron.options import build_registry, cuda_bf16_supported, resolve_dtype
    from vitron.planners import GrammarLimits, PlannerAssistant

    check_output_folder(options.output, "output")
    with argument_errors("device"):
        device = check_device(options.device, "device")
    dtype = resolve_dtype(options.dtype, device, cuda_bf16_supported(device))
    registry = build_registry(options.specialists, options.settings, device, options.offload)
    model = load(
        device=device, dtype=dtype, do_sample=options.do_sample,
        temperature=options.temperature, top_p=options.top_p, seed=options.seed,
        no_repeat=getattr(args, "no_repeat", 4),
    )  # fmt: skip
    assistant = PlannerAssistant(
        model, registry, options.output, max_rounds=options.max_rounds, seed=options.seed,
        limits=GrammarLimits(max_answer=options.max_new_tokens), scripted_replies=scripted,
    )  # fmt: skip
    assistant.image_names = [p.name for p in getattr(args, "image", None) or ()]
    return assistant
