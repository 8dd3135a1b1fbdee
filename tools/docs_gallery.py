"""The documentation site's gallery: real images from ``../shared/data`` through the packages.

``python tools/docs_site.py gallery [--data DIR]`` writes ``docs/gallery/`` (committed: the
pages and small images, each under ``MAX_IMAGE_BYTES``; never the data itself):

- semanir: each bundled model on the real image of the README's "Pinned outputs" table (the
  clean image, its degraded copy and the restoration, PSNR of both against the clean one),
  computed in this process with the API the pinned-outputs test uses;
- itaclip, diffeat, pixelsmith, vitron (hub weights): each package's tiny random model run by
  its command line on Set5's bird (pixelsmith: from a prompt), with what that output shows and
  the commands that run the real weights.

Minutes on a 2-core CPU (the tiny models' runs dominate), so the site's build reads the
committed result instead of running it.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
MAX_IMAGE_BYTES = 300_000
MAX_SIDE = 288  # px: the gallery's images are shown side by side
BIRD = "set5/bird_GT.bmp"  # the real photo the tiny models are run on


@dataclass(frozen=True)
class Pinned:
    """One bundled semanir model on one real image (the README's pinned-outputs rows)."""

    model: str
    image: str
    degradation: str  # the README's words
    caption: str  # what the middle image is
    command: str  # the CLI line that degrades and restores (or evaluates) the same way


PINNED = (
    Pinned("semanir_tiny_denoise_gray", "set12/05.png", "Gaussian noise sigma 25, seed 0",
           "noisy (sigma 25)",
           "semanir restore ../shared/data/set12/05.png -o outputs/gallery/ "
           "--add-noise 25 --seed 0"),
    Pinned("semanir_tiny_jpeg_gray", "classic5/barbara.bmp", "JPEG quality 10", "JPEG q10",
           "semanir eval --task jpeg --quality 10 --data ../shared/data/classic5/"),
    Pinned("semanir_tiny_denoise_color", "set5/bird_GT.bmp", "Gaussian noise sigma 25, seed 0",
           "noisy (sigma 25)",
           "semanir restore ../shared/data/set5/bird_GT.bmp -o outputs/gallery/ "
           "--model semanir_tiny_denoise_color --add-noise 25 --seed 0"),
    Pinned("semanir_tiny_sr_x4", "set5/butterfly_GT.bmp", "bicubic x4, Y channel, border 4",
           "bicubic x4 upscaling of the x4-downscaled image",
           "semanir eval --task sr --scale 4 --data ../shared/data/set5/"),
)  # fmt: skip


@dataclass(frozen=True)
class TinyRun:
    """One hub-weight package's gallery: tiny random model commands and their outputs."""

    package: str
    title: str
    commands: tuple[str, ...]  # run in a folder holding bird.png (Set5's bird)
    outputs: tuple[tuple[str, str], ...]  # (file the commands wrote, caption)
    shows: str  # what the tiny model's output does and does not show
    real: tuple[str, ...]  # the commands with real weights (not run here)
    real_reason: str


VITRON_REPLY = (
    'On it. <invoke>{"version": 1, "calls": ['
    '{"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "bird"}}, '
    '{"id": "edit", "task": "edit_image", "args": {"image": "$image0", "mask": "$seg.mask", '
    '"text": "a parrot"}}, '
    '{"id": "fix", "task": "restore_image", "args": {"image": "$edit.image"}}]}'
    "</invoke><signal><signal><signal></s>"
)

TINY_RUNS = (
    TinyRun(
        "itaclip", "Open-vocabulary segmentation",
        ("itaclip tiny-model tiny-clip/",
         'itaclip segment bird.png --classes "bird,branch,background" --model tiny-clip/ -o seg/'),
        (("seg/bird_overlay.png", "labels over the photo, with the legend (tiny random CLIP)"),),
        "The tiny random CLIP runs the whole pipeline (sliding windows, the image engineering, "
        "PAMR, the overlay and its legend) on the real photo, but its labels are noise: "
        "a random text-image similarity decides them.",
        ('itaclip segment bird.png --classes "bird,branch,background" -o seg/',),
        "downloads OpenAI's CLIP ViT-B/16 from the hub",
    ),
    TinyRun(
        "diffeat", "Diffusion features",
        ("diffeat tiny-model tiny-sd --kind sd15",
         "diffeat pca bird.png --model tiny-sd --preset ours-v1.5 --size 256 -o pca/"),
        (("pca/bird__up-level3-repeat0-vit-block0-self-k.png",
          "first three PCA components of one U-Net activation (tiny random SD 1.5)"),
         ("pca/bird__up-level2-repeat1-vit-block0-cross-q.png",
          "another selected activation, coarser"),),
        "The preset's activations of a tiny random SD 1.5-shaped U-Net, reduced to three PCA "
        "components as RGB: the names, shapes and resolutions are the real model's, and the "
        "maps follow the photo's edges only as far as random convolutions do; real weights "
        "give features that separate the bird from the branch.",
        ("diffeat pca bird.png --model stable-diffusion-v1-5/stable-diffusion-v1-5 "
         "--preset ours-v1.5 --size 256 -o pca/",),
        "downloads Stable Diffusion 1.5 from the hub",
    ),
    TinyRun(
        "pixelsmith", "Higher-resolution generation",
        ("pixelsmith tiny-model ./tiny-sdxl",
         'pixelsmith generate "a bird on a branch" --model ./tiny-sdxl --sizes 128 256 '
         "--slider 1 --steps 2 --patch-size 32 --seed 0 -o bird_gen.png"),
        (("bird_gen.png", "256 px from a 128 px base stage (tiny random SDXL)"),),
        "pixelsmith generates from a prompt (no input image). The tiny random SDXL runs both "
        "stages of the cascade (the base image, then the patch-wise denoising at twice the "
        "size with the FFT-guided fusion); its images are noise.",
        ('pixelsmith generate "a bird on a branch" --sizes 1024 2048 4096 --slider 20 30 '
         "--seed 0 -o bird.tif",),
        "downloads SDXL base 1.0 and runs on a GPU",
    ),
    TinyRun(
        "vitron", "A vision LLM that calls specialists",
        ("vitron tiny-model tiny/model",
         "vitron tiny-specialists tiny/spec",
         f"printf '%s' {shlex.quote(VITRON_REPLY)} > reply.txt",
         'vitron run "segment the bird and make it a parrot" --image bird.png -o out/ '
         "--model tiny/model --specialists tiny/spec/specialists.json --reply-file reply.txt"),
        (("out/seg_overlay.png", "segment_image: itaclip's tiny CLIP"),
         ("out/edit_image.png", "edit_image: tiny SD inpainting in the mask"),
         ("out/fix_image.png", "restore_image: semanir's bundled colour denoiser")),
        "`--reply-file` stands in for the LLM's first reply so that the random model dispatches "
        "real calls: the tiny specialists segment (noise), inpaint (noise inside a random mask) "
        "and restore; the last step is semanir's real bundled model.",
        ('vitron run "segment the bird and make it a parrot" --image bird.png -o out/ '
         "--planner Qwen/Qwen2.5-VL-3B-Instruct",),
        "downloads a chat model (the planner) and the specialists' weights from the hub",
    ),
)  # fmt: skip


def save_small(image, path: Path) -> None:
    """``image`` (PIL) at most ``MAX_SIDE`` px a side, PNG when it stays under
    ``MAX_IMAGE_BYTES``, else JPEG (noise does not compress); written atomically.

    Raises:
        ValueError: the image stays over ``MAX_IMAGE_BYTES`` even as a JPEG.
    """
    image = image.copy()
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > MAX_IMAGE_BYTES and path.suffix == ".png":
        raise ValueError(f"{path.name}: {buffer.tell()} bytes as PNG; give it a .jpg name")
    if path.suffix == ".jpg":
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=88)
    if buffer.tell() > MAX_IMAGE_BYTES:
        raise ValueError(f"{path.name}: {buffer.tell()} bytes, over {MAX_IMAGE_BYTES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def semanir_gallery(data: Path) -> list[dict]:
    """Restore each pinned image; write the three images; the measured rows."""
    import torch
    from PIL import Image

    from semanir.bundled import BUNDLED_MODELS
    from semanir.data.datasets import index_generator
    from semanir.data.degradations import (
        add_gaussian_noise,
        bicubic_downscale,
        bicubic_resize,
        jpeg_compress,
    )
    from semanir.inference import load_model, restore
    from semanir.io import read_image
    from semanir.metrics import psnr

    def to_pil(tensor: torch.Tensor) -> Image.Image:
        pixels = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
        return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)

    rows = []
    for pinned in PINNED:
        entry = BUNDLED_MODELS[pinned.model]
        image = read_image(data / pinned.image, channels=entry.channels)
        options, scale = {}, 1
        if pinned.degradation.startswith("Gaussian"):
            degraded = add_gaussian_noise(image, 25.0, index_generator(0, 0))
        elif pinned.degradation.startswith("JPEG"):
            degraded = jpeg_compress(image, 10)
        else:  # x4 SR: the image cropped to a multiple of the scale
            scale = entry.scale
            image = image[:, : image.shape[1] // scale * scale, : image.shape[2] // scale * scale]
            degraded = bicubic_downscale(image, scale)
            options = {"y_channel": True, "crop_border": 4}
        with torch.no_grad():
            restored = restore(load_model(pinned.model), degraded[None])[0]
        shown = bicubic_resize(degraded, scale) if scale > 1 else degraded
        before = float(psnr(shown, image, **options))
        after = float(psnr(restored, image, **options))
        # the middle of the image, at most 256 px a side (barbara is 512 x 512)
        h, w = image.shape[1:]
        top, left = max(0, (h - 256) // 2), max(0, (w - 256) // 2)
        files = {}
        for kind, tensor in (("clean", image), ("degraded", shown), ("restored", restored)):
            name = f"semanir/{pinned.model}-{kind}.png"
            save_small(to_pil(tensor[:, top : top + 256, left : left + 256]), GALLERY / name)
            files[kind] = name
        rows.append({"model": pinned.model, "image": pinned.image,
                     "degradation": pinned.degradation, "psnr_degraded": round(before, 3),
                     "psnr_restored": round(after, 3), "files": files})  # fmt: skip
        print(f"semanir: {pinned.model} on {pinned.image}: {before:.3f} -> {after:.3f} dB")
    return rows


def semanir_page(rows: list[dict]) -> str:
    lines = [
        "# semanir: gallery",
        "",
        "Each bundled model (the weights inside the wheel, no download) on one real image of "
        "`../shared/data`: the clean image, its degraded copy and the restoration. PSNR in dB "
        "against the clean image, over the whole image (the pictures show its middle, at most "
        "256 px a side); the same rows are the README's pinned outputs, checked to 0.005 dB by "
        "`tests/test_pinned_outputs.py`. Written by `python tools/docs_site.py gallery`.",
        "",
    ]
    for row, pinned in zip(rows, PINNED, strict=True):
        files = row["files"]
        lines += [
            f"## `{row['model']}`",
            "",
            f"`{row['image']}`, {row['degradation']}: **{row['psnr_degraded']:.2f} dB** "
            f"({pinned.caption}) → **{row['psnr_restored']:.2f} dB** (restored).",
            "",
            "| clean | " + pinned.caption + " | restored |",
            "|---|---|---|",
            f"| ![clean]({files['clean']}) | ![{pinned.caption}]({files['degraded']}) "
            f"| ![restored]({files['restored']}) |",
            "",
        ]
    lines += [
        "## The same from the command line",
        "",
        "From the repository's root (the `restore` lines print the PSNR before and after; the "
        "`eval` lines print a table over the whole folder):",
        "",
        "<!-- example: check (reads ../shared/data; tests/test_docs_site.py checks each flag "
        "against semanir's parsers) -->",
        "```bash",
        *(pinned.command for pinned in PINNED),
        "```",
        "",
    ]
    return "\n".join(lines)


def run_tiny(run: TinyRun, data: Path, folder: Path) -> list[tuple[str, str]]:
    """Run ``run``'s commands in ``folder`` (holding bird.png); save its outputs into the
    gallery; returns (gallery file, caption) pairs."""
    from PIL import Image

    Image.open(data / BIRD).save(folder / "bird.png")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in run.commands:
        subprocess.run(["bash", "-e", "-c", command], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    saved = []
    for output, caption in run.outputs:
        image = Image.open(folder / output)
        noisy = run.package == "pixelsmith"  # generated noise: a PNG would be too large
        name = f"{run.package}/{Path(output).stem}{'.jpg' if noisy else '.png'}"
        save_small(image, GALLERY / name)
        saved.append((name, caption))
    print(f"{run.package}: {', '.join(n for n, _ in saved)}")
    return saved


def tiny_page(run: TinyRun, saved: list[tuple[str, str]]) -> str:
    images = " | ".join(f"![{caption}]({name})" for name, caption in saved)
    lines = [
        f"# {run.package}: gallery",
        "",
        f"{run.title} needs weights from the hub, which these machines cannot download; the "
        "pictures below come from the package's tiny random model, run on Set5's bird "
        f"(`{BIRD}` in `../shared/data`, saved as `bird.png`) by "
        "`python tools/docs_site.py gallery`.",
        "",
        "| " + " | ".join(caption for _, caption in saved) + " |",
        "|" + "---|" * len(saved),
        f"| {images} |",
        "",
        run.shows,
        "",
        "## The tiny model's commands",
        "",
        "<!-- example: check (minutes of tiny-model runs; tools/docs_site.py gallery runs them, "
        "and tests/test_docs_site.py checks each flag against the package's parsers) -->",
        "```bash",
        *run.commands,
        "```",
        "",
        "## With real weights",
        "",
        f"<!-- example: check ({run.real_reason}; tests/test_docs_site.py checks each flag "
        "against the package's parsers) -->",
        "```bash",
        *run.real,
        "```",
        "",
    ]
    return "\n".join(lines)


def index_page(packages: list[str]) -> str:
    lines = [
        "# Gallery",
        "",
        "Real results, regenerated by `python tools/docs_site.py gallery` from the images in "
        "`../shared/data` (the data itself is never in the repository; these are small "
        "derived pictures).",
        "",
        "- [semanir](semanir.md): every bundled model (no download) on a real image, with its "
        "PSNR before and after.",
    ]
    lines += [
        f"- [{run.package}](../{run.package}/index.md): {run.title.lower()}; "
        f"[what its tiny random model shows](./{run.package}.md) and the commands for real "
        "weights."
        for run in TINY_RUNS
        if run.package in packages
    ]
    return "\n".join([*lines, ""])


def main(data: Path) -> None:
    """Regenerate every gallery page and image from ``data``."""
    if not (data / BIRD).is_file():
        raise SystemExit(f"docs_site gallery: --data {data}: no {BIRD} there")
    GALLERY.mkdir(parents=True, exist_ok=True)
    for folder in ("semanir", *(run.package for run in TINY_RUNS)):
        shutil.rmtree(GALLERY / folder, ignore_errors=True)
    rows = semanir_gallery(data)
    _write(GALLERY / "semanir.json", json.dumps(rows, indent=1) + "\n")
    _write(GALLERY / "semanir.md", semanir_page(rows))
    for run in TINY_RUNS:
        with tempfile.TemporaryDirectory() as folder:
            saved = run_tiny(run, data, Path(folder))
        _write(GALLERY / f"{run.package}.md", tiny_page(run, saved))
    _write(GALLERY / "index.md", index_page([run.package for run in TINY_RUNS]))
