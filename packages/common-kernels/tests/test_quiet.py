"""Third-party chatter off inside quiet_libraries, every setting restored after."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from common_kernels.runtime.quiet import ENVIRONMENT, LOGGERS, quiet_libraries


def test_notices_and_tips_are_off_inside_and_restored_after(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    lightning = logging.getLogger("lightning.pytorch")
    lightning.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            warnings.warn("old API", FutureWarning, stacklevel=1)
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
            assert all(logging.getLogger(name).level == logging.ERROR for name in LOGGERS)
            assert all(os.environ[key] == value for key, value in ENVIRONMENT.items())
            warnings.warn("a real problem", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["a real problem"]
    assert lightning.level == logging.INFO
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_verbose_changes_nothing(monkeypatch) -> None:
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    with pytest.warns(FutureWarning), quiet_libraries(verbose=True):
        assert "TRANSFORMERS_VERBOSITY" not in os.environ
        warnings.warn("old API", FutureWarning, stacklevel=1)


@pytest.mark.filterwarnings("ignore:Cannot enable progress bars")  # HF_HUB_DISABLE_PROGRESS_BARS
def test_quiet_loading_turns_the_loading_bars_off_and_back_on() -> None:
    from common_kernels.runtime.quiet import quiet_loading

    diffusers_logging = pytest.importorskip("diffusers.utils.logging")
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    modules = (diffusers_logging, transformers_logging)
    transformers_logging.disable_progress_bar()  # off before: stays off after
    try:
        with quiet_loading():
            assert not any(module.is_progress_bar_enabled() for module in modules)
        assert diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
        with pytest.raises(RuntimeError, match="boom"), quiet_loading():
            raise RuntimeError("boom")
        assert diffusers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
