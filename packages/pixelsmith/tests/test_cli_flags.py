"""Every API argument error reaches the user under the flag they typed: one case per entry of
the command's table ``FLAGS`` (API argument -> flag), each a bad value run through ``main``
in-process, ending with exactly one line ``pixelsmith COMMAND: error: ...`` and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pixelsmith.cli import FLAGS, main

SMALL = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]
# the generate command the cases change ({m}: the tiny model, {t}: a folder of inputs)
GENERATE = ["generate", "a cat", "--model", "{m}", "--sizes", "64", "128", "--slider", "2",
            "--steps", "2", "-o", "{t}/out.tif", "--quiet", *SMALL]  # fmt: skip
CONTROL = ["--controlnet", "{m}/unet", "--control-image"]  # a folder with a config.json
# API argument -> (command line, the error line after "pixelsmith COMMAND: error: ")
CASES = {
    "pretrained_model_name_or_path": (
        [*GENERATE, "--model", "{t}/nope"],
        "--model: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "vae": (
        [*GENERATE, "--vae", "{t}/nope"],
        "--vae: no VAE folder {t}/nope (nothing at {t}/nope)",
    ),
    "sizes": (
        [*GENERATE, "--sizes", "60", "128"],
        "--sizes[0] must be multiples of the VAE scale factor 8, got 60x60",
    ),
    "sliders": ([*GENERATE, "--slider", "3"], "--slider[0] must be an int in [1, 2], got 3"),
    "num_inference_steps": (
        [*GENERATE, "--steps", "0"],
        "--steps must be an int in [1, 1000] (the scheduler's training timesteps), got 0",
    ),
    "guidance_scale": (
        [*GENERATE, "--guidance", "inf"],
        "--guidance must be a finite number, got inf",
    ),
    "seed": ([*GENERATE, "--seed", "-1"], f"--seed must be an int in [0, {2**64 - 1}], got -1"),
    "output": (
        [*GENERATE, "-o", "{t}/out.xyz"],
        "-o/--output must end with one of .tif, .tiff, .png, .jpg, .jpeg, .webp, .bmp, got "
        "'{t}/out.xyz'",
    ),
    "in_place": (
        [*GENERATE, *CONTROL, "{t}/cond.png", "-o", "{t}/cond.png"],
        "-o/--output: {t}/cond.png would replace the input {t}/cond.png; choose another output, "
        "or pass --in-place to replace the inputs (atomically)",
    ),
    "save_intermediate": (
        [*GENERATE, *CONTROL, "{t}/out_64x64.png", "-o", "{t}/out.png", "--save-intermediate"],
        "--save-intermediate: the intermediate image {t}/out_64x64.png would replace the input "
        "{t}/out_64x64.png (--control-image), which later stages still read; choose another "
        "-o/--output name",
    ),
    "checkpoint_dir": (
        [*GENERATE, "--checkpoint-dir", "{t}/file.txt"],
        "--checkpoint-dir {t}/file.txt is a file, not a folder",
    ),
    "checkpoint_every": (
        [*GENERATE, "--checkpoint-every", "0"],
        "--checkpoint-every must be an int >= 1, got 0",
    ),
    "compression": (
        [*GENERATE, "--compression", "zlib", "-o", "{t}/out.png"],
        "--compression applies to .tif/.tiff outputs only, got -o/--output {t}/out.png",
    ),
    "controlnet": (
        [*GENERATE, "--controlnet", "{t}/nope", "--control-image", "{t}/cond.png"],
        "--controlnet: no ControlNet folder {t}/nope (nothing at {t}/nope)",
    ),
    "control_image": (
        [*GENERATE, *CONTROL, "{t}/file.txt"],
        "--control-image {t}/file.txt: cannot read {t}/file.txt as an image: cannot identify "
        "image file '{t}/file.txt'",
    ),
    "controlnet_conditioning_scale": (
        [*GENERATE, "--control-scale", "nan"],
        "--control-scale must be a finite number, got nan",
    ),
    "allow_large": (
        [*GENERATE, "--sizes", "64", "1048576"],
        "--sizes 1048576x1048576: the full-size latent maps of this stage alone need "
        "1133871366144 bytes (1,056.00 GiB, 66 bytes per latent px), more than the 17179869184 "
        "bytes (16.00 GiB) available on cpu; use smaller --sizes, or --allow-large to try anyway",
    ),
    "faithful": (
        [*GENERATE, "--faithful", "--devices", "2"],
        "--faithful runs in one process, got 2 processes: the official sampler fuses each patch "
        "before reverting it, so a patch reads pixels that earlier patches of the same step "
        "changed and the patches of a step cannot run side by side",
    ),
    "patch_size": ([*GENERATE, "--patch-size", "0"], "--patch-size must be an int >= 1, got 0"),
    "band": ([*GENERATE, "--band", "-1"], "--band must be an int >= 0, got -1"),
    "patch_scheduler": (
        [*GENERATE, "--faithful", "--scheduler", "grid"],
        "--scheduler grid is not available with --faithful (the official sampler places patches "
        "at random centres); use --scheduler random or leave it out",
    ),
    "patch_batch_size": (
        [*GENERATE, "--patch-batch", "0"],
        "--patch-batch must be an int >= 1, got 0",
    ),
    "grid_min_overlap": (
        [*GENERATE, "--grid-min-overlap", "8"],
        "--grid-min-overlap must be an int in [0, 7], got 8",
    ),
    "guidance_posterior": (
        [*GENERATE, "--posterior", "mode"],
        "argument --posterior: invalid choice: 'mode' (choose from 'sample', 'mean')",
    ),
    "handover": (
        [*GENERATE, "--handover", "int8"],
        "argument --handover: invalid choice: 'int8' (choose from 'float', 'uint8')",
    ),
    "vae_tile": (
        [*GENERATE, "--vae-tile", "0", "--vae-overlap", "0"],
        "--vae-tile must be an int >= 1, got 0",
    ),
    "vae_overlap": (
        [*GENERATE, "--vae-overlap", "8"],
        "--vae-overlap must be an int in [0, 7], got 8",
    ),
    "vae_blend": (
        [*GENERATE, "--vae-blend", "cubic"],
        "argument --vae-blend: invalid choice: 'cubic' (choose from 'none', 'linear', 'gaussian')",
    ),
    "loras": (
        [*GENERATE, "--lora", "{t}/nope"],
        "--lora: no LoRA file or folder {t}/nope (nothing at {t}/nope)",
    ),
    "lora_scales": (
        [*GENERATE, "--lora", "{t}/file.txt", "--lora-scale", "nan"],
        "--lora-scale must be finite numbers, got nan",
    ),
    "devices": ([*GENERATE, "--devices", "0"], "--devices must be an int >= 1, got 0"),
    "device": (
        ["app", "-o", "{t}/app", "--device", "tpu"],
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "output_dir": (
        ["app", "-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "port": (["app", "-o", "{t}/app", "--port", "0"], "--port: must be in [1, 65535], got 0"),
}


@pytest.fixture
def inputs(tmp_path, machine) -> Path:
    """A file in the way, a square condition image and one named like an intermediate image; no
    CUDA or MPS and 16 GiB available (conftest's ``machine``: the same messages everywhere)."""
    (tmp_path / "file.txt").write_text("not an image")
    Image.new("RGB", (128, 128)).save(tmp_path / "cond.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "out_64x64.png")
    return tmp_path


def test_every_flag_of_the_table_has_a_case():
    assert sorted(CASES) == sorted(FLAGS)


@pytest.mark.parametrize("argument", sorted(CASES))
def test_the_api_error_names_the_flag_typed(argument, inputs, tiny_dir, capsys, no_model_load):
    argv, line = CASES[argument]
    fill = {"{t}": str(inputs), "{m}": str(tiny_dir)}
    for key, value in fill.items():
        argv, line = [a.replace(key, value) for a in argv], line.replace(key, value)
    before = sorted(inputs.rglob("*"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"pixelsmith {argv[0]}: error: {line}\n"
    assert FLAGS[argument].split("/")[-1] in line
    assert captured.out == "" and sorted(inputs.rglob("*")) == before  # nothing written
