"""common_kernels.runtime.memory: the available memory of the host and of a CUDA device, and
the byte counts in messages."""

from __future__ import annotations

import sys
import types

import pytest

from common_kernels.runtime import memory
from common_kernels.runtime.imports import runs_in_fresh_interpreter


def test_host_memory_is_meminfos_available_line(tmp_path, monkeypatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1234567 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    assert memory.host_available_bytes() == 1234567 * 1024
    assert memory.available_bytes("cpu") == memory.available_bytes("mps") == 1234567 * 1024


def test_without_meminfo_psutil_answers_and_without_it_none(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "absent")
    fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(available=4096))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert memory.host_available_bytes() == 4096
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert memory.host_available_bytes() is None


def test_a_cuda_device_answers_with_its_free_memory(monkeypatch) -> None:
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: asked.append(d) or (7, 9))
    assert memory.available_bytes("cuda:1") == 7
    assert memory.available_bytes(torch.device("cuda")) == 7
    assert asked == [torch.device("cuda:1"), torch.device("cuda")]


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0.0 B"), (1023, "1023.0 B"), (1536, "1.5 KiB"), (3 * 2**30, "3.0 GiB"),
     (2**60 * 3, "3.0 EiB")],
)  # fmt: skip
def test_human_bytes(count: int, text: str) -> None:
    assert memory.human_bytes(count) == text


def test_importing_it_leaves_psutil_unimported() -> None:
    run = runs_in_fresh_interpreter("common_kernels.runtime.memory", [], ["psutil"])
    assert run["import"].loaded == []
