"""The CLI's error contract: one line ``pixelsmith COMMAND: error: ...`` naming the flag and its
accepted range, exit 2, found before any model is loaded and before anything is written;
failures while working exit 1 with one line; sizes are HEIGHTxWIDTH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import pixelsmith.cascade as cascade_module
import pixelsmith.cli as cli
import pixelsmith.memory as memory
from pixelsmith import PixelsmithPipeline
from pixelsmith.cli import main
from pixelsmith.io import COMPRESSIONS, compression_error
from pixelsmith.sources import check_from_pretrained

PREFIX = "pixelsmith generate: error: "
SMALL = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]
FILES = ["busy.tif.pixelsmith", "file.txt", "photos", "taken.tif"]  # what `files` holds


@pytest.fixture
def files(tmp_path) -> Path:
    """Things in the way of outputs: a file, a folder named like an image, a foreign folder."""
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "taken.tif").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    (tmp_path / "busy.tif.pixelsmith").write_text("a file where the checkpoint folder goes")
    return tmp_path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def refused(argv: list[str], capsys) -> str:
    """What ``main(argv)`` wrote on stderr, once it exited 2 with nothing on stdout."""
    status, out, err = run(argv, capsys)
    assert (status, out) == (2, "")
    return err


def generate_args(tiny_dir: Path, tmp: Path, *extra: str) -> list[str]:
    """A valid command on the tiny model; later options in ``extra`` replace earlier ones."""
    return ["generate", "a cat", "--model", str(tiny_dir), "--sizes", "64", "128", "--slider",
            "2", "--steps", "2", "-o", str(tmp / "out.tif"), "--quiet", *SMALL, *extra]  # fmt: skip


def usable_compressions() -> str:
    return ", ".join(c for c in COMPRESSIONS if compression_error(c) is None)


# the generate options added to generate_args -> the error line after PREFIX; the first bad value
# of each API argument (--sizes 60 128, --steps 0, --patch-size 0, ...) is test_cli_flags.py's
# case, run there with the same command line and checks
CASES = {
    # --sizes and --slider
    "sizes_not_a_size": (
        ["--sizes", "64", "2048x"],
        "--sizes: expected S or HxW (height x width) in pixels, positive integers, got '2048x'",
    ),
    "sizes_three_sides": (
        ["--sizes", "64", "8x8x8"],
        "--sizes: expected S or HxW (height x width) in pixels, positive integers, got '8x8x8'",
    ),
    "sizes_shrinking": (
        ["--sizes", "128", "64"],
        "--sizes must grow stage by stage (no side smaller than the previous "
        "stage's and not equal to it), got --sizes[0] = 128x128 then "
        "--sizes[1] = 64x64",
    ),
    "sizes_below_one_patch": (
        ["--sizes", "32", "48"],
        "--sizes[1] = 48x48 is smaller than one patch (64 px = --patch-size "
        "8 latent px); use larger sizes or a smaller --patch-size",
    ),
    "sizes_huge": (
        ["--sizes", "1024", "1048576"],
        "--sizes 1048576x1048576: the full-size latent maps of this stage alone need "
        "1133871366144 bytes (1,056.00 GiB, 66 bytes per latent px), more than the "
        "17179869184 bytes (16.00 GiB) available on cpu; use smaller --sizes, or "
        "--allow-large to try anyway",
    ),
    "slider_missing": (
        ["--slider"],
        "--slider must hold one slider per stage after the first (1 for 2 sizes), got []",
    ),
    "slider_too_many": (
        ["--slider", "1", "2"],
        "--slider must hold one slider per stage after the first (1 for 2 sizes), got [1, 2]",
    ),
    "slider_above_steps": (["--slider", "9"], "--slider[0] must be an int in [1, 2], got 9"),
    "slider_0": (["--slider", "0"], "--slider[0] must be an int in [1, 2], got 0"),
    "slider_not_int": (["--slider", "x"], "argument --slider: invalid int value: 'x'"),
    "steps_above_training": (
        ["--steps", "1001"],
        "--steps must be an int in [1, 1000] (the scheduler's training timesteps), got 1001",
    ),
    # sampler settings
    "patch_size_not_unet_multiple": (
        ["--patch-size", "6"],
        "--patch-size must be a multiple of the UNet downsampling factor 4, got 6",
    ),
    "scheduler_choice": (
        ["--scheduler", "spiral"],
        "argument --scheduler: invalid choice: 'spiral' (choose from 'grid', 'random')",
    ),
    "guidance_nan": (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
    # --device
    "device_cuda": (
        ["--device", "cuda"],
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "device_cuda_1": (
        ["--device", "cuda:1"],
        "--device cuda:1: no CUDA device is available (available: cpu)",
    ),
    "device_mps": (
        ["--device", "mps"],
        "--device mps: no MPS device is available (available: cpu)",
    ),
    "device_unknown": (
        ["--device", "tpu"],
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    # --model and --vae
    "model_relative_folder_missing": (
        ["--model", "./nope/model"],
        "--model: no model folder ./nope/model (nothing at {cwd}/nope/model)",
    ),
    "model_deep_path_missing": (
        ["--model", "a/b/c"],
        "--model: unknown model 'a/b/c': a local folder starts with ./ or / (or exists), a hub "
        "id is owner/name",
    ),
    "model_is_a_file": (
        ["--model", "{t}/file.txt"],
        "--model {t}/file.txt is a file; expected a hub id (owner/name) or a folder",
    ),
    "model_not_diffusers": (
        ["--model", "{t}/photos"],
        "--model {t}/photos: no model_index.json in the folder (not a diffusers folder)",
    ),
    "model_bad_hub_id": (
        ["--model", "org/bad..name"],
        "--model: unknown model 'org/bad..name': a local folder starts with ./ or / (or "
        "exists), a hub id is owner/name",
    ),
    "vae_folder_missing": (
        ["--vae", "./nope/vae"],
        "--vae: no VAE folder ./nope/vae (nothing at {cwd}/nope/vae)",
    ),
    "vae_not_diffusers": (
        ["--vae", "{t}/photos"],
        "--vae {t}/photos: no config.json in the folder (not a diffusers folder)",
    ),
    # -o/--output, --compression, the checkpoint folder
    "output_folder_missing": (
        ["-o", "{t}/nowhere/out.tif"],
        "-o/--output folder '{t}/nowhere' does not exist",
    ),
    "output_below_a_file": (
        ["-o", "{t}/file.txt/out.tif"],
        "-o/--output '{t}/file.txt/out.tif': '{t}/file.txt' is a file, not a folder",
    ),
    "output_is_a_folder": (
        ["-o", "{t}/taken.tif"],
        "-o/--output '{t}/taken.tif' is a folder, not a file",
    ),
    "output_png_too_large": (
        ["--sizes", "64", "20480", "--slider", "1", "-o", "{t}/out.png"],
        "-o/--output '{t}/out.png': a 20480x20480 image is too large for .png "
        "(held in RAM; at most 268435456 px); use a .tif output (BigTIFF, "
        "streamed)",
    ),
    "compression_unknown": (
        ["--compression", "bogus"],
        "--compression 'bogus' cannot be written here (COMPRESSION: invalid "
        "argument 'BOGUS'); usable here: {usable} (more with `pip install "
        "imagecodecs`)",
    ),
    "checkpoint_dir_below_a_file": (
        ["--checkpoint-dir", "{t}/file.txt/ckpt"],
        "--checkpoint-dir {t}/file.txt/ckpt: cannot create it, {t}/file.txt is a file",
    ),
    "checkpoint_dir_foreign": (
        ["--checkpoint-dir", "{t}/photos"],
        "--checkpoint-dir {t}/photos holds files but no run.json: not a "
        "pixelsmith checkpoint folder, and a finished run deletes its "
        "checkpoint folder; choose another --checkpoint-dir",
    ),
    "default_checkpoint_is_a_file": (
        ["-o", "{t}/busy.tif"],
        "the checkpoint folder {t}/busy.tif.pixelsmith (set with "
        "--checkpoint-dir) is a file, not a folder",
    ),
}


def fill(text: str, tmp: Path) -> str:
    text = text.replace("{t}", str(tmp)).replace("{cwd}", str(Path.cwd()))
    return text.replace("{usable}", usable_compressions())


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_bad_input_one_line_exit_2_before_model_load(
    case, tiny_dir, files, capsys, no_model_load, machine
):
    extra, message = CASES[case]
    before = sorted(files.rglob("*"))
    err = refused(generate_args(tiny_dir, files, *(fill(a, files) for a in extra)), capsys)
    assert err == f"{PREFIX}{fill(message, files)}\n"
    assert sorted(files.rglob("*")) == before  # nothing written: no image, no checkpoint folder


def test_unwritable_output_folder(tiny_dir, files, capsys, monkeypatch, no_model_load, machine):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user without rights
    err = refused(generate_args(tiny_dir, files), capsys)
    assert err == f"{PREFIX}-o/--output '{files}/out.tif': cannot write to '{files}'\n"


def test_allow_large_skips_the_memory_check(tiny_dir, files, capsys, machine, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("org/sdxl is not reachable (offline)")

    monkeypatch.setattr(PixelsmithPipeline, "from_pretrained", unreachable)
    argv = generate_args(tiny_dir, files, "--sizes", "1024", "1048576", "--allow-large")
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""  # checks passed, the load was tried and failed
    assert err == (f"{PREFIX}cannot load --model {tiny_dir}: org/sdxl is not reachable (offline)\n")


def test_memory_check_against_the_available_memory(tiny_dir, files, capsys, monkeypatch, machine):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 128 * 128 * 66 - 1)
    status, _, err = run(generate_args(tiny_dir, files, "--sizes", "512", "1024"), capsys)
    assert status == 2
    assert err.startswith(f"{PREFIX}--sizes 1024x1024: the full-size latent maps of this stage ")
    assert "need 1081344 bytes (0.00 GiB, 66 bytes per latent px), more than the 1081343 " in err
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: no check
    monkeypatch.setattr(cascade_module, "run_cascade", lambda *args, **kwargs: files / "out.tif")
    assert run(generate_args(tiny_dir, files, "--sizes", "512", "1024"), capsys)[0] == 0


# the tiny model of generate_args: a 128 px stage is 16x16 latent px, 4 disjoint 8x8 patches;
# its UNet (widths 4, 8, 16) has 7 values per latent px -> 252 bytes per px of a sample, its
# VAE (widths 4 x 4) 340 values per latent px -> 8500 bytes per px of a tile
UNET_CALL = 6 * 8 * 8 * 252  # --patch-batch 3 with guidance: 6 samples of 8x8 px
VAE_TILE = 8 * 8 * 8500  # --vae-tile 8


ACTIVATION_CASES = {  # --patch-batch 1 leaves the UNet call under the VAE tile's estimate
    "patch_batch": (
        ["--patch-batch", "3"],
        UNET_CALL,
        "--patch-batch 3: one UNet call on 3 patches of 8x8 latent px (6 samples with guidance) "
        f"needs an estimated {UNET_CALL} bytes (0.00 GiB, 252 bytes per latent px of a sample)",
        "--patch-batch",
    ),
    "vae_tile": (
        ["--patch-batch", "1"],
        VAE_TILE,
        f"--vae-tile 8: decoding one 8x8 latent px tile needs an estimated {VAE_TILE} bytes "
        "(0.00 GiB, 8500 bytes per latent px)",
        "--vae-tile",
    ),
}


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_patch_batch_and_vae_tile_are_bounded_by_their_activations(
    case, tiny_dir, files, capsys, monkeypatch, machine, no_model_load
):
    extra, need, estimate, flag = ACTIVATION_CASES[case]
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    err = refused(generate_args(tiny_dir, files, *extra), capsys)
    assert err == (
        f"{PREFIX}{estimate} of activations, more than the {need - 1} bytes (0.00 GiB) "
        f"available on cpu; use a smaller {flag}, or --allow-large to try anyway\n"
    )
    assert sorted(path.name for path in files.iterdir()) == sorted(FILES)


def test_batches_and_tiles_larger_than_the_image_are_clamped(
    tiny_dir, files, capsys, monkeypatch, machine, no_model_load
):
    """A --patch-batch above the disjoint patches of the largest stage is clamped to them and a
    --vae-tile above the latent is clipped to it: the estimates count what runs."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * 16 * 8500 - 1)
    argv = generate_args(tiny_dir, files, "--patch-batch", "1000", "--vae-tile", "64")
    status, _, err = run(argv, capsys)
    assert status == 2  # the patch batch passed: 4 patches, 8 samples of 8x8 px
    assert err.startswith(f"{PREFIX}--vae-tile 64: decoding one 16x16 latent px tile needs an ")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 8 * 8 * 252 - 1)
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err.startswith(f"{PREFIX}--patch-batch 1000: one UNet call on 4 patches of 8x8 ")
    assert f"needs an estimated {8 * 8 * 8 * 252} bytes " in err


