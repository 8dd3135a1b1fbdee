"""``semanir restore`` on a user's files (issue 33): inputs never replaced, bad files, resuming,
folders walked the one way, and what makes a photo kept (colour, 16 bits, alpha, ICC, EXIF)."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms

from common_kernels.runtime.photos import ORIENTATION, read_photo
from semanir.batch import restore_photo
from semanir.cli import main
from semanir.data.degradations import bicubic_resize
from semanir.inference import load_model, restore

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
EIGHT_BIT = 0.5 / 255 + 1e-6  # rounding of an 8-bit file


def photo_pixels(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth colour ramp with texture, (H, W, C) uint8."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 220, width)[None, :, None] * np.ones((height, 1, channels))
    ramp[..., 0] = ramp[..., 0][:, ::-1] if channels == 3 else ramp[..., 0]
    return np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path, **options)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- inputs are never replaced ----------------------------------------------------------------


def test_an_output_that_is_the_input_is_refused_before_any_work(
    tmp_path: Path, gray_model: Path, capsys, monkeypatch
) -> None:
    image = save(tmp_path / "a.png", photo_pixels(16, 16, 1))
    original = image.read_bytes()
    monkeypatch.setattr("semanir.inference.load_model", lambda name: pytest.fail("model loaded"))
    status, out, err = run(["restore", str(image), "-o", str(image)], capsys)
    assert status == 2 and out == ""
    assert err == (
        f"semanir restore: error: -o/--output: {image} would replace the input {image}; choose "
        "another output, or pass --in-place to replace the inputs (atomically)\n"
    )
    folder = tmp_path
    status, _, err = run(["restore", str(folder), "-o", str(folder)], capsys)
    assert status == 2
    assert err == (
        f"semanir restore: error: -o/--output: {folder} is the input folder {folder}: its images "
        "would be replaced; choose another output, or pass --in-place to replace the inputs "
        "(atomically)\n"
    )
    assert image.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_in_place_replaces_the_input_atomically(tmp_path: Path, gray_model: Path, capsys) -> None:
    image = save(tmp_path / "a.png", photo_pixels(16, 16, 1))
    expected = restore(load_model(gray_model), read_photo(image).pixels[None])[0]
    status, out, _ = run(["restore", str(image), "-o", str(image), "--in-place",
                          "--model", str(gray_model)], capsys)  # fmt: skip
    assert status == 0 and out == f"wrote 1 image(s) to {image}\n"
    assert (read_photo(image).pixels - expected).abs().max() <= EIGHT_BIT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left
    status, _, err = run(["restore", str(image), "-o", str(image), "--in-place",
                          "--skip-existing"], capsys)  # fmt: skip
    assert status == 2 and "--skip-existing: cannot resume an --in-place batch" in err


def test_the_noisy_copy_of_a_demo_never_replaces_an_input(tmp_path: Path, capsys) -> None:
    save(tmp_path / "in" / "a.png", photo_pixels(16, 16, 1))
    noisy = save(tmp_path / "in" / "a_noisy.png", photo_pixels(16, 16, 1, seed=1))
    status, _, err = run(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "in"),
                          "--in-place", "--add-noise", "25", "--save-noisy"], capsys)  # fmt: skip
    assert status == 2
    assert f"{noisy} would replace the input {noisy}" in err


def test_eval_never_writes_its_table_over_an_input(tmp_path: Path, capsys) -> None:
    image = save(tmp_path / "a.png", photo_pixels(16, 16, 1))
    status, _, err = run(["eval", "--sigma", "25", "--data", str(image), "--csv", str(image)],
                         capsys)  # fmt: skip
    assert status == 2
    assert err == (
        f"semanir eval: error: --csv: {image} would replace the input {image}; choose another "
        "output\n"
    )


# -- batches: bad files, resuming, folders ----------------------------------------------------


def test_a_bad_file_stops_the_batch_before_the_model_loads_or_is_skipped(
    tmp_path: Path, gray_model: Path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "mixed"
    good = save(folder / "a.png", photo_pixels(16, 16, 1))
    truncated = folder / "z_trunc.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    out = tmp_path / "out"
    argv = ["restore", str(folder), "-o", str(out), "--model", str(gray_model)]
    with monkeypatch.context() as patched:
        patched.setattr("semanir.inference.load_model", lambda n: pytest.fail("model loaded"))
        status, _, err = run(argv, capsys)
    assert status == 2
    assert err == (
        f"semanir restore: error: cannot read {truncated} as an image: image file is truncated\n"
    )
    assert not out.exists()
    status, stdout, err = run([*argv, "--keep-going"], capsys)
    assert status == 1
    assert stdout == f"wrote 1 image(s) to {out}\n"
    assert f"semanir restore: skipping {truncated}: image file is truncated\n" in err
    assert err.endswith(
        "semanir restore: skipped 1 input(s) that could not be read:\n"
        f"  {truncated}: image file is truncated\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_skip_existing_resumes_a_folder_run(tmp_path: Path, gray_model: Path, capsys) -> None:
    for name in ("a.png", "b.png", "c.png"):
        save(tmp_path / "in" / name, photo_pixels(16, 16, 1))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "a.png").write_bytes(b"finished before the interrupt")
    argv = ["restore", str(tmp_path / "in"), "-o", str(out), "--model", str(gray_model)]
    status, stdout, err = run([*argv, "--skip-existing"], capsys)
    assert status == 0 and stdout == f"wrote 2 image(s) to {out}\n"
    assert "semanir restore: 1 image(s) already restored, left out (--skip-existing)" in err
    assert (out / "a.png").read_bytes() == b"finished before the interrupt"
    assert read_photo(out / "c.png").size == (16, 16)


def test_folders_are_walked_one_way(tmp_path: Path, gray_model: Path, capsys) -> None:
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png", ".hidden/d.png"):
        save(tmp_path / "in" / name, photo_pixels(16, 16, 1))
    argv = ["restore", str(tmp_path / "in"), "--model", str(gray_model)]
    status, _, err = run([*argv, "-o", str(tmp_path / "flat")], capsys)
    assert status == 0
    assert (
        "semanir restore: left out 2 image(s) in 2 subfolder(s) of the input folder(s); "
        "--recursive restores them too, in the same subfolders"
    ) in err
    assert [p.name for p in (tmp_path / "flat").iterdir()] == ["a.png"]
    status, _, _ = run([*argv, "-o", str(tmp_path / "tree"), "--recursive"], capsys)
    written = sorted(p.relative_to(tmp_path / "tree").as_posix()
                     for p in (tmp_path / "tree").rglob("*.png"))  # fmt: skip
    assert status == 0 and written == ["a.png", "sub/b.png", "sub/deeper/c.png"]


def test_an_output_folder_inside_the_input_folder_is_not_walked(
    tmp_path: Path, gray_model: Path, capsys
) -> None:
    save(tmp_path / "in" / "a.png", photo_pixels(16, 16, 1))
    out = tmp_path / "in" / "restored"
    argv = ["restore", str(tmp_path / "in"), "-o", str(out), "--recursive",
            "--model", str(gray_model)]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    status, stdout, _ = run(argv, capsys)  # a second run restores the input, not the result
    assert status == 0 and stdout == f"wrote 1 image(s) to {out}\n"
    assert not (out / "restored").exists()


# -- what makes a photo, kept -----------------------------------------------------------------


def ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """JPEG's full-range YCbCr of (3, H, W) RGB in [0, 1] (ITU-T T.871)."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr])


