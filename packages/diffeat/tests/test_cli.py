"""The diffeat command, in-process, on the tiny model folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffeat import PRESETS, FeatureExtractor
from diffeat.cli import main
from diffeat.io import load_features, load_image


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i, size in enumerate([(96, 80), (70, 50)]):
        rng = np.random.default_rng(i)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("kind", "denoiser", "extractor_class"),
    [("sd15", "unet", "FeatureExtractor"), ("pixart", "transformer", "DiTFeatureExtractor")],
)
def test_tiny_model_command_writes_a_folder_the_commands_serve(
    tmp_path, capsys, kind, denoiser, extractor_class
):
    folder = tmp_path / "tiny"
    assert main(["tiny-model", str(folder), "--kind", kind]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model_index.json", "scheduler", "text_encoder", "tokenizer", denoiser, "vae"]
    )
    extractor = FeatureExtractor.from_pretrained(folder)
    assert type(extractor).__name__ == extractor_class
    capsys.readouterr()
    assert main(["layers", "--model", str(folder), "--image-size", "64"]) == 0
    listed = capsys.readouterr().out
    assert all(spec.name in listed for spec in extractor.catalogue)
    assert main(["tiny-model", str(folder), "--kind", kind]) == 2
    assert capsys.readouterr().err == (
        f"diffeat tiny-model: error: DIR {folder} already holds a model (model_index.json)\n"
    )


def test_layers_command(model_dirs, capsys):
    assert main(["layers", "--model", str(model_dirs["sdxl"]), "--image-size", "128x192"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "612 of 612 activations"
    line = next(row for row in out if " up-level0-repeat0-vit-block7-cross-map " in row)
    assert line.endswith("64 x 4 x 6  (4 heads)")  # 4 heads x 16 prompt tokens
    assert main(["layers", "--config", "sd15", "--contains", "up-level3-repeat2-vit-out"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[1:] == ["up-level3-repeat2-vit-out", "320", "x", "64", "x", "64"]


def test_extract_matches_the_api_and_records_metadata(model_dirs, image_files, tmp_path, capsys):
    out = tmp_path / "feats.safetensors"
    argv = ["extract", *map(str, image_files), "--model", str(model_dirs["sd15"]),
            "--preset", "ours-v1.5", "--image-size", "128", "--prompt", "a photo",
            "--batch-size", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    features, meta = load_features(out)
    assert list(features) == list(PRESETS["ours-v1.5"].layers) == meta["layers"]
    assert meta["images"] == [str(p) for p in image_files] and meta["image_size"] == [128, 128]
    assert meta["preset"] == "ours-v1.5" and meta["timestep"] == 50 and meta["seed"] == 0
    extractor = FeatureExtractor.from_pretrained(
        model_dirs["sd15"], preset="ours-v1.5", image_size=128
    )
    reference = extractor([load_image(p) for p in image_files], "a photo", extractor.generator())
    for name, value in reference.items():
        assert torch.equal(features[name], value), name
    assert "wrote 4 features of 2 images" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    concat = tmp_path / "concat.safetensors"
    argv = ["extract", str(image_files[0]), "--model", str(model_dirs["sdxl"]), "--layers",
            "unet-in,up-level1-repeat0-vit-block0-cross-q", "--image-size", "64x96",
            "--resize", "8", "--concat", "-o", str(concat)]  # fmt: skip
    assert main(argv) == 0
    features, meta = load_features(concat)
    assert list(features) == ["features"] and features["features"].shape == (1, 4 + 16, 8, 8)
    assert meta["source_layers"] == ["unet-in", "up-level1-repeat0-vit-block0-cross-q"]


def test_probe_and_pca_commands(model_dirs, image_files, tmp_path, capsys):
    report = tmp_path / "probe.json"
    argv = ["probe", str(image_files[0]), "--model", str(model_dirs["sdxl"]), "--preset", "ours-xl",
            "--image-size", "64", "-o", str(report)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(report.read_text())
    assert list(results) == list(PRESETS["ours-xl"].layers)
    assert all(list(v) == ["noise", "granularity", "locality"] for v in results.values())
    assert "granularity" in capsys.readouterr().out

    feats = tmp_path / "f.safetensors"
    argv = ["extract", *map(str, image_files), "--model", str(model_dirs["sd15"]),
            "--layers", "up-level3-repeat0-vit-block0-self-k", "--image-size", "64",
            "-o", str(feats)]  # fmt: skip
    assert main(argv) == 0
    assert main(["pca", "--features", str(feats), "-o", str(tmp_path / "pca")]) == 0
    pngs = sorted((tmp_path / "pca").iterdir())
    assert [p.name for p in pngs] == [
        f"img{i}__up-level3-repeat0-vit-block0-self-k.png" for i in (0, 1)
    ]
    assert Image.open(pngs[0]).size == (64, 64)
    argv = ["pca", str(image_files[1]), "--model", str(model_dirs["sdxl"]), "--preset", "legacy-xl",
            "--image-size", "64x96", "--size", "32x48", "-o", str(tmp_path / "pca2")]  # fmt: skip
    assert main(argv) == 0
    pngs = sorted((tmp_path / "pca2").iterdir())
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (48, 32)