def test_allow_large_skips_the_activation_checks(tiny_dir, files, capsys, monkeypatch, machine):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * 16 * 66)  # latent maps
    monkeypatch.setattr(cascade_module, "run_cascade", lambda *args, **kwargs: files / "out.tif")
    argv = generate_args(tiny_dir, files, "--patch-batch", "3")
    status, _, err = run(argv, capsys)
    assert status == 2 and err.startswith(f"{PREFIX}--patch-batch 3: one UNet call on 3 ")
    status, _, err = run([*argv, "--allow-large"], capsys)
    assert (status, err) == (0, "")  # checks passed, the (stubbed) cascade ran


def test_devices_on_cpu_are_bounded_by_the_memory_of_their_copies(
    tiny_dir, files, capsys, monkeypatch, machine, no_model_load
):
    """--devices N on cpu starts N processes, each with the interpreter and its own copy of the
    model: refused before any work when they cannot fit; --allow-large skips the check."""
    weights = sum(
        path.stat().st_size
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        for path in (tiny_dir / name).glob("*.safetensors")
    )
    assert check_from_pretrained(tiny_dir).weight_bytes == weights
    monkeypatch.setenv("HF_HUB_CACHE", str(files / "cache"))  # an uncached hub id: unknown
    assert check_from_pretrained("org/sdxl", None).weight_bytes is None
    monkeypatch.setattr(memory, "resident_bytes", lambda: 2**30)
    each = 2**30 + weights
    argv = generate_args(tiny_dir, files, "--device", "cpu", "--devices", "17")
    err = refused(argv, capsys)
    assert err == (
        f"{PREFIX}--devices 17 on cpu: each process holds the interpreter with torch and its own "
        f"copy of the model ({each} bytes, {weights} of them weight files), 17 processes need at "
        f"least {17 * each} bytes ({17 * each / 2**30:,.2f} GiB), more than the 17179869184 "
        "bytes (16.00 GiB) available; use a smaller --devices, or --allow-large to try anyway\n"
    )
    started = []
    monkeypatch.setattr(cli, "run_on_ranks", lambda *args: started.append(args[1]) or 0)
    assert run([*argv, "--allow-large"], capsys)[0] == 0 and started == [17]
    assert run([*argv[:-1], "15"], capsys)[0] == 0 and started == [17, 15]  # 15 GiB and a bit