def rgb(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc[0], ycc[1] - 0.5, ycc[2] - 0.5
    return torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])


def test_a_colour_jpeg_through_the_gray_jpeg_model_comes_out_in_colour(
    tmp_path: Path, capsys
) -> None:
    source = save(tmp_path / "photo.jpg", photo_pixels(24, 32), quality=30)
    status, _, err = run(["restore", str(source), "-o", str(tmp_path / "out.png"),
                          "--task", "jpeg"], capsys)  # fmt: skip
    assert status == 0
    assert "the bundled semanir_tiny_jpeg_gray (gray images)" in err
    written, photo = read_photo(tmp_path / "out.png"), read_photo(source)
    model = load_model("semanir_tiny_jpeg_gray")
    restored_y = restore(model, ycbcr(photo.pixels)[:1][None])[0]
    expected = rgb(torch.cat([restored_y, ycbcr(photo.pixels)[1:]])).clamp(0, 1)
    assert written.channels == 3
    assert (written.pixels - expected).abs().max() <= EIGHT_BIT + 1e-5
    assert torch.allclose(ycbcr(written.pixels)[1:], ycbcr(photo.pixels)[1:], atol=0.01)


def test_super_resolution_of_colour_through_a_gray_model_upscales_the_chroma(
    gray_sr_model: Path,
) -> None:
    pixels = torch.from_numpy(photo_pixels(12, 16)).permute(2, 0, 1) / 255.0
    photo = read_photo_from(pixels)
    out = restore_photo(load_model(gray_sr_model), photo)
    full = ycbcr(pixels)
    restored_y = restore(load_model(gray_sr_model), full[:1][None])[0]  # (1, 24, 32)
    chroma = bicubic_resize(full[1:][None], 2)[0]  # the chroma, upscaled with the image
    expected = rgb(torch.cat([restored_y, chroma])).clamp(0, 1)
    assert out.pixels.shape == (3, 24, 32)
    assert torch.allclose(out.pixels, expected, atol=1e-5)


def read_photo_from(pixels: torch.Tensor):
    from common_kernels.runtime.photos import Photo

    return Photo(pixels)


