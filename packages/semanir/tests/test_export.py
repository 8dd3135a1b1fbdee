"""ONNX export (``semanir.export_onnx``, ``semanir export``): ONNX Runtime's CPU output equals
PyTorch's at sizes that are not multiples of the window, several sizes and batches with one
file; the graph's batch, height and width are symbolic; bad input gets one line."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from common_kernels.runtime.errors import InvalidArgument
from semanir import export_onnx, restore
from semanir.cli import main
from semanir.export import onnx_session, run_onnx
from semanir.inference import load_model
from semanir.models import build_model, get_config, model_from_config

TOLERANCE = 1e-4
NEWEST = onnx.defs.onnx_opset_version()


def exported(
    tmp_path_factory: pytest.TempPathFactory, model: nn.Module, name: str, k: int | None = None
) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{name}.onnx", k=k)


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("semanir_test_tiny_unet").eval()


@pytest.fixture(scope="module")
def unet_file(unet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory, unet, "unet")


def runtime_differences(
    model: nn.Module, path: Path, shapes: list[tuple], k: int | None = None
) -> list[torch.Tensor]:
    """|ONNX Runtime - restore| on a random image of each (batch, height, width)."""
    session, differences = onnx_session(path), []
    for batch, height, width in shapes:
        image = torch.rand(batch, model.in_channels, height, width)
        ours = run_onnx(session, image)
        scale = model.upscale
        assert ours.shape == (batch, model.out_channels, height * scale, width * scale)
        differences.append((ours - restore(model, image, tile=None, k=k)).abs())
    return differences


def assert_runtime_equals_restore(model: nn.Module, path: Path, shapes: list[tuple]) -> None:
    for difference in runtime_differences(model, path, shapes):
        assert difference.max() <= TOLERANCE


def test_one_file_serves_any_batch_and_size(unet: nn.Module, unet_file: Path) -> None:
    graph = onnx.load(os.fspath(unet_file)).graph
    onnx.checker.check_model(onnx.load(os.fspath(unet_file)), full_check=True)
    (image,) = graph.input
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    # window 4 and one U-net level: the graph pads to multiples of 8 itself
    assert_runtime_equals_restore(unet, unet_file, [(2, 13, 19), (1, 22, 30), (3, 17, 9)])


def test_one_window_wide_features_follow_the_reference_maths(
    unet: nn.Module, unet_file: Path
) -> None:
    image = torch.rand(1, 1, 9, 5)  # padded to 16x8: the coarse level is one window wide
    reference = unet(image).clamp(0, 1).detach()  # autograd path: the model's plain maths
    assert (run_onnx(onnx_session(unet_file), image) - reference).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name", ["semanir_test_tiny_columnar", "dncnn_test_tiny"])
def test_super_resolution_and_dncnn(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    torch.manual_seed(0)
    model = build_model(name)  # in training mode: exported in eval mode, left as it was
    path = exported(tmp_path_factory, model, name)
    assert model.training
    assert_runtime_equals_restore(model.eval(), path, [(2, 11, 13), (1, 6, 17)])


SLOW_VARIANTS = {
    "dense": ("window_attention_test_tiny", {}),
    "layer_pre_dot": (
        "semanir_test_tiny_unet",
        {"dictionary": "layer", "norm": "pre", "similarity": "dot", "cosine_attention": False},
    ),
    "x3_no_position_bias": ("semanir_test_tiny_columnar", {"upscale": 3, "position_bias": False}),
    "x4_gray": (
        "semanir_test_tiny_columnar",
        {"upscale": 4, "in_channels": 1, "out_channels": 1, "img_mean": (0.5,)},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(SLOW_VARIANTS))
def test_every_variant(variant: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    name, overrides = SLOW_VARIANTS[variant]
    torch.manual_seed(0)
    model = model_from_config(get_config(name, **overrides)).eval()
    path = exported(tmp_path_factory, model, variant)
    assert_runtime_equals_restore(model, path, [(2, 11, 13), (1, 14, 21)])


# The bundled models of each graph: the U-Net (the gray denoiser and JPEG model have the colour
# model's graph with one channel) and the columnar x4 SR; each export takes about a minute.
BUNDLED_GRAPHS = ("semanir_tiny_denoise_color", "semanir_tiny_sr_x4")


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED_GRAPHS)
def test_bundled_models(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """With every window token in the dictionary (k = window**2) the two runtimes agree to
    1e-4 everywhere; with the model's k a row whose k-th and (k+1)-th similarities tie to
    float rounding may keep another neighbour in one of them, moving a few pixels further."""
    model = load_model(name)
    sizes = [(1, 23, 37), (2, 30, 41)] if model.upscale > 1 else [(1, 45, 61), (2, 70, 37)]
    tokens = model.config.window_size**2
    path = exported(tmp_path_factory, model, f"{name}_all", k=tokens)
    assert all(d.max() <= TOLERANCE for d in runtime_differences(model, path, sizes, k=tokens))
    for difference in runtime_differences(model, exported(tmp_path_factory, model, name), sizes):
        assert difference.max() <= 1 / 255  # within an 8-bit level


@pytest.fixture(scope="module")
def dncnn_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "dncnn"
    build_model("dncnn_test_tiny").save_pretrained(folder)
    return folder


def test_the_command_writes_atomically_and_replaces(
    dncnn_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dncnn.onnx"
    out.write_text("an older file")
    assert main(["export", str(dncnn_folder), str(out), "--opset", "20"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dncnn.onnx"]  # no temporary left
    model = onnx.load(os.fspath(out))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [20]
    dncnn = load_model(dncnn_folder)
    assert_runtime_equals_restore(dncnn, out, [(1, 9, 14)])


def test_bad_arguments_get_one_line_each(unet: nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    cases = [
        ({"opset": 7}, InvalidArgument, f"opset: must be an int in [18, {NEWEST}], got 7"),
        ({"path": tmp_path / "out.txt"}, InvalidArgument,
         f"path: must name a .onnx file, got {tmp_path / 'out.txt'}"),
        ({"path": tmp_path / "no" / "o.onnx"}, InvalidArgument,
         f"path: the folder {tmp_path / 'no'} does not exist"),
        ({"k": 17}, InvalidArgument,
         "k: must be an int in [1, 16] (a 4x4 window holds 16 tokens), got 17"),
        ({"model": build_model("dncnn_test_tiny"), "k": 4}, InvalidArgument,
         "k applies to SemanIR models with a key-semantic dictionary only"),
        ({"model": nn.Conv2d(1, 1, 3)}, InvalidArgument,
         "model: must be a SemanIR or DnCNN model, got Conv2d"),
        ({"model": "nope"}, ValueError, "unknown model 'nope': not a bundled model ("),
    ]  # fmt: skip
    (tmp_path / "folder.onnx").mkdir()
    cases.append(({"path": tmp_path / "folder.onnx"}, InvalidArgument,
                  f"path: {tmp_path / 'folder.onnx'} is a folder; name a .onnx file"))  # fmt: skip
    for options, error, message in cases:
        arguments = {"model": unet, "path": out, **options}
        with pytest.raises(error) as raised:
            export_onnx(arguments.pop("model"), arguments.pop("path"), **arguments)
        assert str(raised.value).startswith(message), (str(raised.value), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx"]  # nothing written


def test_the_command_names_its_arguments(
    dncnn_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, out = str(dncnn_folder), str(tmp_path / "out.onnx")
    cases = {
        f"--opset: must be an int in [18, {NEWEST}], got 99": [model, out, "--opset", "99"],
        f"OUT.onnx: must name a .onnx file, got {tmp_path / 'out.txt'}": [
            model, str(tmp_path / "out.txt")],
        "--k applies to SemanIR models with a key-semantic dictionary only": [
            model, out, "--k", "3"],
        "unknown model 'nope': not a bundled model (": ["nope", out],
    }  # fmt: skip
    for message, argv in cases.items():
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"semanir export: error: {message}"), err
        assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
