"""How much memory a job may use, for the memory estimates every command checks before it
works. Standard library only at import (torch and psutil are imported when asked about).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

MEMINFO = Path("/proc/meminfo")


def host_available_bytes() -> int | None:
    """The host's available memory (what new allocations can take without swapping): Linux's
    ``MemAvailable``, else psutil's ``available``, else None (unknown)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def available_bytes(device: Any = "cpu") -> int | None:
    """Free bytes where ``device``'s tensors live: a CUDA device's free memory, else the host's
    available memory (the CPU's, and MPS's: it shares the host's); None when unknown.

    Args:
        device: a ``torch.device`` or its name (``"cpu"``, ``"cuda:1"``, ``"mps"``).
    """
    if str(device).startswith("cuda"):
        torch = sys.modules.get("torch") or importlib.import_module("torch")
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return host_available_bytes()


def human_bytes(count: float) -> str:
    """Bytes in the largest binary unit below them, one decimal: ``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} EiB"