def test_per_channel_and_gray_output_are_the_options(gray_model: Path) -> None:
    pixels = torch.from_numpy(photo_pixels(12, 12)).permute(2, 0, 1) / 255.0
    model = load_model(gray_model)
    per_channel = restore_photo(model, read_photo_from(pixels), colour="per-channel")
    expected = torch.cat([restore(model, c[None, None])[0] for c in pixels])
    assert torch.allclose(per_channel.pixels, expected, atol=1e-6)
    gray = restore_photo(model, read_photo_from(pixels), colour="gray")
    assert torch.allclose(gray.pixels, restore(model, ycbcr(pixels)[:1][None])[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"^colour: must be one of luma, per-channel, gray"):
        restore_photo(model, read_photo_from(pixels), colour="grey")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_in_gives_16bit_out(
    tmp_path: Path, colour_model: Path, capsys, suffix: str
) -> None:
    samples = (photo_pixels(16, 20).astype(np.uint16) * 257 + 100).astype(np.uint16)
    source = tmp_path / f"deep{suffix}"
    if suffix == ".png":
        source.write_bytes(imagecodecs.png_encode(samples))
    else:
        tifffile.imwrite(source, samples, photometric="rgb")
    target = tmp_path / "out" / source.name
    status, _, err = run(["restore", str(source), "-o", str(tmp_path / "out"),
                          "--model", str(colour_model)], capsys)  # fmt: skip
    assert status == 0 and "warning" not in err
    written = (imagecodecs.png_decode(target.read_bytes()) if suffix == ".png"
               else tifffile.imread(target))  # fmt: skip
    assert written.dtype == np.uint16 and written.shape == (16, 20, 3)
    expected = restore(load_model(colour_model), read_photo(source).pixels[None])[0]
    assert np.abs(written / 65535.0 - expected.permute(1, 2, 0).numpy()).max() <= 0.5 / 65535 + 1e-6
    assert len(np.unique(written)) > 256  # more levels than 8 bits hold


def test_alpha_is_carried_and_resized_for_super_resolution(
    tmp_path: Path, gray_sr_model: Path, capsys
) -> None:
    rgba = np.concatenate([photo_pixels(10, 12), photo_pixels(10, 12, 1, seed=3)], axis=-1)
    source = save(tmp_path / "logo.png", rgba)
    status, _, _ = run(["restore", str(source), "-o", str(tmp_path / "big.png"), "--task", "sr",
                        "--model", str(gray_sr_model)], capsys)  # fmt: skip
    assert status == 0
    written = read_photo(tmp_path / "big.png")
    assert written.pixels.shape == (3, 20, 24) and written.alpha.shape == (1, 20, 24)
    alpha = torch.from_numpy(rgba[..., 3] / 255.0).float()[None, None]
    expected = bicubic_resize(alpha, 2)[0].clamp(0, 1)
    assert (written.alpha - expected).abs().max() <= EIGHT_BIT


def test_icc_profile_and_exif_are_kept_and_the_orientation_applied_once(
    tmp_path: Path, gray_model: Path, capsys
) -> None:
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[ORIENTATION] = 6  # stored sideways: a quarter turn clockwise shows it upright
    exif[0x010F] = "Camera maker"
    source = save(tmp_path / "photo.jpg", photo_pixels(16, 24), exif=exif.tobytes(),
                  icc_profile=SRGB, quality=95)  # fmt: skip
    status, _, _ = run(["restore", str(source), "-o", str(tmp_path / "out.jpg"),
                        "--model", str(gray_model)], capsys)  # fmt: skip
    assert status == 0
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.size == (16, 24)  # upright: width 16, height 24
        assert written.info["icc_profile"] == SRGB
        assert ORIENTATION not in written.getexif()  # a viewer does not turn it again
        assert written.getexif()[0x010F] == "Camera maker"


def test_a_format_that_cannot_hold_alpha_says_so(tmp_path: Path, gray_model: Path, capsys) -> None:
    source = save(tmp_path / "logo.png", np.dstack([photo_pixels(8, 8), photo_pixels(8, 8, 1)]))
    status, _, err = run(["restore", str(source), "-o", str(tmp_path / "logo.jpg"),
                          "--model", str(gray_model)], capsys)  # fmt: skip
    assert status == 0
    assert "semanir restore: warning: logo.jpg: JPEG has no alpha channel: alpha dropped" in err


# -- the small ones ---------------------------------------------------------------------------


def test_an_empty_tensor_gets_the_apis_message(gray_model: Path) -> None:
    with pytest.raises(ValueError, match=r"^image is empty: shape \(1, 1, 0, 0\); B, H and W "):
        restore(load_model(gray_model), torch.rand(1, 1, 0, 0))


def test_version(capsys) -> None:
    from importlib import metadata

    assert main(["--version"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"semanir {metadata.version('semanir')} (common-kernels ")
    assert f"torch {torch.__version__}" in line
