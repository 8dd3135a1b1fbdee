"""Repository-wide pytest hooks: `slow` tests run only with RUN_SLOW=1, `gpu` tests need CUDA."""

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Triton decides between compiling and interpreting when a kernel module is imported, so
    # the switch must be set before test modules import the packages.
    if "TRITON_INTERPRET" not in os.environ and not _cuda_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("RUN_SLOW") == "1"
    has_cuda = _cuda_available()
    skip_slow = pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run it")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
