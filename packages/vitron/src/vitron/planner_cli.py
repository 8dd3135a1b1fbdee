"""``--planner ID`` of ``vitron run``, ``chat`` and ``app``: any transformers chat model as the
planner (:mod:`vitron.planners`), beside ``--model`` (a Vitron folder). Kept out of
:mod:`vitron.cli` so that the command stays thin; nothing heavy is imported here."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common_kernels.runtime.errors import InvalidValue


def add_model_source_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--planner``: exactly one of them."""
    parser.add_argument("--model", help="Vitron folder or hub id (save_pretrained)")
    parser.add_argument(
        "--planner", metavar="ID",
        help="a transformers chat model (hub id or folder) as the planner, zero-shot, its replies "
        "held to the calls' grammar (pip install 'vitron[planner]'; see docs/planner.md)",
    )  # fmt: skip


def check_model_source(args: argparse.Namespace) -> None:
    """One of ``--model`` and ``--planner`` (``eval``: ``--model``), refused before any work."""
    planner = getattr(args, "planner", None)
    if args.command == "eval" and planner is not None:
        raise InvalidValue("planner", "{planner}: vitron eval runs a Vitron model (--model)")
    if (args.model is None) == (planner is None):
        which = "both" if planner is not None else "neither"
        raise InvalidValue("model", f"give one of {{model}} and --planner ({which} given)")


def open_assistant(options, scripted: Sequence[str] = (), args: argparse.Namespace | None = None):
    """The Vitron Assistant of ``options``, or with ``--planner`` a
    :class:`~vitron.planners.PlannerAssistant` (grammar engine, source, chat template checked
    before any weight loads; ``--max-new-tokens`` caps the final answer in characters)."""
    from vitron.options import open_assistant as open_vitron

    planner = getattr(args, "planner", None)
    if planner is None:
        return open_vitron(options, scripted)
    from common_kernels.runtime.cli import check_device
    from common_kernels.runtime.errors import argument_errors
    from vitron.checks import check_output_folder
    from vitron.options import build_registry, cuda_bf16_supported, resolve_dtype
    from vitron.planners import ChatPlanner, GrammarLimits, PlannerAssistant

    check_output_folder(options.output, "output")
    with argument_errors("device"):
        device = check_device(options.device, "device")
    dtype = resolve_dtype(options.dtype, device, cuda_bf16_supported(device))
    registry = build_registry(options.specialists, options.settings, device, options.offload)
    model = ChatPlanner.from_pretrained(
        planner, device=device, dtype=dtype, do_sample=options.do_sample,
        temperature=options.temperature, top_p=options.top_p, seed=options.seed,
    )  # fmt: skip
    assistant = PlannerAssistant(
        model, registry, options.output, max_rounds=options.max_rounds, seed=options.seed,
        limits=GrammarLimits(max_answer=options.max_new_tokens), scripted_replies=scripted,
    )  # fmt: skip
    assistant.image_names = [p.name for p in getattr(args, "image", None) or ()]
    return assistant
