"""restore() (whole-image and tiled) and load_model().

Low precision: under fp16 / bf16 autocast every Conv2d / Linear of the model must output that
type, and the restored image must differ from the fp32 one by more than nothing and at most
``AUTOCAST_ATOL`` = 0.02 in max abs error on [0, 1] images (CPU autocast measured 8.3e-3 bf16,
8.8e-3 fp16 on the near-identity tiny model).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common_kernels.runtime.errors import InvalidArgument
from semanir import inference
from semanir.inference import default_weights_dir, load_model, restore
from semanir.models import DnCNN, SemanIR, build_model


class Identity(nn.Module):
    """A parameter-free model that returns its input."""

    in_channels = 1
    upscale = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Pointwise(nn.Module):
    """Per-pixel colour transform followed by nearest-neighbour upscaling."""

    in_channels = 3

    def __init__(self, upscale: int) -> None:
        super().__init__()
        self.upscale = upscale
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(torch.sigmoid(self.mix(x)), scale_factor=self.upscale)


class Affine(nn.Module):
    """Maps [0, 1] to [-0.5, 1.5], so only clamping keeps restore's output in range."""

    in_channels = 1
    upscale = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x - 0.5


AUTOCAST_ATOL = 0.02


def tiny(name: str = "semanir_test_tiny_unet", **overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **overrides)


def near_identity(model: SemanIR, factor: float = 10.0) -> SemanIR:
    """Scale the reconstruction conv (initialised 100x small) up so the model adds a visible
    correction of a few hundredths to its input, as a trained restoration model does."""
    with torch.no_grad():
        model.reconstruct.weight.mul_(factor)
        model.reconstruct.bias.add_(0.01)
    return model


def images(channels: int, height: int, width: int, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.rand(batch, channels, height, width, generator=generator)


# ---------------------------------------------------------------------------- tiling


def test_tiled_identity_reassembles_the_image_exactly():
    # multiples of 1/256 times blend weights (multiples of 1/64) sum exactly in fp32
    image = torch.randint(0, 256, (2, 1, 37, 50), generator=torch.Generator().manual_seed(0)) / 256
    for tile, overlap in [(16, 4), (16, 15), (20, 0), (64, 32)]:
        assert torch.equal(restore(Identity(), image, tile=tile, tile_overlap=overlap), image)


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_tiled_equals_untiled_for_a_pointwise_model(upscale):
    torch.manual_seed(0)
    model = Pointwise(upscale)
    image = images(3, 29, 41)
    whole = restore(model, image)
    tiled = restore(model, image, tile=12, tile_overlap=5)
    assert whole.shape == (2, 3, 29 * upscale, 41 * upscale)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "semanir_test_tiny_columnar"])
def test_one_tile_covering_the_image_equals_untiled(name):
    model = tiny(name)
    image = images(model.in_channels, 13, 10)
    # the same forward; only the blend (w * y) / w rounds, by at most an ulp
    torch.testing.assert_close(
        restore(model, image, tile=16, tile_overlap=4), restore(model, image), rtol=0, atol=1e-6
    )


def test_tiled_semanir_stays_close_to_untiled():
    # Tiles see less context than the whole image, so outputs differ; the stated tolerance is
    # for a near-identity tiny model whose corrections average 0.07 (max 0.12) here: tiles of 32
    # with overlap 16 on 48x48 stay within 2e-3 on average and 2e-2 everywhere (seams included).
    model = near_identity(tiny())
    image = images(1, 48, 48, batch=1) * 0.5 + 0.25
    whole = restore(model, image)
    tiled = restore(model, image, tile=32, tile_overlap=16)
    correction = (whole - image).abs()
    assert 0.03 < correction.mean() < 0.15
    deviation = (tiled - whole).abs()
    assert deviation.mean() < 2e-3
    assert deviation.max() < 2e-2


def test_tiled_super_resolution_has_the_upscaled_shape():
    model = tiny("semanir_test_tiny_columnar")
    out = restore(model, images(3, 21, 18), tile=8, tile_overlap=2)
    assert out.shape == (2, 3, 42, 36)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


# ---------------------------------------------------------------------------- semantics


def test_output_is_clamped_to_the_unit_range():
    image = images(1, 8, 8)
    out = restore(Affine(), image)
    assert torch.equal(out, (2 * image - 0.5).clamp(0, 1))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_restore_runs_in_eval_mode_and_restores_the_mode():
    model = tiny().train()
    image = images(1, 12, 12)
    out = restore(model, image, k=5)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(image, k=5).clamp(0, 1)
    assert torch.equal(out, expected)


def test_restore_uses_inference_k_by_default():
    model = tiny(inference_k=3)
    image = images(1, 8, 8)
    assert torch.equal(restore(model, image), restore(model, image, k=3))
    assert not torch.equal(restore(model, image), restore(model, image, k=8))


def test_output_keeps_the_input_dtype_and_device():
    model = tiny("dncnn_test_tiny")
    image = images(1, 9, 9).double()
    out = restore(model, image)
    assert out.dtype == torch.float64 and out.device == image.device
    torch.testing.assert_close(out, restore(model, image.float()).double(), rtol=0, atol=0)


