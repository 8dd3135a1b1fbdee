"""Every API argument error reaches the user under the flag they typed: one case per entry of
the command's table ``FLAGS`` (API argument -> flag) whose value is checked, each a bad value
run through ``main`` in-process, ending with exactly one line ``diffeat COMMAND: error: ...``
and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import diffeat.memory as memory
from diffeat.cli import FLAGS, main

# the extract command the cases change ({m}: the tiny SD 1.5 folder, {t}: a folder of inputs)
EXTRACT = ["extract", "{t}/a.png", "--model", "{m}", "-o", "{t}/f.safetensors"]
PCA = ["pca", "{t}/a.png", "--model", "{m}", "-o", "{t}/pca"]
GENERATE = ["generate-features", "--model", "{m}", "-o", "{t}/g.safetensors"]
CONTROL = ["--controlnet", "{m}/unet", "--control-image"]  # a folder with a config.json
AVAILABLE = "more than the 1.0 MiB available (lower it, or pass --allow-large to run anyway)"
# API argument -> (command line, the error line after "diffeat COMMAND: error: ")
CASES = {
    "model_id_or_dir": (
        [*EXTRACT, "--model", "{t}/nope"],
        "--model: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "model": (
        ["layers", "--model", "{t}/nope"],
        "--model: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "config": (
        ["layers", "--config", "sd3"],
        "argument --config: invalid choice: 'sd3' (choose from 'flux-dev', 'pixart-alpha-1024', "
        "'pixart-alpha-512', 'pixart-sigma', 'playground-v2', 'sd15', 'sd21', 'sd3.5-medium', "
        "'sdxl', 'tiny-flux', 'tiny-pixart-alpha', 'tiny-pixart-alpha-512', 'tiny-pixart-sigma', "
        "'tiny-sd15', 'tiny-sd3', 'tiny-sdxl')",
    ),
    "text_tokens": (
        ["layers", "--config", "sd15", "--text-tokens", "0"],
        "--text-tokens must be >= 1, got 0",
    ),
    "port": (["app", "--port", "0"], "--port: must be in [1, 65535], got 0"),
    "directory": (
        ["tiny-model", "{m}", "--kind", "sd15"],
        "DIR {m} already holds a model (model_index.json)",
    ),
    "layers": (
        [*EXTRACT, "--layers", "unet-in,nope"],
        "--layers: unknown activation name(s) for this U-Net: 'nope'; the catalogue has 198 names "
        "(diffeat.list_layers(unet) or `diffeat layers --model ...`); whole selections: all, "
        "diffeat-flux, diffeat-pixart-sigma, diffeat-sd3, legacy-v1.5, legacy-xl, ours-v1.5, "
        "ours-xl",
    ),
    "sigma": ([*EXTRACT, "--sigma", "1.5"], "--sigma: must be a number in [0, 1]; got 1.5"),
    "noising": (
        [*EXTRACT, "--noising", "ddim"],
        "argument --noising: invalid choice: 'ddim' (choose from 'random', 'ddim-inversion')",
    ),
    "offload": (
        [*EXTRACT, "--offload", "sequential"],
        "argument --offload: invalid choice: 'sequential' (choose from 'model')",
    ),
    "inversion_steps": (
        [*EXTRACT, "--noising", "ddim-inversion", "--inversion-steps", "51"],
        "--inversion-steps: must be in [1, timestep] = [1, 50] (distinct integer timesteps from "
        "0 to t; t >= 1); got 51",
    ),
    "guidance_scale": (
        [*EXTRACT, "--guidance-scale", "3.5"],
        "--guidance-scale: applies to FLUX transformers with a guidance embedding (FLUX.1-dev) "
        "only; this model is a U-Net without one",
    ),
    "preset": (
        [*EXTRACT, "--preset", "ours-xl"],
        "--preset ours-xl: its names are those of sdxl U-Nets, but --model {m} is sd15-shaped "
        "(its presets: legacy-v1.5, ours-v1.5)",
    ),
    "timestep": (
        [*EXTRACT, "--timestep", "1000"],
        "--timestep: must be an integer in [0, 999] (the scheduler's num_train_timesteps is "
        "1000); got 1000",
    ),
    "dtype": (
        [*EXTRACT, "--dtype", "fp8"],
        "argument --dtype: invalid choice: 'fp8' (choose from 'bf16', 'fp16', 'fp32')",
    ),
    "device": (
        [*EXTRACT, "--device", "tpu"],
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "seed": ([*EXTRACT, "--seed", "-1"], f"--seed must be in [0, {2**64 - 1}], got -1"),
    "latent": (
        [*EXTRACT, "--latent", "mode"],
        "argument --latent: invalid choice: 'mode' (choose from 'sample', 'mean')",
    ),
    "image_size": (
        [*EXTRACT, "--image-size", "4096"],
        "--image-size 4096x4096 with --batch-size 1: needs an estimated 2.3 GiB (2,495,873,024 "
        f"bytes) of host memory, {AVAILABLE}",
    ),
    "batch_size": ([*EXTRACT, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "allow_large": (
        [*EXTRACT, "--resize", "4096"],
        "--resize 4096x4096: needs an estimated 3.5 GiB (3,758,705,728 bytes) of host memory, "
        + AVAILABLE,
    ),
    "lora": (
        [*EXTRACT, "--lora", "{t}/nope"],
        "--lora: no LoRA file or folder {t}/nope (nothing at {t}/nope)",
    ),
    "lora_scale": (
        [*EXTRACT, "--lora", "{t}/notes.txt", "--lora-scale", "nan"],
        "--lora-scale: must be a finite number; got nan",
    ),
    "fuse_lora": ([*EXTRACT, "--fuse-lora"], "--fuse-lora: needs --lora PATH"),
    "controlnet": (
        [*EXTRACT, "--controlnet", "{t}/nope", "--control-image", "{t}/a.png"],
        "--controlnet: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "control_scale": (
        [*EXTRACT, *CONTROL, "{t}/a.png", "--control-scale", "inf"],
        "--control-scale: must be a finite number; got inf",
    ),
    "control_image": (
        [*EXTRACT, *CONTROL, "{t}/notes.txt"],
        "--control-image {t}/notes.txt is not a readable image (cannot identify image file "
        "'{t}/notes.txt')",
    ),
    "resize": (
        [*EXTRACT, "--resize", "4096"],
        "--resize 4096x4096: needs an estimated 3.5 GiB (3,758,705,728 bytes) of host memory, "
        + AVAILABLE,
    ),
    "concat": (
        [*EXTRACT, "--concat", "--all"],
        "--concat at 8x8: needs an estimated 4.6 MiB (4,859,808 bytes) of host memory, "
        + AVAILABLE,
    ),
    "size": (
        [*PCA, "--size", "4096"],
        "--size 4096x4096: needs an estimated 816.6 MiB (856,255,552 bytes) of host memory, "
        + AVAILABLE,
    ),
    "output": (
        [*EXTRACT, "-o", "{t}/f.txt"],
        "-o/--output {t}/f.txt: suffix '.txt'; accepted: .safetensors",
    ),
    "features": (
        ["pca", "-o", "{t}/pca", "--features", "{t}/nope.safetensors"],
        "--features {t}/nope.safetensors does not exist",
    ),
    "probes": (
        ["probe", "{t}/a.png", "--model", "{m}", "--probes", "noise,x"],
        "--probes 'noise,x': choose a comma-separated subset of noise,granularity,locality",
    ),
    "images": (
        ["extract", "{t}/nope.png", "--model", "{m}", "-o", "{t}/f.safetensors"],
        "IMAGE|FOLDER: no such file or folder: {t}/nope.png",
    ),
    "in_place": (
        ["pca", "{t}", "--model", "{m}", "-o", "{t}"],
        "-o/--output: {t} is the input folder {t}: the PNGs would be written among its images "
        "(and be inputs of its next walk); choose another folder, or pass --in-place to write "
        "them there",
    ),
    "steps": (
        [*GENERATE, "--steps", "4", "--num-inference-steps", "3"],
        "--steps must be loop indices in [0, 3] (this run calls the network 4 times), got 4",
    ),
    "branch": (
        [*GENERATE, "--steps", "0", "--branch", "neg"],
        "argument --branch: invalid choice: 'neg' (choose from 'cond', 'uncond', 'both')",
    ),
    "num_inference_steps": (
        [*GENERATE, "--steps", "0", "--num-inference-steps", "0"],
        "--num-inference-steps must be >= 1, got 0",
    ),
    "image": (
        [*GENERATE, "--steps", "0", "--image", "{t}/g.jpg"],
        "--image {t}/g.jpg: suffix '.jpg'; accepted: .png",
    ),
}
CASES.update({
    "shard": ([*EXTRACT, "--shard", "1/1"],
              "--shard: the shard index must be an int in [0, 0] (0-based), got 1"),
    "ray_workers": ([*EXTRACT, "--ray", "--ray-workers", "0"],
                    "--ray-workers: must be an int >= 1, got 0"),
    "ray_batch_size": ([*EXTRACT, "--ray", "--ray-batch", "0"],
                       "--ray-batch: must be an int >= 1, got 0"),
    "ray_gpus_per_worker": ([*EXTRACT, "--ray", "--ray-gpus", "-0.5"],
                            "--ray-gpus: must be a number >= 0, got -0.5"),
})  # fmt: skip
# switches the API takes as given: no value of theirs is refused
UNCHECKED = {"faithful", "recursive"}


@pytest.fixture
def inputs(tmp_path, monkeypatch) -> Path:
    """An image and a text file; no CUDA or MPS and 1 MiB of memory available (the same
    messages on every machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_every_flag_of_the_table_has_a_case():
    assert sorted([*CASES, *UNCHECKED]) == sorted(FLAGS)


@pytest.mark.parametrize("argument", sorted(CASES))
def test_the_api_error_names_the_flag_typed(argument, inputs, model_dirs, capsys):
    argv, line = CASES[argument]
    for key, value in {"{t}": str(inputs), "{m}": str(model_dirs["sd15"])}.items():
        argv, line = [a.replace(key, value) for a in argv], line.replace(key, value)
    before = sorted(inputs.rglob("*"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"diffeat {argv[0]}: error: {line}\n"
    assert FLAGS[argument].split("/")[-1] in line
    assert captured.out == "" and sorted(inputs.rglob("*")) == before  # nothing written
