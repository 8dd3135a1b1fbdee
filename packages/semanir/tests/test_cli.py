"""The ``semanir`` command: restore, eval, fit through LightningCLI, config files, errors."""

import csv
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semanir.cli import main
from semanir.data.datasets import index_generator
from semanir.data.degradations import add_gaussian_noise, bicubic_downscale, bicubic_resize
from semanir.inference import load_model, restore
from semanir.io import convert_channels, read_image, write_image
from semanir.lightning_module import RestorationCLI, WarmupEMAWeightAveraging
from semanir.metrics import psnr, ssim
from semanir.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "semanir" / "configs"


def make_images(folder: Path, count: int, size: tuple[int, int], channels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(count)
    for index in range(count):
        ramp = torch.linspace(0.1, 0.9, size[1]).view(1, 1, -1).expand(channels, *size)
        texture = 0.1 * torch.rand(channels, *size, generator=generator)
        write_image(folder / f"im{index}.png", ramp + texture)
    return folder


def test_restore_folder_writes_model_outputs(tmp_path: Path, gray_model: Path) -> None:
    inputs = make_images(tmp_path / "in", count=2, size=(20, 28))
    assert (
        main(["restore", str(inputs), "-o", str(tmp_path / "out"), "--model", str(gray_model)]) == 0
    )
    model = load_model(str(gray_model))
    for name in ("im0.png", "im1.png"):
        written = read_image(tmp_path / "out" / name)
        expected = restore(model, read_image(inputs / name)[None])[0]
        assert written.shape == (1, 20, 28)
        assert (written - expected).abs().max().item() <= 0.5 / 255 + 1e-6  # 8-bit rounding
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.png", "im1.png"]


def test_restore_ensemble_flag_runs_the_x8_self_ensemble(tmp_path: Path, gray_model: Path) -> None:
    inputs = make_images(tmp_path / "in", count=1, size=(20, 28))
    argv = ["restore", str(inputs), "-o", str(tmp_path / "out"), "--model", str(gray_model)]
    assert main([*argv, "--ensemble"]) == 0
    model = load_model(str(gray_model))
    image = read_image(inputs / "im0.png")[None]
    expected = restore(model, image, ensemble=True)[0]
    written = read_image(tmp_path / "out" / "im0.png")
    assert (written - expected).abs().max().item() <= 0.5 / 255 + 1e-6  # 8-bit rounding


def test_restore_with_added_noise_prints_psnr_before_and_after(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_path = make_images(tmp_path / "in", count=1, size=(24, 24)) / "im0.png"
    out = tmp_path / "restored.png"
    argv = ["restore", str(clean_path), "-o", str(out), "--model", str(gray_model)]
    assert main([*argv, "--sigma", "25", "--add-noise", "--seed", "3", "--save-noisy"]) == 0
    printed = capsys.readouterr().out
    before, after = map(
        float, re.search(r"PSNR ([\d.]+) dB \(noisy\) -> ([\d.]+) dB", printed).groups()
    )
    clean = read_image(clean_path)
    noisy = add_gaussian_noise(clean, 25, index_generator(3, 0))
    assert before == pytest.approx(psnr(noisy, clean).item(), abs=0.01)
    restored = read_image(out)
    assert after == pytest.approx(psnr(restored, clean).item(), abs=0.01)
    saved_noisy = read_image(tmp_path / "restored_noisy.png")
    assert (saved_noisy - noisy.clamp(0, 1)).abs().max().item() <= 0.5 / 255 + 1e-6
    assert "mean PSNR over 1 image(s)" in printed
    assert main([*argv, "--add-noise", "50", "--seed", "3"]) == 0  # explicit level
    stronger = float(re.search(r"PSNR ([\d.]+) dB \(noisy\)", capsys.readouterr().out).group(1))
    assert stronger < before - 4


def test_restore_handles_tiny_16bit_and_alpha_images(tmp_path: Path, gray_model: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.new("L", (1, 1), 90).save(tmp_path / "in" / "pixel.png")
    Image.fromarray(np.full((5, 3), 30000, np.uint16)).save(tmp_path / "in" / "deep.png")
    Image.new("RGBA", (6, 4), (10, 200, 30, 0)).save(tmp_path / "in" / "alpha.png")
    out = tmp_path / "out"
    argv = ["restore", str(tmp_path / "in"), "-o", str(out), "--model", str(gray_model)]
    assert main(argv) == 0
    assert read_image(out / "pixel.png").shape == (1, 1, 1)
    assert read_image(out / "deep.png").shape == (1, 5, 3)
    assert Image.open(out / "deep.png").mode == "I;16"  # 16-bit in, 16-bit out
    with Image.open(out / "alpha.png") as written:
        assert written.mode == "RGBA" and written.size == (6, 4)  # colour and alpha kept
        assert np.asarray(written)[..., 3].max() == 0


def test_eval_prints_table_and_writes_csv(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_images(tmp_path / "clean", count=2, size=(24, 32))
    table = tmp_path / "results" / "scores.csv"
    argv = ["eval", "--task", "denoise", "--sigma", "25", "--data", str(data)]
    assert main([*argv, "--model", str(gray_model), "--csv", str(table), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "denoise (sigma=25)" in printed and re.search(r"^mean\s", printed, re.MULTILINE)
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["im0.png", "im1.png", "mean"]
    clean = read_image(data / "im1.png")
    noisy = add_gaussian_noise(clean, 25, index_generator(1, 1))
    assert float(rows[1]["psnr_in"]) == pytest.approx(psnr(noisy, clean).item(), abs=1e-6)
    assert float(rows[1]["ssim_in"]) == pytest.approx(ssim(noisy, clean).item(), abs=1e-6)
    restored = restore(load_model(str(gray_model)), noisy[None])[0]
    assert float(rows[1]["psnr_out"]) == pytest.approx(psnr(restored, clean).item(), abs=1e-4)
    mean_in = (float(rows[0]["psnr_in"]) + float(rows[1]["psnr_in"])) / 2
    assert float(rows[2]["psnr_in"]) == pytest.approx(mean_in)


def test_eval_super_resolution_uses_y_channel_and_border_crop(
    tmp_path: Path, sr_model: Path
) -> None:
    data = make_images(tmp_path / "clean", count=1, size=(21, 30), channels=3)
    table = tmp_path / "sr.csv"
    argv = ["eval", "--task", "sr", "--data", str(data), "--model", str(sr_model)]
    assert main([*argv, "--csv", str(table)]) == 0
    with table.open() as handle:
        first = next(csv.DictReader(handle))
    clean = read_image(data / "im0.png")[:, :20, :30]  # cropped to a multiple of the scale
    upsampled = bicubic_resize(bicubic_downscale(clean, 2), 2)
    expected = psnr(upsampled, clean, y_channel=True, crop_border=2).item()
    assert float(first["psnr_in"]) == pytest.approx(expected, abs=1e-6)


def test_fit_through_lightning_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["semanir"])
    train = make_images(tmp_path / "train", count=4, size=(24, 24))
    val = make_images(tmp_path / "val", count=1, size=(16, 16))
    argv = [
        "fit",
        "--config",
        str(CONFIGS / "denoise_gray_tiny.yaml"),
        "--seed_everything",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_time",
        "00:00:05:00",
        "--trainer.max_steps",
        "2",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--model.arch",
        "semanir_test_tiny_unet",
        "--model.export_dir",
        str(tmp_path / "export"),
        "--data.train_dirs",
        f"[{train}]",
        "--data.val_dirs",
        f"[{val}]",
        "--data.patch_size",
        "16",
        "--data.val_patch_size",
        "null",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
    ]
    assert main(argv) == 0
    exported = load_model(str(tmp_path / "export"))
    assert exported.config.embed_dim == build_model("semanir_test_tiny_unet").config.embed_dim
    run_dir = tmp_path / "outputs" / "denoise_gray_tiny" / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    checkpoints = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in checkpoints)


@pytest.mark.parametrize(
    ("config", "arch"),
    [
        ("denoise_gray_tiny.yaml", "semanir_tiny_denoise_gray"),
        ("denoise_gray_tiny_bundled.yaml", "semanir_tiny_denoise_gray"),
        ("denoise_color_base.yaml", "semanir_base_denoise_color"),
        ("sr_x4_small.yaml", "semanir_small_sr_x4"),
        ("jpeg_gray_base.yaml", "semanir_base_jpeg_gray"),
        ("jpeg_gray_tiny.yaml", "semanir_tiny_jpeg_gray"),
        ("denoise_color_tiny.yaml", "semanir_tiny_denoise_color"),
        ("sr_x4_tiny.yaml", "semanir_tiny_sr_x4"),
    ],
)
def test_configs_parse_and_instantiate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, arch: str
) -> None:
    monkeypatch.setattr(sys, "argv", ["semanir"])  # keep pytest's arguments away from the CLI
    # the base and small configs are for GPU machines, whose 8 loader workers need 8 CPUs (a
    # machine with fewer refuses them: test_more_workers_than_cpus_are_refused)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    cli = RestorationCLI(
        args=["--config", str(CONFIGS / config), "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.model.hparams.arch == arch
    assert cli.model.hparams.task == cli.datamodule.hparams.task
    assert cli.config.seed_everything == 0
    if cli.datamodule.hparams.task == "sr":
        assert cli.model.upscale == cli.datamodule.hparams.scale == 4
    if config in ("denoise_color_tiny.yaml", "sr_x4_tiny.yaml"):  # trained with the warm-up
        assert any(isinstance(c, WarmupEMAWeightAveraging) for c in cli.trainer.callbacks)


def run_failing(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_restore_errors(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "in", count=1, size=(8, 8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.png").write_text("not a png")
    out = str(tmp_path / "out")
    model = ["--model", str(gray_model)]
    cases = {
        "--sigma: must be in [0, 255] (8-bit scale), got 300": [
            str(images),
            "--add-noise",
            "--sigma",
            "300",
        ],
        "--add-noise: must be in [0, 255] (8-bit scale), got -5": [
            str(images),
            "--add-noise",
            "-5",
        ],
        "--add-noise without a level needs --sigma": [str(images), "--add-noise"],
        "--add-noise applies to --task denoise only": [
            str(images),
            "--task",
            "jpeg",
            "--add-noise",
            "5",
        ],
        "no images": [str(tmp_path / "empty")],
        "notes.txt is not an image file": [str(tmp_path / "notes.txt")],
        "cannot read": [str(tmp_path / "broken.png")],
        "does not fit --task sr": [str(images), "--task", "sr"],
        "--tile: must be an int >= the model's window size": [str(images), "--tile", "1"],
        "--sigma sets the level of --add-noise and does nothing without it": [
            str(images),
            "--sigma",
            "25",
        ],
    }
    for message, options in cases.items():
        err = run_failing(["restore", *options, "-o", out, *model], capsys)
        assert message in err, (message, err)
        assert err.startswith("semanir restore: error:")
    assert not (tmp_path / "out" / "broken.png").exists()


def test_restore_checks_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = str(make_images(tmp_path / "in", count=2, size=(8, 8)))
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr("semanir.inference.load_model", lambda name: pytest.fail("model loaded"))
    out = ["-o", "out"]
    cases = {
        "-o/--output: out.xyz: '.xyz' is not an image suffix (.png, .jpg": ["-o", "out.xyz"],
        "-o/--output: out.png: 2 images cannot go into one image file; give an output folder (a "
        "name without a suffix)": ["-o", "out.png"],
        "is a file, not a folder": ["-o", str(tmp_path / "a_file" / "out")],
        "--device gpu0: expected cpu, cuda, cuda:N or mps (available: cpu": [
            *out, "--device", "gpu0"
        ],
        "--tile: must be an int >= the model's window size 8 (pixels), got 0": [
            *out, "--tile", "0"
        ],
        "--tile-overlap: must be in [0, --tile - 1] = [0, 15] (pixels), got 16": [
            *out, "--tile", "16", "--tile-overlap", "16"
        ],
        "--k: must be an int in [1, 64] (a 8x8 window holds 64 tokens), got 0": [*out, "--k", "0"],
        "--add-noise: must be in [0, 255] (8-bit scale), got nan": [*out, "--add-noise", "nan"],
        "--tile-overlap: must be >= 0 (pixels), got -1": [*out, "--tile-overlap", "-1"],
        "the model keeps the image size, which does not fit --task sr": [
            *out, "--task", "sr", "--model", "semanir_tiny_denoise_gray"
        ],
        "the model upscales x4, which does not fit --task denoise": [
            *out, "--model", "semanir_tiny_sr_x4"
        ],
        "--per-channel applies to gray models; this model takes 3 channels": [
            *out, "--per-channel", "--model", "semanir_tiny_denoise_color"
        ],
    }  # fmt: skip
    if not torch.cuda.is_available():
        cases["--device cuda: no CUDA device is available (available: cpu"] = [
            *out, "--device", "cuda"
        ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for message, options in cases.items():
        err = run_failing(["restore", images, *options], capsys)
        assert message in err, (message, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in"]  # nothing created


def test_missing_model_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = str(make_images(tmp_path / "in", count=1, size=(8, 8)))
    missing = str(tmp_path / "no_such_model")
    err = run_failing(["restore", images, "-o", str(tmp_path / "o"), "--model", missing], capsys)
    assert f"no model folder {missing} (nothing at {missing})" in err
    (tmp_path / "weights.bin").write_text("x")
    err = run_failing(
        ["restore", images, "-o", str(tmp_path / "o"), "--model", str(tmp_path / "weights.bin")],
        capsys,
    )
    assert "weights.bin is a file; expected a save_pretrained folder or a hub id" in err


def test_colour_input_to_a_gray_model_keeps_its_colour(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "in", count=1, size=(12, 12), channels=3)
    out = tmp_path / "out.png"
    assert main(["restore", str(images), "-o", str(out), "--model", str(gray_model)]) == 0
    assert "warning" not in capsys.readouterr().err
    colour = read_image(images / "im0.png")
    luma = convert_channels(colour, "gray")
    restored_luma = restore(load_model(str(gray_model)), luma[None])[0]
    written = read_image(out)
    assert written.shape == (3, 12, 12)
    expected = (restored_luma + colour - luma).clamp(0, 1)  # the chroma R-Y, G-Y, B-Y kept
    assert (written - expected).abs().max().item() <= 0.5 / 255 + 1e-6
    gray_out = tmp_path / "gray.png"
    argv = ["restore", str(images), "-o", str(gray_out), "--model", str(gray_model)]
    assert main([*argv, "--gray-output"]) == 0
    assert (read_image(gray_out) - restored_luma).abs().max().item() <= 0.5 / 255 + 1e-6


def test_per_channel_restores_colour_with_a_gray_model(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "in", count=1, size=(12, 12), channels=3)
    out = tmp_path / "out.png"
    argv = ["restore", str(images), "-o", str(out), "--model", str(gray_model)]
    assert main([*argv, "--per-channel"]) == 0
    assert "warning" not in capsys.readouterr().err
    colour = read_image(images / "im0.png")  # (3, H, W)
    model = load_model(str(gray_model))
    expected = torch.cat([restore(model, channel[None, None])[0] for channel in colour])
    written = read_image(out)
    assert written.shape == (3, 12, 12)
    assert (written - expected).abs().max().item() <= 0.5 / 255 + 1e-6


def test_per_channel_needs_a_gray_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    colour_model = tmp_path / "colour"
    build_model("semanir_test_tiny_unet", in_channels=3, out_channels=3).save_pretrained(
        colour_model
    )
    images = make_images(tmp_path / "in", count=1, size=(12, 12), channels=3)
    argv = ["restore", str(images), "-o", str(tmp_path / "out"), "--model", str(colour_model)]
    err = run_failing([*argv, "--per-channel"], capsys)
    assert err == (
        "semanir restore: error: --per-channel applies to gray models; this model takes 3 "
        "channels\n"
    )
    assert not (tmp_path / "out").exists()


def test_eval_warns_when_a_gray_model_scores_colour_images(
    tmp_path: Path, gray_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_images(tmp_path / "clean", count=2, size=(12, 12), channels=3)
    make_images(tmp_path / "gray", count=1, size=(12, 12))
    (data / "gray.png").write_bytes((tmp_path / "gray" / "im0.png").read_bytes())
    argv = ["eval", "--sigma", "25", "--data", str(data), "--model", str(gray_model)]
    assert main(argv) == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        "semanir eval: warning: 2 of the 3 --data image(s) are colour and the model is a gray "
        "model: scoring their BT.601 luma"
    )


def test_eval_errors(
    tmp_path: Path, gray_model: Path, sr_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(make_images(tmp_path / "clean", count=1, size=(12, 12), channels=3))
    cases = {
        "--task denoise needs --sigma": ["--task", "denoise", "--model", str(gray_model)],
        "--quality: must be an integer in [1, 95], got 0": ["--task", "jpeg", "--quality", "0"],
        "--scale: must be one of 2, 3, 4, got 5": ["--task", "sr", "--scale", "5"],
        "--scale 3 does not match the model's x2": [
            "--task",
            "sr",
            "--scale",
            "3",
            "--model",
            str(sr_model),
        ],
    }
    for message, options in cases.items():
        err = run_failing(["eval", "--data", data, *options], capsys)
        assert message in err, (message, err)
    err = run_failing(["eval", "--data", str(tmp_path / "none"), "--sigma", "5"], capsys)
    assert "no such file or folder" in err


def test_csv_is_not_left_half_written(
    tmp_path: Path, gray_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_images(tmp_path / "clean", count=1, size=(16, 16))
    table = tmp_path / "scores.csv"

    def failing_writerows(self: csv.DictWriter, rows: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", failing_writerows)
    argv = ["eval", "--sigma", "10", "--data", str(data), "--model", str(gray_model)]
    assert main([*argv, "--csv", str(table)]) == 1
    assert not table.exists() and [p.name for p in tmp_path.iterdir()] == ["clean"]


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    usage = "semanir {fit,validate,restore,eval,models,app,export,upscale-models}"
    assert usage in capsys.readouterr().out
    assert main([]) == 2
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err
    assert main(["restore", "x.png", "-o", "out", "--task", "inpaint"]) == 2
    err = capsys.readouterr().err.replace("'", "")  # Python 3.12 stopped quoting the choices
    assert err == (
        "semanir restore: error: argument --task: invalid choice: inpaint (choose from "
        "denoise, jpeg, sr)\n"
    )


def test_fit_names_the_shipped_configs_and_the_data_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From any working folder: an unknown config lists the shipped ones, and a shipped config
    whose data folders are not found says how to point at them, each in one line before the
    trainer is built; with SEMANIR_DATA set, the same command trains."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEMANIR_DATA", raising=False)
    assert main(["fit", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semanir fit: error: --config nope: no such file")
    assert "shipped: denoise_color_base, denoise_color_tiny, denoise_gray_small_gpu," in err[0]
    assert main(["fit", "--config", "denoise_gray_tiny"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"semanir fit: error: data.train_dirs: train400 not found in {tmp_path} (no "
        "data.data_root, no $SEMANIR_DATA); set --data.data_root DIR or $SEMANIR_DATA to the "
        "folder that holds them"
    )
    data = tmp_path / "shared"
    make_images(data / "train400", count=2, size=(64, 64))
    make_images(data / "set12", count=1, size=(128, 128))
    monkeypatch.setenv("SEMANIR_DATA", str(data))
    monkeypatch.setattr(sys, "argv", ["semanir"])  # keep pytest's arguments away from the CLI
    status = main([
        "fit", "--config", "denoise_gray_tiny", "--trainer.max_steps", "1",
        "--data.batch_size", "1", "--data.patch_size", "32", "--data.num_workers", "0",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--model.export_dir", "",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    assert status == 0


@pytest.mark.parametrize("offline", [True, False])
def test_an_unreachable_hub_is_one_line_before_any_download(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    offline: bool,
) -> None:
    """A hub id that is not cached: with HF_HUB_OFFLINE the error comes without asking the
    network; without it, when the hub's host does not answer (here: refused at once), the
    error says so instead of the libraries' retries. Exit status 1: a failure while working."""
    images = str(make_images(tmp_path / "in", count=1, size=(8, 8)))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    asked = []

    def no_route(address, timeout):
        asked.append(address)
        raise ConnectionRefusedError("no route")

    monkeypatch.setattr("socket.create_connection", no_route)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = ["restore", images, "-o", str(tmp_path / "out"), "--model", "owner/model"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semanir restore: error: ")
    if offline:
        assert "owner/model is not in the local hub cache" in err[0] and asked == []
        assert "HF_HUB_OFFLINE is set, so the hub is not asked" in err[0]
    else:
        assert (
            "cannot reach the Hugging Face hub (huggingface.co) for owner/model within 5 s "
            "(ConnectionRefusedError: no route)"
        ) in err[0]
        assert asked == [("huggingface.co", 443)]
    assert not (tmp_path / "out").exists()
