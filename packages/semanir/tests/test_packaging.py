"""The wheel carries what the README's commands need: bundled weights and training configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from common_kernels.runtime.cli import UsageError
from semanir.bundled import BUNDLED_MODELS
from semanir.lightning_cli import bundled_configs_dir, with_bundled_configs

PACKAGE = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (PACKAGE / "src" / "semanir" / "configs").glob("*.yaml"))


def test_config_names_resolve_to_shipped_files(tmp_path, monkeypatch):
    assert "denoise_gray_tiny_bundled.yaml" in SHIPPED
    path = str(bundled_configs_dir() / "denoise_gray_tiny.yaml")
    for name in ("denoise_gray_tiny", "denoise_gray_tiny.yaml"):
        assert with_bundled_configs(["fit", "--config", name, "--seed_everything", "0"]) == [
            "fit", "--config", path, "--seed_everything", "0",
        ]  # fmt: skip
        assert with_bundled_configs(["fit", f"--config={name}"]) == ["fit", f"--config={path}"]
    # a file of that name in the working folder wins; an unknown name lists the shipped ones
    monkeypatch.chdir(tmp_path)
    (tmp_path / "denoise_gray_tiny.yaml").write_text("seed_everything: 1\n")
    local = ["fit", "--config", "denoise_gray_tiny.yaml"]
    assert with_bundled_configs(local) == local
    # a folder of a shipped config's name (a run's outputs) does not hide the config
    (tmp_path / "sr_x4_tiny").mkdir()
    shipped_sr = str(bundled_configs_dir() / "sr_x4_tiny.yaml")
    assert with_bundled_configs(["fit", "--config", "sr_x4_tiny"])[2] == shipped_sr
    for unknown in ("mine", "a/denoise_gray_tiny"):
        with pytest.raises(
            UsageError,
            match=rf"^--config {unknown}: no such file and no shipped "
            "config; shipped: denoise_color_base, ",
        ):
            with_bundled_configs(["fit", "--config", unknown])  # fmt: skip


def test_wheel_contains_configs_and_bundled_weights(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
         str(PACKAGE)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("semanir-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"semanir/configs/{name}" for name in SHIPPED} <= names
    for name in BUNDLED_MODELS:  # every bundled model, all of them under the 10 MB budget
        weights = f"semanir/weights/{name}"
        assert {f"{weights}/model.safetensors", f"{weights}/config.json"} <= names
    with zipfile.ZipFile(wheel) as archive:
        infos = archive.infolist()
    bundled_bytes = sum(i.file_size for i in infos if i.filename.startswith("semanir/weights/"))
    assert bundled_bytes < 10 * 2**20, bundled_bytes