def restore_recording_dtypes(
    model: nn.Module, image: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, set[torch.dtype]]:
    """``restore(model, image, dtype=dtype)`` and the output dtypes of the model's Conv2d and
    Linear layers during it (recorded by forward hooks)."""
    seen: list[torch.dtype] = []
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for m in layers]
    try:
        out = restore(model, image, dtype=dtype)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) >= len(layers) > 0  # every layer ran
    return out, set(seen)


def check_low_precision(
    model: nn.Module,
    image: torch.Tensor,
    dtype: torch.dtype | None,
    expected: torch.dtype,
    device: str = "cpu",
) -> None:
    """Restored on ``device`` under ``dtype`` (``None``: the device's default), the model's
    layers ran in ``expected``; the output is in the (CPU) image's dtype and on its device, and
    differs from the fp32 CPU restoration by a non-zero amount within ``AUTOCAST_ATOL``."""
    reference, fp32_types = restore_recording_dtypes(model.cpu(), image, torch.float32)
    assert fp32_types == {torch.float32}
    out, types = restore_recording_dtypes(model.to(device), image, dtype)
    assert types == {expected}, sorted(map(str, types))
    assert out.dtype == image.dtype and out.device == image.device
    error = float((out - reference).abs().max())
    assert 0 < error <= AUTOCAST_ATOL, error


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_autocast_runs_the_model_in_the_dtype_and_stays_close_to_float32(dtype):
    check_low_precision(near_identity(tiny()), images(1, 16, 16), dtype, dtype)


def test_cpu_default_is_float32_without_autocast():
    model = near_identity(tiny())
    image = images(1, 16, 16)
    out, types = restore_recording_dtypes(model, image)
    assert types == {torch.float32}
    assert torch.equal(out, restore(model, image, dtype=torch.float32))


def test_cuda_default_is_float16_autocast():
    """The choice the CUDA test below checks on a GPU, made here without one: ``dtype=None``
    on a CUDA model is fp16 autocast on CUDA (the context is built, never entered)."""
    with warnings.catch_warnings():  # torch warns that CUDA is absent and disables it
        warnings.simplefilter("ignore", UserWarning)
        context = inference._autocast(torch.device("cuda"), None)
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.float16)


# ---------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ([[0.5]], TypeError, "image must be a torch.Tensor, got list"),
        (torch.rand(1, 8, 8), ValueError, r"image must have shape \(B, C, H, W\), got \(1, 8, 8\)"),
        (
            torch.rand(1, 3, 8, 8),
            ValueError,
            "image has 3 channels but the model takes in_channels=1",
        ),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), TypeError, "floating tensor .* torch.uint8"),
        (torch.full((1, 1, 8, 8), float("nan")), ValueError, "image contains NaN or Inf"),
        (torch.full((1, 1, 8, 8), float("-inf")), ValueError, "image contains NaN or Inf"),
        (
            torch.full((1, 1, 8, 8), 255.0),
            ValueError,
            r"image values must be in \[0, 1\] \(noisy inputs may reach \[-1.0, 2.0\]\), "
            r"got \[255, 255\]; scale 8-bit values with image / 255",
        ),
        (torch.full((1, 1, 8, 8), -1.5), ValueError, r"got \[-1.5, -1.5\]"),
    ],
)
def test_bad_images_are_rejected(image, error, message):
    with pytest.raises(error, match=message):
        restore(tiny(), image)


def test_unclipped_noisy_images_are_accepted():
    # the DnCNN/BM3D convention leaves Gaussian noise unclipped: values slightly outside [0, 1]
    noisy = torch.linspace(-0.9, 1.9, 64).view(1, 1, 8, 8)
    assert restore(tiny(), noisy).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"tile": 3},
            InvalidArgument,
            r"^tile: must be an int >= the model's window size 4 "
            r"\(pixels\), got 3$",
        ),
        (
            {"tile": 8, "tile_overlap": 8},
            InvalidArgument,
            r"^tile_overlap: must be in \[0, tile - 1\] = \[0, 7\] \(pixels\), got 8$",
        ),
        ({"tile": 8, "tile_overlap": -1}, InvalidArgument, r"= \[0, 7\] \(pixels\), got -1"),
        ({"tile": 8, "tile_overlap": 2.5}, TypeError, "tile_overlap must be an int, got float"),
        ({"tile_overlap": -1}, InvalidArgument, r"^tile_overlap: must be >= 0 \(pixels\), got -1$"),
        ({"tile": None, "tile_overlap": -3}, InvalidArgument, "^tile_overlap: must be >= 0"),
        ({"dtype": torch.float64}, ValueError, "dtype must be torch.float32, .* got torch.float64"),
        ({"k": 17}, InvalidArgument, r"^k: must be an int in \[1, 16\]"),
    ],
)
def test_bad_options_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        restore(tiny(), images(1, 8, 8), **kwargs)