def test_checks_read_the_geometry_of_a_local_model(tiny_dir, tmp_path, capsys, no_model_load):
    model = tmp_path / "other"
    for part in ("vae", "unet", "scheduler"):
        (model / part).mkdir(parents=True)
    (model / "model_index.json").write_text((tiny_dir / "model_index.json").read_text())
    (model / "vae" / "config.json").write_text('{"block_out_channels": [4, 4, 4]}')  # factor 4
    (model / "unet" / "config.json").write_text('{"block_out_channels": [4, 8]}')  # factor 2
    (model / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 500}')
    cases = {
        ("--sizes", "62", "128"): "--sizes[0] must be multiples of the VAE scale factor 4, got "
        "62x62",
        ("--steps", "501"): "--steps must be an int in [1, 500] (the scheduler's training "
        "timesteps), got 501",
        ("--patch-size", "3"): "--patch-size must be a multiple of the UNet downsampling factor "
        "2, got 3",
    }
    for extra, message in cases.items():
        argv = generate_args(tiny_dir, tmp_path, "--model", str(model), *extra)
        assert run(argv, capsys) == (2, "", f"{PREFIX}{message}\n")


def test_hub_model_load_failure_exits_1_with_one_line(files, capsys, monkeypatch, machine):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(PixelsmithPipeline, "from_pretrained", offline)
    argv = ["generate", "a cat", "--model", "org/sdxl", "--vae", "org/vae", "--sizes", "1024",
            "2048", "--slider", "20", "-o", str(files / "out.tif")]  # fmt: skip
    before = sorted(files.rglob("*"))
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    assert err == (
        f"{PREFIX}cannot load --model org/sdxl --vae org/vae: We couldn't connect to "
        "'https://huggingface.co' to load the files\n"
    )
    assert sorted(files.rglob("*")) == before


