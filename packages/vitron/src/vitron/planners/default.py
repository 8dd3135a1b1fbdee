"""The planner ``vitron app`` starts with when it is given neither ``--model`` nor ``--planner``.

Real answers need a real chat model, and none is bundled: the page takes the first of
:data:`DEFAULT_PLANNERS` that is in the local hub cache (installed: nothing is downloaded when
the page starts). When none is, the page still works on a tiny random planner (its replies parse
and its calls run, but they are noise) and says which hub model it would use and the command
that gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from common_kernels.runtime.hub import is_cached

# the first cached one is used; the first is the one the page asks for when none is cached
DEFAULT_PLANNERS = ("Qwen/Qwen2.5-VL-3B-Instruct", "HuggingFaceTB/SmolVLM-256M-Instruct")
SIZES = {"Qwen/Qwen2.5-VL-3B-Instruct": "7.5 GB", "HuggingFaceTB/SmolVLM-256M-Instruct": "0.5 GB"}
TINY_NAME = "tiny random qwen2_vl"


def download_command(repo_id: str) -> str:
    """The command that puts ``repo_id`` into the local hub cache (huggingface_hub's CLI)."""
    return f"hf download {repo_id}"


@dataclass(frozen=True)
class PlannerChoice:
    """The planner the page starts with.

    Args:
        repo_id: the cached hub model, or None for the tiny random planner.
        note: what the page says about it (Markdown).
    """

    repo_id: str | None
    note: str


def choose_default_planner(candidates: tuple[str, ...] = DEFAULT_PLANNERS) -> PlannerChoice:
    """The first of ``candidates`` in the local hub cache, else the tiny random planner with a
    note naming the hub model the page would use and the command that downloads it.

    Args:
        candidates: hub ids, most wanted first (at least one).
    """
    if not candidates:
        raise ValueError("candidates: give at least one hub id")
    for repo_id in candidates:
        if is_cached(repo_id):
            return PlannerChoice(repo_id, f"Planner: `{repo_id}` (in the local hub cache).")
    wanted, *smaller = candidates
    size = f" ({SIZES[wanted]})" if wanted in SIZES else ""
    others = "".join(
        f" A smaller one{f' ({SIZES[s]})' if s in SIZES else ''}: `{download_command(s)}`."
        for s in smaller[:1]
    )
    note = (
        f"**No real planner is installed** (none of {', '.join(f'`{c}`' for c in candidates)} is "
        f"in the local hub cache). The page would use `{wanted}`{size}: get it with "
        f"`{download_command(wanted)}` and start the page again.{others} Any chat model: "
        "`vitron app --planner ID -o OUT`. Until then a tiny random planner answers: its replies "
        "parse and its calls run, but they are noise."
    )
    return PlannerChoice(None, note)


def open_default_planner(
    choice: PlannerChoice, *, device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, **options: Any,
):  # fmt: skip
    """The :class:`~vitron.planners.ChatPlanner` of ``choice``: the cached hub model, or the
    tiny random Qwen2-VL of :mod:`vitron.planners.tiny` (built in memory, seed 0).

    Args:
        choice: from :func:`choose_default_planner`.
        device: where the model runs.
        dtype: the hub model's dtype (default float32; the tiny one is always float32).
        options: :class:`~vitron.planners.ChatPlanner`'s decoding options.
    """
    from vitron.planners.chat import ChatPlanner
    from vitron.planners.tiny import tiny_planner

    if choice.repo_id is not None:
        return ChatPlanner.from_pretrained(choice.repo_id, device=device, dtype=dtype, **options)
    model, processor = tiny_planner("qwen2_vl", seed=0)
    return ChatPlanner(model.to(device), processor, vision=True, name=TINY_NAME, **options)
