"""Loading: no stray progress lines of transformers/diffusers, and the hub rule of
``common_kernels.runtime.hub`` for the DiT loader as for the U-Net one (issue 25, item 4)."""

from __future__ import annotations

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from common_kernels.runtime.hub import HubUnreachableError
from diffeat import FeatureExtractor
from diffeat.dit import DiTFeatureExtractor
from diffeat.extractor import quiet_loading

ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"
MODULES = (diffusers_logging, transformers_logging)


def test_a_load_prints_no_progress_bar(model_dirs, capfd):
    capfd.readouterr()
    extractor = FeatureExtractor.from_pretrained(model_dirs["sd15"], layers=["unet-in"])
    captured = capfd.readouterr()
    assert extractor.layers == ("unet-in",)
    assert "Loading weights" not in captured.err and "it/s" not in captured.err
    assert captured.out == ""
    assert [module.is_progress_bar_enabled() for module in MODULES] == [True, True]


def test_quiet_loading_restores_the_previous_state():
    with quiet_loading():
        assert [module.is_progress_bar_enabled() for module in MODULES] == [False, False]
    assert [module.is_progress_bar_enabled() for module in MODULES] == [True, True]
    transformers_logging.disable_progress_bar()
    try:
        with pytest.raises(RuntimeError, match="boom"), quiet_loading():
            raise RuntimeError("boom")
        assert diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()  # was off: stays off
    finally:
        transformers_logging.enable_progress_bar()


def test_the_dit_loader_follows_the_hub_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        DiTFeatureExtractor.from_pretrained("./nope_dir")
    assert str(info.value) == (
        f"model_id_or_dir: no model folder ./nope_dir (nothing at {tmp_path}/nope_dir)"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    asked = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: asked.append(a))
    with pytest.raises(HubUnreachableError) as info:
        DiTFeatureExtractor.from_pretrained("org/pixart")
    assert str(info.value) == (
        f"org/pixart is not in the local hub cache ({tmp_path / 'hub'}) and HF_HUB_OFFLINE is "
        f"set, so the hub is not asked; {ADVICE}"
    )
    assert asked == []