@pytest.mark.parametrize(
    ("name", "task", "per_channel", "message"),
    [
        ("semanir_test_tiny_unet", "sr", False, "the model keeps the image size, which does not "
         "fit task='sr'"),
        ("semanir_test_tiny_columnar", "denoise", False, "the model upscales x2, which does not "
         "fit task='denoise'"),
        ("dncnn_test_tiny", "jpeg", True, None),  # a gray DnCNN: per-channel is fine
    ],
)  # fmt: skip
def test_check_model_for_task_reads_the_config_only(name, task, per_channel, message):
    model = tiny(name)
    config = model.config.to_dict()
    if message is None:
        inference.check_model_for_task(config, task, per_channel=per_channel)
        return
    with pytest.raises(InvalidArgument) as error:
        inference.check_model_for_task(config, task, per_channel=per_channel)
    assert (error.value.argument, str(error.value)) == ("task", message)


def test_per_channel_needs_a_one_channel_model_in_the_config():
    config = build_model("dncnn_test_tiny", channels=3).config.to_dict()
    with pytest.raises(InvalidArgument) as error:
        inference.check_model_for_task(config, "denoise", per_channel=True)
    assert error.value.argument == "per_channel"
    assert (
        str(error.value) == "per_channel=True applies to gray models; this model takes 3 channels"
    )


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("name", "cls"), [("semanir_test_tiny_columnar", SemanIR), ("dncnn_test_tiny", DnCNN)]
)
def test_load_model_reads_a_saved_folder(tmp_path, name, cls):
    model = tiny(name).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    assert type(loaded) is cls and not loaded.training
    image = images(model.in_channels, 11, 6)
    assert torch.equal(restore(loaded, image), restore(model, image))


def test_default_weights_live_in_the_package():
    path = default_weights_dir()
    assert path.parts[-3:] == ("semanir", "weights", "semanir_tiny_denoise_gray")


def test_load_model_without_bundled_weights_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "weights" / "semanir_tiny_denoise_gray"
    monkeypatch.setattr(inference, "default_weights_dir", lambda: missing)
    with pytest.raises(FileNotFoundError, match=f"{missing}/model.safetensors"):
        load_model(None)


def test_load_model_none_loads_the_default_folder(tmp_path, monkeypatch):
    model = tiny("semanir_tiny_denoise_gray", depths=(1,) * 6).eval()
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(inference, "default_weights_dir", lambda: tmp_path)
    loaded = load_model()
    assert loaded.config == model.config
    image = images(1, 8, 8)
    assert torch.equal(restore(loaded, image), restore(model, image))


def test_load_model_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no config\.json"):
        load_model(str(tmp_path))


@pytest.mark.gpu
def test_cuda_restore_autocasts_to_float16_and_matches_the_cpu():
    model = near_identity(tiny())
    image = images(1, 32, 32)  # stays on the CPU: so does the output
    check_low_precision(model, image, None, torch.float16, device="cuda")


# ---------------------------------------------------------------------------- self-ensemble


def numpy_dihedral_mean(fn, x: torch.Tensor) -> torch.Tensor:
    """The x8 self-ensemble restated with numpy's rot90/fliplr on (H, W) planes."""
    import numpy as np

    outs = []
    planes = x.numpy()
    for k in range(8):
        variant = np.rot90(planes, k % 4, axes=(-2, -1))
        variant = np.flip(variant, -1) if k >= 4 else variant
        out = fn(torch.from_numpy(variant.copy())).numpy()
        out = np.flip(out, -1) if k >= 4 else out
        outs.append(np.rot90(out, -(k % 4), axes=(-2, -1)))
    return torch.from_numpy(np.mean(outs, axis=0))


def test_dihedral_ensemble_maps_every_variant_back():
    x = images(1, 5, 7)
    exact = {"atol": 1e-6, "rtol": 0}  # 8 equal terms summed in fp32, then divided by 8
    torch.testing.assert_close(inference.dihedral_ensemble(lambda t: t, x), x, **exact)
    ramp = torch.arange(7.0)  # not rotation-equivariant: the ensemble averages its variants

    def skewed(t: torch.Tensor) -> torch.Tensor:
        return t + ramp[: t.shape[-1]] * t[..., :1, :1]

    torch.testing.assert_close(
        inference.dihedral_ensemble(skewed, x), numpy_dihedral_mean(skewed, x), atol=1e-6, rtol=0
    )

    def upscale(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(2, -2).repeat_interleave(2, -1)

    torch.testing.assert_close(inference.dihedral_ensemble(upscale, x), upscale(x), **exact)


def test_restore_with_ensemble_averages_the_eight_variants():
    model = near_identity(tiny()).eval()
    image = images(1, 12, 20, batch=1)
    with torch.inference_mode():
        expected = numpy_dihedral_mean(lambda t: model(t), image).clamp(0, 1)
    out = restore(model, image, ensemble=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, restore(model, image), atol=1e-4)
    tiled = restore(model, image, ensemble=True, tile=8, tile_overlap=2)
    assert tiled.shape == image.shape
