"""Repository-wide pytest hooks: `slow` tests run only with RUN_SLOW=1, `gpu` tests need CUDA,
and collecting the tests must leave the environment as it was."""

import os

import pytest

_ENVIRONMENT = pytest.StashKey[dict]()
# Set by libraries for themselves when imported, not by test modules: torch._dynamo.testing
# points inductor's cache at its default folder, lightning asks torch for NVML's device count,
# scikit-learn (imported by libraries where it is installed, as on the GPU machines) sets its
# OpenMP switches; this list once stopped the whole GPU lane at collection on an H200.
_SET_BY_LIBRARIES = frozenset(
    {
        "TORCHINDUCTOR_CACHE_DIR",
        "PYTORCH_NVML_BASED_CUDA_CHECK",
        "KMP_DUPLICATE_LIB_OK",
        "KMP_INIT_AT_FORK",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    # Triton decides between compiling and interpreting when a kernel module is imported, so
    # the switch must be set before test modules import the packages.
    if "TRITON_INTERPRET" not in os.environ and not _cuda_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection(session: pytest.Session) -> None:
    session.config.stash[_ENVIRONMENT] = dict(os.environ)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail the run if importing a test module changed os.environ.

    A module that sets a variable at import changes it for every test collected after it, in
    every package of a combined run (``nox -s gpu`` collects all packages in one process): a
    ``TRITON_INTERPRET`` set that way once made the GPU lane interpret compiled kernels.
    """
    before = session.config.stash[_ENVIRONMENT]
    changed = sorted(
        k
        for k in (before.keys() | os.environ.keys()) - _SET_BY_LIBRARIES
        if before.get(k) != os.environ.get(k)
    )
    if changed:
        raise pytest.UsageError(
            f"collecting the tests changed the environment ({', '.join(changed)}): a test "
            "module must not set os.environ at import; use monkeypatch or a fixture"
        )


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
