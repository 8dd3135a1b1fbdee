"""The CLI is a thin skin over the API (issue 25): the command flows live in
``diffeat.commands``, the checks run once, and ``check_inputs`` gives the CLI's messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffeat
from diffeat import FeatureExtractor, commands, plan
from diffeat.cli import main
from diffeat.commands import check_inputs
from diffeat.extractor import check_from_pretrained

SOURCE = Path(diffeat.__file__).parent
GIB = 2**30


def save_image(path: Path, height: int, width: int) -> Path:
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return path


def test_cli_stays_small():
    # 450 until issue 33 added the folder walk, --keep-going, --skip-existing, --in-place, --verbose
    assert (SOURCE / "cli.py").read_text().count("\n") < 500


def count_calls(monkeypatch, module, name: str) -> list:
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_extract_checks_and_reads_configs_once(model_dirs, tmp_path, monkeypatch, capsys):
    image = save_image(tmp_path / "img.png", 64, 64)
    plans = count_calls(monkeypatch, plan, "check_from_pretrained")
    monkeypatch.setattr("diffeat.command_checks.check_from_pretrained", plan.check_from_pretrained)
    configs = count_calls(monkeypatch, plan, "read_model_configs")
    shapes = [
        count_calls(monkeypatch, plan, "model_infos"),
        count_calls(monkeypatch, commands, "model_infos"),
    ]
    output = tmp_path / "out.safetensors"
    argv = ["extract", str(image), "--model", str(model_dirs["sd15"]), "--layers", "unet-in",
            "-o", str(output)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert len(plans) == 1 and len(configs) == 1
    assert [len(calls) for calls in shapes] == [1, 0]  # 64x64 is the plan's (native) size
    assert output.is_file()


def test_from_plan_loads_the_checked_plan(model_dirs, monkeypatch):
    checked = check_from_pretrained(model_dirs["sd15"], layers=["unet-in"], timestep=10, seed=3)
    configs = count_calls(monkeypatch, plan, "read_model_configs")
    loaded = FeatureExtractor.from_plan(checked)
    assert configs == []
    assert loaded.layers == ("unet-in",) and loaded.config.timestep == 10
    assert loaded.config.seed == 3 and loaded.device == checked.device


def test_check_inputs_gives_the_cli_message(model_dirs, tmp_path, capsys, monkeypatch):
    sd15 = model_dirs["sd15"]
    odd = save_image(tmp_path / "odd.png", 80, 96)
    square = save_image(tmp_path / "img.png", 64, 64)
    wide = save_image(tmp_path / "wide.png", 64, 128)
    plan = check_from_pretrained(sd15, layers=["unet-in"])
    factors = "not a multiple of 64 for this model (VAE x8, U-Net x8)"
    with pytest.raises(ValueError) as info:
        check_inputs(plan, [odd])
    assert str(info.value) == f"{odd} is 80x96 (HxW), {factors}; pass image_size S|HxW to resize"
    with pytest.raises(ValueError) as info:
        check_inputs(plan, [square, wide], batch_size=2)
    assert str(info.value) == (
        f"{square} is 64x64 but {wide} is 64x128 (HxW); the images of one batch (batch_size 2) "
        "need one size: pass image_size S|HxW to resize them"
    )
    checked = check_inputs(plan, [square, wide])  # one per batch: each its own size
    assert checked.fed == (64, 128) and checked.shapes() == [(4, 8, 16)]
    out = str(tmp_path / "p.json")
    assert main(["probe", str(odd), "--model", str(sd15), "--layers", "unet-in", "-o", out]) == 2
    expected = f"{odd} is 80x96 (HxW), {factors}; pass --image-size S|HxW to resize"
    assert capsys.readouterr().err == f"diffeat probe: error: {expected}\n"
    argv = ["probe", str(square), str(wide), "--model", str(sd15), "--layers", "unet-in",
            "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"diffeat probe: error: {square} is 64x64 but {wide} is 64x128 (HxW); the images of "
        "one batch (--batch-size 2) need one size: pass --image-size S|HxW to resize them\n"
    )


def test_check_inputs_owns_the_memory_check(model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("common_kernels.runtime.memory.host_available_bytes", lambda: 1000)
    image = save_image(tmp_path / "img.png", 64, 64)
    plan = check_from_pretrained(model_dirs["sd15"], layers=["unet-in"], image_size=64)
    with pytest.raises(ValueError) as info:
        check_inputs(plan, [image])
    api = str(info.value)
    assert api.startswith("image_size 64x64 with batch_size 1: needs an estimated ")
    assert api.endswith("or pass allow_large to run anyway)")
    assert check_inputs(plan, [image], allow_large=True).fed == (64, 64)
    argv = ["extract", str(image), "--model", str(model_dirs["sd15"]), "--layers", "unet-in",
            "--image-size", "64", "-o", str(tmp_path / "o.safetensors")]  # fmt: skip
    assert main(argv) == 2
    cli = api.replace("image_size", "--image-size").replace("batch_size", "--batch-size")
    cli = cli.replace("allow_large", "--allow-large")
    assert capsys.readouterr().err == f"diffeat extract: error: {cli}\n"