def test_disk_full_while_writing_exits_1_with_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    def disk_full(blocks, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("pixelsmith.cascade.write_image", disk_full)
    status, out, err = run(generate_args(tiny_dir, tmp_path), capsys)
    assert status == 1 and out == ""
    assert err.splitlines()[-1] == (
        f"{PREFIX}[Errno 28] No space left on device: '{tmp_path / 'out.tif'}'"
    )
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out.tif").exists()


def test_sizes_are_height_by_width(tiny_dir, tmp_path, capsys):
    png, tif = tmp_path / "wide.png", tmp_path / "wide.tif"
    for path in (png, tif):
        argv = generate_args(tiny_dir, tmp_path, "--sizes", "64", "64x128", "-o", str(path))
        assert run(argv, capsys)[0] == 0
    assert Image.open(png).size == (128, 64)  # PIL: (width, height)
    assert tifffile.imread(tif).shape == (64, 128, 3)  # (height, width, 3)
    assert np.array_equal(tifffile.imread(tif), np.asarray(Image.open(png)))


def test_help_states_the_size_convention(generate_help):
    assert "HEIGHTxWIDTH (1536x2048 is 2048 px wide)" in generate_help
    assert "--allow-large" in generate_help


def test_missing_arguments_one_line(capsys):
    err = refused(["generate", "a cat", "--sizes", "64"], capsys)
    assert err == f"{PREFIX}the following arguments are required: -o/--output\n"


def test_unknown_or_missing_command_one_line(capsys):
    assert refused(["paint"], capsys) == (
        "pixelsmith: error: argument command: invalid choice: 'paint' "
        "(choose from 'generate', 'app', 'tiny-model')\n"
    )
    assert refused([], capsys) == (
        "pixelsmith: error: the following arguments are required: command\n"
    )


def test_tiny_model_into_a_file_is_refused(files, capsys):
    err = refused(["tiny-model", str(files / "file.txt")], capsys)
    assert err == f"pixelsmith tiny-model: error: DIR {files}/file.txt is a file, not a folder\n"
    assert (files / "file.txt").read_text() == "in the way"


def test_bad_input_in_a_subprocess_prints_one_line_and_no_traceback(tiny_dir, tmp_path):
    argv = generate_args(tiny_dir, tmp_path, "--compression", "bogus")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pixelsmith.cli", *argv], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"{PREFIX}--compression 'bogus' cannot be written here (COMPRESSION: invalid argument "
        f"'BOGUS'); usable here: {usable_compressions()} (more with `pip install imagecodecs`)\n"
    )
    assert list(tmp_path.iterdir()) == []
