"""The CLI's error contract: one line ``diffeat COMMAND: error: ...`` naming the flag, exit 2,
found before any weights are loaded and before anything is written; failures while working
exit 1; Ctrl-C exits 130 with one line; the memory estimate behind huge sizes."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from common_kernels.runtime import files as files_module
from common_kernels.runtime.testing import interrupted_run
from diffeat import PRESETS, FeatureExtractor
from diffeat.checks import ModelConfigs, model_infos
from diffeat.cli import main
from diffeat.configs import unet_config
from diffeat.memory import pass_bytes
from diffeat.shapes import layer_infos

GIB = 2**30


@pytest.fixture
def no_model_load(monkeypatch):
    """Any weight load fails the test: the checks must come first (config files may be read)."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(FeatureExtractor, "from_pretrained", fail)
    monkeypatch.setattr("diffeat.extractor.load_components", fail)
    monkeypatch.setattr("diffeat.cli.load_features", fail)  # pca reads --features after checks
    for cls in (diffusers.UNet2DConditionModel, diffusers.AutoencoderKL):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    for cls in (transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("common_kernels.runtime.memory.host_available_bytes", lambda: 8 * GIB)


def save_image(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def files(tmp_path, model_dirs) -> Path:
    """Images (good, broken, odd-sized), folders and files in the way, broken model folders."""
    save_image(tmp_path / "img.png", 64, 64)
    save_image(tmp_path / "wide.png", 64, 128)
    save_image(tmp_path / "odd.png", 80, 96)
    (tmp_path / "notes.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "photos").mkdir()
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    save_image(tmp_path / "nested" / "deeper" / "y.png", 64, 64)
    (tmp_path / "dir.safetensors").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_image(tmp_path / sub / "x.png", 64, 64)
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    save_file({"x": torch.zeros(2, 3)}, tmp_path / "flat.safetensors")
    (tmp_path / "empty_model").mkdir()
    broken = tmp_path / "broken_model"
    shutil.copytree(model_dirs["sd15"], broken, ignore=shutil.ignore_patterns("*.safetensors"))
    (broken / "unet" / "config.json").write_text("{")
    no_second_encoder = shutil.ignore_patterns("text_encoder_2", "*.safetensors")
    shutil.copytree(model_dirs["sdxl"], tmp_path / "sdxl_one_encoder", ignore=no_second_encoder)
    (tmp_path / "unet_only" / "unet").mkdir(parents=True)
    shutil.copy(model_dirs["sd15"] / "unet" / "config.json", tmp_path / "unet_only" / "unet")
    (tmp_path / "pca").mkdir()
    (tmp_path / "pca" / "img__unet-in.png").mkdir()
    return tmp_path


def fill(text: str, tmp: Path, model_dirs: dict[str, Path]) -> str:
    for key, value in (
        ("{t}", tmp),
        ("{sd15}", model_dirs["sd15"]),
        ("{sdxl}", model_dirs["sdxl"]),
    ):
        text = text.replace(key, str(value))
    return text


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def extract_args(*extra: str, image: str = "img.png") -> list[str]:
    return ["extract", f"{{t}}/{image}", "--model", "{sd15}", "-o", "{t}/out.safetensors", *extra]


IMAGE_SUFFIXES = ", ".join(files_module.IMAGE_SUFFIXES)
SELECTIONS = (
    "all, diffeat-flux, diffeat-pixart-sigma, diffeat-sd3, legacy-v1.5, legacy-xl, ours-v1.5, "
    "ours-xl"
)
FACTORS = "64 for this model (VAE x8, U-Net x8)"
FOLDER_HINT = "expected a diffusers SD/SDXL model folder (`diffeat tiny-model DIR` writes one)"

CASES = {
    "image_missing": (
        extract_args(image="missing.png"),
        "IMAGE|FOLDER: no such file or folder: {t}/missing.png",
    ),
    "image_folder_without_images": (
        extract_args(image="photos"),
        f"IMAGE|FOLDER: no images ({IMAGE_SUFFIXES}) found in {{t}}/photos",
    ),
    "image_folder_images_in_subfolders_only": (
        extract_args(image="nested"),
        f"IMAGE|FOLDER: no images ({IMAGE_SUFFIXES}) found in {{t}}/nested (1 more in "
        "subfolders: --recursive walks them)",
    ),
    "image_suffix_not_an_image": (
        extract_args(image="file.txt"),
        f"IMAGE|FOLDER: {{t}}/file.txt is not an image file (expected {IMAGE_SUFFIXES})",
    ),
    "image_not_an_image": (
        extract_args(image="notes.png"),
        "{t}/notes.png is not a readable image (cannot identify image file '{t}/notes.png')",
    ),
    "image_truncated": (
        extract_args(image="cut.png"),
        "{t}/cut.png is not a readable image (image file is truncated)",
    ),
    "image_size_not_a_multiple": (
        extract_args(image="odd.png"),
        f"{{t}}/odd.png is 80x96 (HxW), not a multiple of {FACTORS}; pass --image-size S|HxW "
        "to resize",
    ),
    "image_sizes_differ": (
        ["extract", "{t}/img.png", "{t}/wide.png", "--model", "{sd15}", "-o", "{t}/o.safetensors"],
        "{t}/img.png is 64x64 but {t}/wide.png is 64x128 (HxW); the images of one features "
        "file need one size: pass --image-size S|HxW to resize them",
    ),
    "output_suffix": (
        ["extract", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/out.npz"],
        "-o/--output {t}/out.npz: suffix '.npz'; accepted: .safetensors",
    ),
    "output_no_suffix": (
        ["extract", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/out"],
        "-o/--output {t}/out: no suffix; accepted: .safetensors",
    ),
    "output_is_a_folder": (
        ["extract", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/dir.safetensors"],
        "-o/--output {t}/dir.safetensors is a folder, not a file",
    ),
    "output_below_a_file": (
        ["extract", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/file.txt/f.safetensors"],
        "-o/--output {t}/file.txt/f.safetensors: cannot create its folder, {t}/file.txt is a file",
    ),
    "unrecognized_argument": (extract_args("--bogus"), "unrecognized arguments: --bogus"),
    "output_missing": (
        ["extract", "{t}/img.png", "--model", "{sd15}"],
        "the following arguments are required: -o/--output",
    ),
    "model_relative_folder_missing": (
        ["extract", "{t}/img.png", "--model", "./nope/model", "-o", "{t}/out.safetensors"],
        "--model: no model folder ./nope/model (nothing at {t}/nope/model)",
    ),
    "model_folder_missing": (
        ["extract", "{t}/img.png", "--model", "{t}/nope", "-o", "{t}/out.safetensors"],
        "--model: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "model_is_a_file": (
        ["extract", "{t}/img.png", "--model", "{t}/file.txt", "-o", "{t}/out.safetensors"],
        "--model {t}/file.txt is a file; expected a diffusers model folder or a hub id (org/name)",
    ),
    "model_folder_empty": (
        ["extract", "{t}/img.png", "--model", "{t}/empty_model", "-o", "{t}/out.safetensors"],
        f"--model {{t}}/empty_model: {{t}}/empty_model/model_index.json is missing; {FOLDER_HINT}",
    ),
    "model_config_not_json": (
        ["extract", "{t}/img.png", "--model", "{t}/broken_model", "-o", "{t}/out.safetensors"],
        "--model {t}/broken_model: It looks like the config file at "
        "'{t}/broken_model/unet/config.json' is not a valid JSON file.",
    ),
    "model_sdxl_without_second_text_encoder": (
        ["extract", "{t}/img.png", "--model", "{t}/sdxl_one_encoder", "-o", "{t}/o.safetensors"],
        "--model {t}/sdxl_one_encoder: {t}/sdxl_one_encoder/text_encoder_2/config.json is "
        f"missing; {FOLDER_HINT}",
    ),
    "layer_unknown": (
        extract_args("--layers", "unet-in,up-level3-repeat0-vit-block0-self-kk"),
        "--layers: unknown activation name(s) for this U-Net: "
        "'up-level3-repeat0-vit-block0-self-kk' (did you mean up-level3-repeat0-vit-block0-self-k "
        "or up-level3-repeat2-vit-block0-self-k?); the catalogue has 198 names "
        "(diffeat.list_layers(unet) or `diffeat layers --model ...`); whole selections: "
        f"{SELECTIONS}",
    ),
    "layer_duplicate": (
        extract_args("--layers", "unet-in,unet-in"),
        "--layers: duplicate names ['unet-in']",
    ),
    "layers_empty": (extract_args("--layers", ","), "--layers ',': no names given"),
    "preset_unknown": (
        extract_args("--preset", "ours"),
        "argument --preset: invalid choice: 'ours' (choose from 'diffeat-flux', "
        "'diffeat-pixart-sigma', 'diffeat-sd3', 'legacy-v1.5', 'legacy-xl', 'ours-v1.5', "
        "'ours-xl')",
    ),
    "preset_of_another_family": (
        extract_args("--preset", "ours-xl"),
        "--preset ours-xl: its names are those of sdxl U-Nets, but --model {sd15} is "
        "sd15-shaped (its presets: legacy-v1.5, ours-v1.5)",
    ),
    "layers_preset_of_another_family": (
        [
            "extract",
            "{t}/img.png",
            "--model",
            "{sdxl}",
            "-o",
            "{t}/o.safetensors",
            "--layers",
            "ours-v1.5",
        ],
        "--layers ours-v1.5: its names are those of sd15 U-Nets, but --model {sdxl} is "
        "sdxl-shaped (its presets: legacy-xl, ours-xl)",
    ),
    "preset_and_layers": (
        extract_args("--preset", "ours-v1.5", "--layers", "unet-in"),
        "argument --layers: not allowed with argument --preset",
    ),
    "device_cuda_without_gpu": (
        extract_args("--device", "cuda"),
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "device_unknown": (
        extract_args("--device", "tpu"),
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "timestep_too_large": (
        extract_args("--timestep", "1000"),
        "--timestep: must be an integer in [0, 999] (the scheduler's num_train_timesteps is "
        "1000); got 1000",
    ),
    "timestep_negative": (
        extract_args("--timestep", "-1"),
        "--timestep: must be an integer in [0, 999] (the scheduler's num_train_timesteps is "
        "1000); got -1",
    ),
    "timestep_not_an_int": (
        extract_args("--timestep", "5.5"),
        "argument --timestep: invalid int value: '5.5'",
    ),
    "batch_size_0": (extract_args("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    "seed_negative": (
        extract_args("--seed", "-1"),
        "--seed must be in [0, 18446744073709551615], got -1",
    ),
    "seed_too_large": (
        extract_args("--seed", str(2**64)),
        "--seed must be in [0, 18446744073709551615], got 18446744073709551616",
    ),
    "image_size_not_a_size": (
        extract_args("--image-size", "oops"),
        "argument --image-size: expected S or HxW (height x width) in pixels, positive "
        "integers, got 'oops'",
    ),
    "image_size_zero": (
        extract_args("--image-size", "0x64"),
        "argument --image-size: expected S or HxW (height x width) in pixels, positive "
        "integers, got '0x64'",
    ),
    "image_size_option_not_a_multiple": (
        extract_args("--image-size", "100"),
        f"--image-size 100x100: height and width must be multiples of {FACTORS}",
    ),
    "resize_not_a_size": (
        extract_args("--resize", "8x"),
        "argument --resize: expected S or HxW (height x width) in pixels, positive "
        "integers, got '8x'",
    ),
    "latent": (
        extract_args("--latent", "mode"),
        "argument --latent: invalid choice: 'mode' (choose from 'sample', 'mean')",
    ),
    "dtype": (
        extract_args("--dtype", "fp8"),
        "argument --dtype: invalid choice: 'fp8' (choose from 'bf16', 'fp16', 'fp32')",
    ),
    "probe_unknown_probe": (
        ["probe", "{t}/img.png", "--model", "{sd15}", "--probes", "noise,sharpness"],
        "--probes 'noise,sharpness': choose a comma-separated subset of noise,granularity,locality",
    ),
    "probe_output_suffix": (
        ["probe", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/probe.txt"],
        "-o/--output {t}/probe.txt: suffix '.txt'; accepted: .json",
    ),
    "probe_batch_sizes_differ": (
        ["probe", "{t}/img.png", "{t}/wide.png", "--model", "{sd15}", "--batch-size", "2"],
        "{t}/img.png is 64x64 but {t}/wide.png is 64x128 (HxW); the images of one batch "
        "(--batch-size 2) need one size: pass --image-size S|HxW to resize them",
    ),
    "pca_nothing_to_do": (
        ["pca", "-o", "{t}/pca_out"],
        "pass images and --model, or --features FILE",
    ),
    "pca_features_and_images": (
        ["pca", "{t}/img.png", "--features", "{t}/flat.safetensors", "-o", "{t}/pca_out"],
        "--features: pass either a features file or images with --model",
    ),
    "pca_features_recursive": (
        ["pca", "--features", "{t}/flat.safetensors", "--recursive", "-o", "{t}/pca_out"],
        "--recursive: applies to images, not to --features",
    ),
    "pca_features_missing": (
        ["pca", "--features", "{t}/none.safetensors", "-o", "{t}/pca_out"],
        "--features {t}/none.safetensors does not exist",
    ),
    "pca_features_folder": (
        ["pca", "--features", "{t}/photos", "-o", "{t}/pca_out"],
        "--features {t}/photos is a folder, not a file",
    ),
    "pca_features_not_safetensors": (
        ["pca", "--features", "{t}/garbage.safetensors", "-o", "{t}/pca_out"],
        "--features {t}/garbage.safetensors is not a features file of `diffeat extract` "
        "(Error while deserializing header: header too small)",
    ),
    "pca_features_not_4d": (
        ["pca", "--features", "{t}/flat.safetensors", "-o", "{t}/pca_out"],
        "--features {t}/flat.safetensors: expected (N, C, h, w) feature tensors; 'x' is (2, 3)",
    ),
    "pca_output_named_like_a_file": (
        ["pca", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/pca.png"],
        "-o/--output {t}/pca.png: the outputs go into a folder, and a new folder's name must have "
        "no suffix (got '.png')",
    ),
    "pca_output_is_a_file": (
        ["pca", "{t}/img.png", "--model", "{sd15}", "-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "pca_same_stem": (
        ["pca", "{t}/a/x.png", "{t}/b/x.png", "--model", "{sd15}", "-o", "{t}/pca_out"],
        "{t}/a/x.png and {t}/b/x.png would both be written to {t}/pca_out/x__<activation>.png",
    ),
    "pca_png_path_is_a_folder": (
        ["pca", "{t}/img.png", "--model", "{sd15}", "--layers", "unet-in", "-o", "{t}/pca"],
        "-o/--output: {t}/pca/img__unet-in.png is a folder, in the way of a PNG",
    ),
    "pca_size_not_a_size": (
        ["pca", "{t}/img.png", "--model", "{sd15}", "--size", "-3", "-o", "{t}/pca_out"],
        "argument --size: expected S or HxW (height x width) in pixels, positive "
        "integers, got '-3'",
    ),
    "layers_text_tokens_0": (
        ["layers", "--config", "sd15", "--text-tokens", "0"],
        "--text-tokens must be >= 1, got 0",
    ),
    "layers_image_size_not_a_multiple": (
        ["layers", "--config", "sd15", "--image-size", "100"],
        "--image-size 100x100: height and width must be multiples of 8 (the SD VAE factor)",
    ),
    "layers_model_missing": (
        ["layers", "--model", "{t}/nope"],
        "--model: no model folder {t}/nope (nothing at {t}/nope)",
    ),
    "layers_model_folder_empty": (
        ["layers", "--model", "{t}/empty_model"],
        f"--model {{t}}/empty_model: {{t}}/empty_model/unet/config.json is missing; {FOLDER_HINT}",
    ),
    "layers_model_without_tokenizer": (
        ["layers", "--model", "{t}/unet_only"],
        f"--model {{t}}/unet_only: {{t}}/unet_only/tokenizer is missing; {FOLDER_HINT}",
    ),
    "layers_config_unknown": (
        ["layers", "--config", "sd3"],
        "argument --config: invalid choice: 'sd3' (choose from 'flux-dev', 'pixart-alpha-1024', "
        "'pixart-alpha-512', 'pixart-sigma', 'playground-v2', 'sd15', 'sd21', 'sd3.5-medium', "
        "'sdxl', 'tiny-flux', 'tiny-pixart-alpha', 'tiny-pixart-alpha-512', 'tiny-pixart-sigma', "
        "'tiny-sd15', 'tiny-sd3', 'tiny-sdxl')",
    ),
    "tiny_model_into_a_file": (
        ["tiny-model", "{t}/file.txt", "--kind", "sd15"],
        "DIR {t}/file.txt is a file, not a folder",
    ),
    "tiny_model_over_a_model": (
        ["tiny-model", "{sd15}", "--kind", "sd15"],
        "DIR {sd15} already holds a model (model_index.json)",
    ),
    "tiny_model_kind": (
        ["tiny-model", "{t}/tiny", "--kind", "sd4"],
        "argument --kind: invalid choice: 'sd4' (choose from 'sd15', 'sdxl', 'pixart', "
        "'pixart-alpha', 'pixart-alpha-512', 'flux', 'sd3', 'hunyuan', 'if')",
    ),
    "tiny_model_seed": (
        ["tiny-model", "{t}/tiny", "--kind", "sd15", "--seed", "-2"],
        "--seed must be in [0, 18446744073709551615], got -2",
    ),
}


def snapshot(*folders: Path) -> list[tuple[Path, int]]:
    """Every path under ``folders`` with its modification time (to see anything written)."""
    return sorted((p, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_exit_2_before_model_load(
    case, files, model_dirs, capsys, monkeypatch, no_model_load
):
    monkeypatch.chdir(files)
    argv, message = CASES[case]
    command = argv[0]
    before = snapshot(files, *model_dirs.values())
    status, out, err = run([fill(arg, files, model_dirs) for arg in argv], capsys)
    assert status == 2
    assert err == f"diffeat {command}: error: {fill(message, files, model_dirs)}\n"
    assert out == ""
    assert snapshot(files, *model_dirs.values()) == before  # nothing written, no folder made


def test_unknown_command_one_line(capsys):
    status, out, err = run(["paint"], capsys)
    assert status == 2 and out == ""
    assert err == (
        "diffeat: error: argument command: invalid choice: 'paint' "
        "(choose from 'layers', 'extract', 'probe', 'pca', 'tiny-model', 'generate-features', "
        "'app')\n"
    )


MEMORY_ERROR = re.compile(
    r"diffeat (\w+): error: (.+): needs an estimated [\d.]+ [KMGTPE]?i?B \(([\d,]+) bytes\) of "
    r"host memory, more than the 8\.0 GiB available \(lower it, or pass --allow-large to run "
    r"anyway\)\n"
)

HUGE_CASES = {
    "image_size": (
        extract_args("--image-size", "100000"),
        "--image-size 100000x100000 with --batch-size 1",
    ),
    "image_size_multiple": (
        extract_args("--image-size", "102400"),
        "--image-size 102400x102400 with --batch-size 1",
    ),
    "resize": (extract_args("--layers", "unet-in", "--resize", "100000"), "--resize 100000x100000"),
    "pca_size": (
        [
            "pca",
            "{t}/img.png",
            "--model",
            "{sd15}",
            "--layers",
            "unet-in",
            "--size",
            "100000",
            "-o",
            "{t}/pca_out",
        ],
        "--size 100000x100000",
    ),
    "pca_features_size": (
        ["pca", "--features", "{t}/feats.safetensors", "--size", "100000", "-o", "{t}/pca_out"],
        "--size 100000x100000",
    ),
    "probe_image_size": (
        ["probe", "{t}/img.png", "--model", "{sd15}", "--image-size", "100000"],
        "--image-size 100000x100000 with --batch-size 1",
    ),
}


@pytest.mark.parametrize("case", sorted(HUGE_CASES))
def test_huge_sizes_fail_on_the_memory_estimate_before_model_load(
    case, files, model_dirs, capsys, no_model_load
):
    save_file({"unet-in": torch.zeros(1, 4, 8, 8)}, files / "feats.safetensors")
    argv, what = HUGE_CASES[case]
    before = snapshot(files)
    status, out, err = run([fill(arg, files, model_dirs) for arg in argv], capsys)
    assert status == 2 and out == ""
    match = MEMORY_ERROR.fullmatch(err)
    assert match is not None, err
    assert match[1] == argv[0] and match[2] == what
    assert int(match[3].replace(",", "")) > 8 * GIB
    assert snapshot(files) == before


def test_memory_on_a_cuda_device_is_checked_against_its_free_memory(
    files, model_dirs, capsys, monkeypatch, no_model_load
):
    """The pass counts against the GPU's free memory, the features against the host's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * GIB, 80 * GIB))
    argv = extract_args("--device", "cuda:0", "--layers", "unet-in", "--image-size", "8192")
    status, out, err = run([fill(arg, files, model_dirs) for arg in argv], capsys)
    assert status == 2 and out == ""
    pattern = MEMORY_ERROR.pattern.replace("host", "cuda:0").replace("8\\.0", "2\\.0")
    match = re.fullmatch(pattern, err)
    assert match is not None, err
    assert match[2] == "--image-size 8192x8192 with --batch-size 1"
    pass_bytes, _ = tiny_sd15_pass_bytes((8192, 8192), batch=1, dtype_bytes=4)
    assert int(match[3].replace(",", "")) == pass_bytes  # the features count on the host


def test_allow_large_lets_a_huge_size_through_the_checks(files, model_dirs, no_model_load):
    argv = [fill(arg, files, model_dirs) for arg in extract_args("--image-size", "102400")]
    with pytest.raises(AssertionError, match="a model was loaded before the inputs were checked"):
        main([*argv, "--allow-large"])  # every check passed: the (failing) load was reached


def test_probe_accepts_images_of_different_sizes_in_different_batches(
    files, model_dirs, no_model_load
):
    argv = ["probe", str(files / "img.png"), str(files / "wide.png"), "--model",
            str(model_dirs["sd15"]), "--batch-size", "1"]  # fmt: skip
    with pytest.raises(AssertionError, match="a model was loaded before the inputs were checked"):
        main(argv)


def tiny_sd15_pass_bytes(
    size: tuple[int, int], batch: int, dtype_bytes: int, maps: tuple[str, ...] = ()
) -> tuple[int, dict[str, int]]:
    """The documented pass estimate for the tiny SD 1.5 model, restated: every U-Net activation
    at ``size`` rounded up to a multiple of 64 (attention maps only when requested) and
    ``vae-out`` in the --dtype, plus 3 fp32 maps of the VAE's first width (8) at ``size``.
    Also returns C * h * w of every activation."""
    rounded = tuple(-(-side // 64) * 64 for side in size)
    values = {i.name: math.prod(i.shape) for i in layer_infos(unet_config("tiny-sd15"), rounded)}
    values["vae-out"] = 4 * (rounded[0] // 8) * (rounded[1] // 8)
    unet = sum(v for name, v in values.items() if not name.endswith("-map") or name in maps)
    return batch * (unet * dtype_bytes + 3 * 8 * size[0] * size[1] * 4), values


def test_memory_estimate_of_one_pass(files, model_dirs, capsys, monkeypatch, no_model_load):
    """On the cpu: the pass of one batch plus the features of every image (host memory)."""
    monkeypatch.setattr("common_kernels.runtime.memory.host_available_bytes", lambda: 1)
    name = "up-level3-repeat0-vit-block0-self-map"
    argv = extract_args("--image-size", "96x128", "--batch-size", "2", "--dtype", "fp16",
                        "--layers", name)  # fmt: skip
    argv[1:2] = ["{t}/img.png", "{t}/a/x.png"]  # two 64x64 images
    status, _, err = run([fill(arg, files, model_dirs) for arg in argv], capsys)
    assert status == 2
    match = re.fullmatch(MEMORY_ERROR.pattern.replace("8\\.0 GiB", "1\\.0 B"), err)
    assert match is not None, err
    pass_bytes, values = tiny_sd15_pass_bytes((96, 128), batch=2, dtype_bytes=2, maps=(name,))
    features = 2 * values[name] * 2  # 2 images, fp16
    assert int(match[3].replace(",", "")) == pass_bytes + features


SD_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4}  # SD/SDXL VAE


@pytest.mark.parametrize(
    ("name", "preset", "dtype", "expected_gib"),
    [("sd15", "ours-v1.5", "fp32", 0.918), ("sdxl", "ours-xl", "fp16", 3.52)],
)
def test_pass_estimate_of_the_real_models_at_their_resolution(name, preset, dtype, expected_gib):
    """The estimate stays usable: the real U-Nets at the paper's resolutions (batch 1, the
    paper's presets) are estimated well below common GPU sizes (README numbers)."""
    side = PRESETS[preset].resolution
    configs = ModelConfigs(unet_config(name), SD_VAE, scheduler=None)
    infos = model_infos(configs, (side, side))
    itemsize = {"fp32": 4, "fp16": 2}[dtype]
    nbytes = pass_bytes(infos, PRESETS[preset].layers, 1, itemsize, (side, side), 128)
    assert nbytes / GIB == pytest.approx(expected_gib, abs=0.005)


def test_hub_id_that_cannot_be_fetched_exits_1(files, capsys, monkeypatch, no_model_load):
    monkeypatch.setenv("HF_HUB_CACHE", str(files / "hub"))  # cached: the hub check passes
    (files / "hub" / "models--org--name" / "snapshots" / "a1").mkdir(parents=True)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "load_config", offline)
    argv = ["extract", str(files / "img.png"), "--model", "org/name", "-o",
            str(files / "out.safetensors")]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    assert err == (
        "diffeat extract: error: cannot read unet/ of --model org/name (a hub id): We "
        "couldn't connect to 'https://huggingface.co'\n"
    )
    assert not (files / "out.safetensors").exists()


def test_model_that_fails_to_load_exits_1_with_one_line(files, model_dirs, capsys):
    broken = files / "bad_weights"
    shutil.copytree(model_dirs["sd15"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    argv = ["extract", str(files / "img.png"), "--model", str(broken), "--layers", "unet-in",
            "-o", str(files / "out.safetensors")]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith(f"diffeat extract: error: cannot load --model {broken}: ")
    assert "Traceback" not in err
    assert not (files / "out.safetensors").exists()


def test_failure_while_writing_exits_1_with_one_line(files, model_dirs, capsys, monkeypatch):
    def disk_full(path, features, metadata):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("diffeat.commands.save_features", disk_full)
    out_path = files / "out.safetensors"
    argv = ["extract", str(files / "img.png"), "--model", str(model_dirs["sd15"]), "--layers",
            "unet-in", "-o", str(out_path)]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    assert err.splitlines()[-1] == (
        f"diffeat extract: error: [Errno 28] No space left on device: '{out_path}'"
    )


def test_bad_input_in_a_subprocess_prints_one_line_and_no_traceback(files, model_dirs):
    argv = ["extract", str(files / "missing.png"), "--model", str(model_dirs["sd15"]), "-o",
            str(files / "out.safetensors")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "diffeat.cli", *argv],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"diffeat extract: error: IMAGE|FOLDER: no such file or folder: {files / 'missing.png'}\n"
    )
    assert done.stdout == ""


# Slow lane (nightly, nox -s slow): 30 s; the default lane keeps SIGTERM during extract
# (test_cli_signals).
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs SIGINT")
def test_ctrl_c_exits_130_with_one_line(files, model_dirs):
    out_path = files / "out.safetensors"
    argv = ["extract", str(files / "img.png"), "--model", str(model_dirs["sd15"]), "--layers",
            "unet-in", "-o", str(out_path)]  # fmt: skip
    done = interrupted_run("diffeat.cli", "diffeat.extractor:FeatureExtractor.__call__", argv)
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith("\ndiffeat extract: interrupted\n") or (
        done.stderr == "diffeat extract: interrupted\n"
    )
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not out_path.exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".out")]  # no temp file left


def test_tiny_model_writes_pixart_alpha_at_both_sizes(tmp_path):
    """``--kind pixart-alpha`` was an invalid choice (the model existed from Python only)."""
    import json

    for kind, size in (("pixart-alpha", 128), ("pixart-alpha-512", 64)):
        assert main(["tiny-model", str(tmp_path / kind), "--kind", kind]) == 0
        index = json.loads((tmp_path / kind / "model_index.json").read_text())
        transformer = json.loads((tmp_path / kind / "transformer" / "config.json").read_text())
        assert index["_class_name"] == "PixArtAlphaPipeline"
        assert transformer["sample_size"] == size


def test_an_image_too_large_for_the_model_is_named_not_a_flag_never_typed(tmp_path, capsys):
    """``extract zebra.bmp --model tiny-sd3`` blamed ``--image-size 400x592``, a flag the user
    never typed: the images' own size is named, and the flag that resizes them."""
    assert main(["tiny-model", str(tmp_path / "sd3"), "--kind", "sd3"]) == 0
    capsys.readouterr()
    Image.new("RGB", (586, 391), "white").save(tmp_path / "zebra.png")
    argv = ["extract", str(tmp_path / "zebra.png"), "--model", str(tmp_path / "sd3"), "-o",
            str(tmp_path / "f.safetensors")]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "diffeat extract: error: IMAGE|FOLDER: images of 391x586 (their own size) cannot be fed "
        "as they are, 400x592: this SD3 transformer's positional embedding covers at most 512 px "
        "a side (pos_embed_max_size 32); pass --image-size S|HxW to resize them\n"
    )
    assert not (tmp_path / "f.safetensors").exists()


def test_an_output_folder_that_takes_no_file_is_refused_before_any_work(
    files, model_dirs, capsys, no_model_load
):
    """``-o /proc/x.safetensors`` passed the checks (permission bits say writable to root),
    the model ran, then the write failed naming a hidden temporary file."""
    argv = ["extract", str(files / "img.png"), "--model", str(model_dirs["sd15"]), "-o",
            "/proc/x.safetensors"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "diffeat extract: error: -o/--output /proc/x.safetensors: cannot write to /proc (no such "
        "file or directory)\n"
    )
