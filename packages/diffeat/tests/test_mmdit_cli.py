"""FLUX and SD3 models from folders: ``from_pretrained`` (a saved tiny pipeline gives the same
features as the pipeline), ``diffeat tiny-model/layers/extract/probe/pca`` on them, and bad
input refused in one line before any weights load (a sigma out of range, a name of another
backbone, guidance for SD3, weights that do not fit the transformer's config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from diffeat import FeatureExtractor, FluxFeatureExtractor, SD3FeatureExtractor
from diffeat.cli import main
from diffeat.configs import tiny_flux_pipeline, tiny_sd3_pipeline
from diffeat.io import load_features
from diffeat.plan import check_from_pretrained

TOKENS = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """``diffeat tiny-model --kind flux|sd3`` folders."""
    out = {}
    for kind in ("flux", "sd3"):
        folder = tmp_path_factory.mktemp("models") / kind
        assert main(["tiny-model", str(folder), "--kind", kind]) == 0
        out[kind] = folder
    return out


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_from_pretrained_equals_the_pipeline(kind, folders):
    layers = [f"{kind}-in", "flux-double2-out" if kind == "flux" else "sd3-block2-out"]
    loaded = FeatureExtractor.from_pretrained(
        folders[kind], layers=layers, max_sequence_length=TOKENS, sigma=0.25
    )
    cls, build = {"flux": (FluxFeatureExtractor, tiny_flux_pipeline),
                  "sd3": (SD3FeatureExtractor, tiny_sd3_pipeline)}[kind]  # fmt: skip
    assert type(loaded) is cls
    direct = cls.from_pipeline(build(seed=0), layers=layers, max_sequence_length=TOKENS, sigma=0.25)
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    want, got = direct(pixels, "a horse"), loaded(pixels, "a horse")
    for name in layers:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6)


def test_layers_command_lists_the_catalogue(folders, capsys):
    assert main(["layers", "--model", str(folders["flux"]), "--image-size", "32x48"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "402 of 402 activations"
    assert any("flux-single37-cross-map" in line and "1024 x 2 x 3" in line for line in out)
    assert main(["layers", "--config", "sd3.5-medium", "--contains", "block12-attn2-map"]) == 0
    out = capsys.readouterr().out.splitlines()
    # SD3.5-Medium at 1024 px: 24 heads x 4096 image keys
    assert out[-1] == "1 of 223 activations" and "98304 x 64 x 64  (24 heads)" in out[1]


def test_extract_command(folders, image, tmp_path):
    out = tmp_path / "f.safetensors"
    argv = ["extract", str(image), "--model", str(folders["flux"]), "--layers",
            "flux-double3-out,flux-single2-cross-map", "--sigma", "0.4", "--guidance-scale",
            "2.0", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    features, meta = load_features(out)
    assert features["flux-double3-out"].shape == (1, 16, 2, 3)
    assert features["flux-single2-cross-map"].shape == (1, 2 * 512, 2, 3)  # 512 T5 tokens
    assert meta["sigma"] == pytest.approx(0.4) and meta["heads"]["flux-single2-cross-map"] == 2


def test_probe_command(folders, image, capsys):
    probe = ["probe", str(image), "--model", str(folders["sd3"]), "--layers", "sd3-block3-q",
             "--probes", "noise,locality"]  # fmt: skip
    assert main(probe) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["activation", "noise", "locality"]
    assert table[1].split()[0] == "sd3-block3-q" and len(table[1].split()) == 3


@pytest.mark.slow  # 5.3-7.6 s here at a load of 6-11 (the SD3 folder loaded, a full pass)
def test_pca_command(folders, image, tmp_path):
    pca = ["pca", str(image), "--model", str(folders["sd3"]), "--layers", "sd3-block5-out,sd3-out",
           "-o", str(tmp_path / "pca")]  # fmt: skip
    assert main(pca) == 0
    written = sorted(p.name for p in (tmp_path / "pca").iterdir())
    assert written == ["a__sd3-block5-out.png", "a__sd3-out.png"]
    assert Image.open(tmp_path / "pca" / "a__sd3-out.png").size == (48, 32)


def misfit(folder: Path, tmp_path: Path) -> Path:
    """A copy of ``folder`` whose transformer config asks for one single block more than its
    weights hold."""
    copy = tmp_path / "misfit"
    shutil.copytree(folder, copy)
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_single_layers"] += 1
    config_path.write_text(json.dumps(config))
    return copy


def test_bad_input_is_one_line_before_any_work(folders, image, tmp_path, refused):
    flux, sd3 = str(folders["flux"]), str(folders["sd3"])
    base = ["extract", str(image), "-o", str(tmp_path / "f.safetensors")]
    cases = [
        (
            [*base, "--model", flux, "--sigma", "-0.1"],
            "--sigma: must be a number in [0, 1]; got -0.1",
        ),
        (
            [*base, "--model", flux, "--layers", "dit-block3-out"],
            "--layers: unknown activation name(s) for this FLUX: 'dit-block3-out' (a PixArt name; "
            "this model is a FLUX); the catalogue has 403 names",
        ),
        (
            [*base, "--model", sd3, "--guidance-scale", "3.5"],
            "--guidance-scale: applies to FLUX transformers with a guidance embedding "
            "(FLUX.1-dev) only; this model is a SD3 without one",
        ),
        (
            [*base, "--model", str(misfit(folders["flux"], tmp_path))],
            f"--model {tmp_path}/misfit: transformer/: its weights do not fit the "
            "FluxTransformer2DModel its config.json builds: "
            "'single_transformer_blocks.38.norm.linear.weight' is missing (and 13 more)",
        ),
        (
            [*base, "--model", sd3, "--faithful"],
            "--faithful: the official code's path is restated for U-Nets only, not for SD3 models",
        ),
    ]
    for argv, line in cases:
        refused(argv, line)
    assert not (tmp_path / "f.safetensors").exists()
    with pytest.raises(InvalidArgument, match=r"^sigma: must be a number in \[0, 1\]; got 2"):
        check_from_pretrained(folders["sd3"], sigma=2)
