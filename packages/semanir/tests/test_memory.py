"""Peak-memory estimates and tile="auto": whole images when they fit, the largest tiles that do
otherwise, with the same result as the explicit tile size."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from common_kernels.runtime.errors import InvalidValue
from semanir.cli import main
from semanir.inference import AutoTileWarning, load_model, restore
from semanir.io import read_image, write_image
from semanir.memory import auto_tile, bytes_per_pixel, estimate_peak_bytes, pad_multiple
from semanir.models import build_model, get_config

TINY = get_config("semanir_tiny_denoise_gray").to_dict()


def test_the_estimate_is_the_calibrated_cost_per_padded_pixel() -> None:
    # fp32: 10.7 copies of 32 features + 2.55 copies of 2 heads x 64 window tokens, 4 bytes each
    assert bytes_per_pixel(TINY) == pytest.approx(4 * (10.7 * 32 + 2.55 * 2 * 64))
    assert bytes_per_pixel(TINY, dtype_bytes=2) == pytest.approx(bytes_per_pixel(TINY) / 2)
    assert pad_multiple(TINY) == 32  # window 8 x 2^2 levels
    # a 1600 x 1605 photo pads to 1600 x 1632 pixels; measured 7.6 GB
    assert estimate_peak_bytes(TINY, 1600, 1605) == int(1.25 * 1600 * 1632 * 2675.2)
    dncnn = get_config("dncnn_test_tiny").to_dict()
    assert bytes_per_pixel(dncnn) == 4 * 4.0 * 8 and pad_multiple(dncnn) == 1


def test_auto_tile_keeps_what_fits_and_tiles_what_does_not() -> None:
    whole = estimate_peak_bytes(TINY, 512, 512)
    assert auto_tile(TINY, 512, 512, budget=int(whole / 0.8) + 1) is None
    tile = auto_tile(TINY, 512, 512, budget=whole // 4)
    assert tile is not None and tile % 32 == 0 and tile < 512
    assert estimate_peak_bytes(TINY, tile, tile) <= 0.8 * whole // 4  # the tile fits
    assert estimate_peak_bytes(TINY, tile + 32, tile + 32) > 0.8 * whole // 4  # the largest
    with pytest.raises(
        MemoryError,
        match=r"not enough memory to restore this image: 0\.00 GiB "
        r"available, and even 64 px tiles need about 0\.01 GiB",
    ):
        auto_tile(TINY, 512, 512, budget=10_000)  # fmt: skip


def test_restore_auto_equals_the_explicit_tile_and_says_so() -> None:
    torch.manual_seed(0)
    model = build_model("semanir_test_tiny_unet").eval()
    with torch.no_grad():
        model.reconstruct.weight.mul_(100)
    image = torch.rand(1, 1, 96, 80, generator=torch.Generator().manual_seed(1))
    config = model.config.to_dict()
    budget = estimate_peak_bytes(config, 96, 80) // 3  # the whole image does not fit
    tile = auto_tile(config, 96, 80, budget=budget)
    assert tile is not None
    with pytest.warns(
        AutoTileWarning,
        match=rf"^the whole 96x80 image would not fit in "
        rf"memory: restoring it in {tile} px tiles \(tile={tile}\)$",
    ):
        auto = restore(model, image, memory_budget=budget, tile_overlap=8)  # fmt: skip
    assert torch.equal(auto, restore(model, image, tile=tile, tile_overlap=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fits: no warning, the whole image at once
        whole = restore(model, image, memory_budget=10 * budget)
    assert torch.equal(whole, restore(model, image, tile=None))
    assert not torch.equal(auto, whole)


def test_cli_tiles_automatically_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    build_model("semanir_test_tiny_unet").save_pretrained(tmp_path / "model")
    write_image(tmp_path / "big.png", torch.rand(1, 96, 80))
    config = get_config("semanir_test_tiny_unet").to_dict()
    budget = estimate_peak_bytes(config, 96, 80) // 3
    tile = auto_tile(config, 96, 80, budget=budget)
    monkeypatch.setattr("semanir.inference.available_bytes", lambda device: budget)
    model = ["--model", str(tmp_path / "model"), "--tile-overlap", "8"]
    assert main(["restore", str(tmp_path / "big.png"), "-o", str(tmp_path / "a.png"), *model]) == 0
    assert (
        f"semanir restore: big.png (80x96 px) would not fit in memory whole: restoring it in "
        f"{tile} px tiles (--tile {tile})"
    ) in capsys.readouterr().err
    explicit = ["--tile", str(tile)]
    assert main(["restore", str(tmp_path / "big.png"), "-o", str(tmp_path / "b.png"), *model,
                 *explicit]) == 0  # fmt: skip
    assert torch.equal(read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png"))
    loaded = load_model(str(tmp_path / "model"))
    expected = restore(loaded, read_image(tmp_path / "big.png")[None], tile=tile, tile_overlap=8)
    assert (read_image(tmp_path / "a.png") - expected[0]).abs().max() <= 0.5 / 255 + 1e-6


def test_training_estimate_follows_the_fitted_measurements() -> None:
    """The fit of the peak-RSS growth per patch of one training step: 17.2 KB per pixel
    measured for the tiny denoiser, 29.6 KB per low-resolution pixel for the tiny x4 SR model,
    10.5 KB for DnCNN's tiny config; weights, gradients and AdamW's moments: 16 bytes a
    parameter, all with the 1.25 margin."""
    from semanir.memory import training_bytes_per_pixel, training_estimate

    denoiser = get_config("semanir_tiny_denoise_gray").to_dict()
    assert training_bytes_per_pixel(denoiser) == pytest.approx(16883.2)
    sr = get_config("semanir_tiny_sr_x4").to_dict()
    assert training_bytes_per_pixel(sr) == pytest.approx(29468.8)
    assert training_bytes_per_pixel(get_config("dncnn_tiny_denoise_gray").to_dict()) == (
        pytest.approx(10628.92)
    )
    per_patch, fixed = training_estimate(sr, 1000, 128)  # a 32 px input a side
    assert (per_patch, fixed) == (int(1.25 * 32 * 32 * training_bytes_per_pixel(sr)), 20000)


def test_training_memory_is_shared_by_the_processes_of_a_cpu_run() -> None:
    from semanir.memory import check_training_memory, training_estimate

    config = get_config("semanir_test_tiny_unet").to_dict()
    per_patch, fixed = training_estimate(config, 9574, 16)
    budget = 2 * (4 * per_patch + fixed)
    check_training_memory(config, parameters=9574, patch_size=16, batch_size=4, budget=budget,
                          where="cpu", processes=2)  # fmt: skip
    with pytest.raises(InvalidValue) as caught:
        check_training_memory(config, parameters=9574, patch_size=16, batch_size=5,
                              budget=budget, where="cpu", processes=2)  # fmt: skip
    assert str(caught.value) == (
        "batch_size 5: a training step needs an estimated 9.47 MiB (5 x 932.50 KiB per 16 px "
        "patch + 186.99 KiB of weights, gradients and AdamW state in each of 2 processes), more "
        "than the 7.65 MiB available on cpu; use a batch_size of at most 4"
    )


def test_a_validation_batch_is_its_whole_input_pass_plus_the_training_state() -> None:
    """check_validation_memory's need: processes x (restore_estimate of the whole batch +
    16 bytes a parameter with the 1.25 margin); the largest batch that fits is named."""
    from semanir.memory import check_validation_memory, restore_estimate

    config = get_config("semanir_test_tiny_unet").to_dict()

    def need(batch: int) -> int:
        one_pass, images = restore_estimate(config, 24, 40, tile=None, batch=batch)
        return 2 * (one_pass + images + int(1.25 * 16 * 9574))

    common = dict(parameters=9574, height=24, width=40, where="cpu", processes=2)
    check_validation_memory(config, batch_size=7, budget=need(7), **common)
    with pytest.raises(InvalidValue) as caught:
        check_validation_memory(config, batch_size=7, budget=need(5), **common)
    assert str(caught.value).endswith("use a val_batch_size of at most 5")
    assert str(caught.value).startswith("val_batch_size 7: validating 7 24x40 px inputs at once")
    with pytest.raises(InvalidValue) as caught:
        check_validation_memory(config, batch_size=1, budget=need(1) - 1, **common)
    assert str(caught.value).startswith(
        "val_patch_size: validating a whole 24x40 px input needs an estimated"
    )
    assert str(caught.value).endswith("set a val_patch_size (center crops) small enough")
