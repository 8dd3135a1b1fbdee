"""Gaussian denoising (Set12 by default): noisy, BM3D and models, PSNR/SSIM per image.

    python packages/semanir/benchmarks/eval_set12.py --model semanir=DIR --model dncnn=DIR \
        --model window_attention=DIR [--sigmas 15 25 50] [--data-root DIR] [--out DIR] \
        [--seed 0] [--models-only] [--limit N] [--ensemble] [--bf16] [--set set12] \
        [--exclude STEM ...] [--color]

Noise convention (the DnCNN / BM3D papers'): white Gaussian noise of standard deviation
sigma / 255 is added to the clean image in float and NOT clipped; every method receives that
float image. The noise of image i at level sigma comes from a generator seeded by
(seed, i, sigma), so every method and every rerun sees the same noisy images. PSNR and SSIM are
``semanir.metrics`` on outputs clamped to [0, 1] and rounded to 8 bits (the noisy input too).

Writes ``<out>/set12.json`` (per-image rows, averages, environment), ``set12.md`` (tables) and
``set12_crops.png`` (crops of the first image at sigma 25); ``--limit N`` writes
``set12_first<N>.*`` instead. ``--set NAME [--exclude STEM ...]`` scores another folder under
``--data-root`` (colour images on their luma) and names the files after it. ``--color``
scores colour denoisers on the RGB images instead, against CBM3D (``bm3d.bm3d_rgb``, opponent
colour space), and names the files ``<set>_color.*``. ``--ensemble``
also scores every model with the x8 self-ensemble (``restore(..., ensemble=True)``) as a row
"<name> +x8"; ``--bf16`` with bf16 autocast (``restore(..., dtype=torch.bfloat16)``: AMX and
AVX-512-BF16 CPUs run its matmuls and convolutions in bf16) as a row "<name> bf16". BM3D
outputs are cached as 8-bit PNGs in ``<out>/bm3d_cache``, keyed by image, sigma, seed and a
hash of the noisy input, so a rerun does not recompute them; ``--bf16`` names the files
``<set>_bf16.*``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from common_kernels.runtime.cli import check_benchmark_setup, cpu_model
from semanir.data.degradations import add_gaussian_noise, check_sigma
from semanir.inference import load_model, restore
from semanir.io import atomic_write, list_images, read_image, to_uint8_array, write_image
from semanir.metrics import psnr, ssim

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
DEFAULT_SIGMAS = (15.0, 25.0, 50.0)
FIGURE_SIGMA = 25.0
CROP_SIDE = 128
NOISE_CONVENTION = (
    "white Gaussian noise of std sigma/255 added to the clean image in float, not clipped "
    "(DnCNN/BM3D convention); noise seeded by (seed, image index, sigma)"
)
METRIC_CONVENTION = (
    "semanir.metrics PSNR/SSIM (SSIM: 11x11 Gaussian window, sigma 1.5) on the 0-255 scale, "
    "outputs clamped and rounded to 8 bits, no border crop"
)


def default_data_root() -> Path:
    """``$SEMANIR_DATA`` if set, else ``../shared/data`` next to the repository root."""
    return Path(os.environ.get("SEMANIR_DATA", REPO_ROOT.parent / "shared" / "data"))


def set12_paths(
    data_root: Path, limit: int | None = None, folder: str = "set12", exclude: tuple[str, ...] = ()
) -> list[Path]:
    """The images under ``data_root/folder`` (Set12 by default), sorted by name.

    Args:
        data_root: folder holding ``folder``.
        limit: keep only the first ``limit`` images (None: all).
        folder: the image folder; colour images are scored on their BT.601 luma.
        exclude: file stems to leave out (images another set already holds).
    """
    paths = [p for p in list_images(Path(data_root) / folder) if p.stem not in exclude]
    if not paths:
        raise FileNotFoundError(f"no images left in {Path(data_root) / folder}")
    return paths if limit is None else paths[:limit]


def noise_generator(seed: int, index: int, sigma: float) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, image index, sigma).

    Args:
        seed: user seed (>= 0).
        index: position of the image in the sorted image list.
        sigma: noise level on the 0-255 scale (resolved to 1/1000).
    """
    words = [seed, index, round(sigma * 1000)]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def noisy_version(clean: Tensor, sigma: float, seed: int, index: int) -> Tensor:
    """Unclipped noisy copy of a (C, H, W) image (see the module docstring).

    Args:
        clean: image in [0, 1].
        sigma: noise level on the 0-255 scale.
        seed: user seed.
        index: position of the image in the sorted image list.
    """
    return add_gaussian_noise(clean, sigma, noise_generator(seed, index, sigma))


def quantize(image: Tensor) -> Tensor:
    """(C, H, W) image clamped to [0, 1] and rounded to 8-bit levels, as float32."""
    levels = torch.from_numpy(to_uint8_array(image)).float().div(255.0)  # (H, W) or (H, W, 3)
    return levels.permute(2, 0, 1) if levels.ndim == 3 else levels[None]  # (C, H, W)


def run_bm3d(noisy: Tensor, sigma: float) -> Tensor:
    """BM3D (PyPI ``bm3d``) of a (C, H, W) float image with noise std ``sigma / 255``.

    Gray images (C = 1) go through ``bm3d.bm3d``, colour ones (C = 3) through CBM3D,
    ``bm3d.bm3d_rgb`` in the opponent colour space (the package default).
    """
    import bm3d

    if noisy.shape[0] == 3:
        hwc = noisy.permute(1, 2, 0).double().numpy()  # (H, W, 3)
        denoised = bm3d.bm3d_rgb(hwc, sigma_psd=sigma / 255.0)
        return torch.from_numpy(np.asarray(denoised, dtype=np.float32)).permute(2, 0, 1)
    denoised = bm3d.bm3d(noisy[0].double().numpy(), sigma_psd=sigma / 255.0)
    return torch.from_numpy(np.asarray(denoised, dtype=np.float32)).reshape(noisy.shape)


def bm3d_cache_file(cache_dir: Path, image: Path, sigma: float, seed: int, noisy: Tensor) -> Path:
    """Cache file of one BM3D output; the noisy-input hash guards against changed inputs.

    Args:
        cache_dir: folder of the cache.
        image: the clean image file.
        sigma: noise level on the 0-255 scale.
        seed: user seed.
        noisy: the noisy input BM3D receives.
    """
    digest = hashlib.sha256(noisy.numpy().tobytes()).hexdigest()[:12]
    return cache_dir / f"{image.stem}_sigma{sigma:g}_seed{seed}_{digest}.png"


def bm3d_output(noisy: Tensor, sigma: float, cache_file: Path) -> Tensor:
    """BM3D output rounded to 8 bits, read from ``cache_file`` or computed and stored there.

    Args:
        noisy: (1, H, W) float noisy image.
        sigma: noise level on the 0-255 scale.
        cache_file: PNG holding (or receiving) the 8-bit output.
    """
    if cache_file.is_file():
        return read_image(cache_file, channels="rgb" if noisy.shape[0] == 3 else "gray")
    output = quantize(run_bm3d(noisy, sigma))
    write_image(cache_file, output)
    return output


def parse_models(specs: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` strings -> {name: folder}, names unique and not 'noisy', 'bm3d' or 'clean'."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--model takes NAME=DIR (e.g. semanir=runs/semanir), got {spec!r}")
        if name in models or name in ("noisy", "bm3d", "clean"):
            raise ValueError(f"model name {name!r} is repeated or reserved")
        models[name] = Path(folder)
    return models


def load_denoisers(folders: dict[str, Path], channels: int = 1) -> dict[str, nn.Module]:
    """Load every ``save_pretrained`` folder and check that the model denoises ``channels``.

    Args:
        folders: ``save_pretrained`` folders by name.
        channels: 1 (gray) or 3 (colour), what the images have.
    """
    kind = "gray" if channels == 1 else "colour"
    models = {}
    for name, folder in folders.items():
        model = load_model(folder)
        if model.in_channels != channels or model.upscale != 1:
            raise ValueError(
                f"{name} ({folder}) is not a {kind} denoiser ({channels} channels, scale 1)"
            )
        models[name] = model
    return models


def restore_all(
    noisy: Tensor,
    sigma: float,
    models: dict[str, nn.Module],
    bm3d_file: Path | None,
    ensemble: bool = False,
    bf16: bool = False,
) -> dict[str, Tensor]:
    """Every method's output for one (1, H, W) noisy image, keyed by method name.

    Args:
        noisy: float noisy image (unclipped).
        sigma: noise level on the 0-255 scale.
        models: loaded models by name.
        bm3d_file: BM3D cache file, or None to skip BM3D.
        ensemble: also run every model with the x8 self-ensemble ("<name> +x8").
        bf16: also run every model under bf16 autocast ("<name> bf16").
    """
    outputs = {"noisy": noisy}
    if bm3d_file is not None:
        outputs["bm3d"] = bm3d_output(noisy, sigma, bm3d_file)
    for name, model in models.items():
        outputs[name] = restore(model, noisy[None])[0]
        if ensemble:
            outputs[f"{name} +x8"] = restore(model, noisy[None], ensemble=True)[0]
        if bf16:
            outputs[f"{name} bf16"] = restore(model, noisy[None], dtype=torch.bfloat16)[0]
    return outputs


def score(output: Tensor, clean: Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of one output against the clean image."""
    return {"psnr": float(psnr(output, clean)), "ssim": float(ssim(output, clean))}


def averages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean PSNR and SSIM per (sigma, method) over the images of ``rows``."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["sigma"], row["method"]), []).append(row)
    return [
        {
            "sigma": sigma,
            "method": method,
            "psnr": float(np.mean([r["psnr"] for r in group])),
            "ssim": float(np.mean([r["ssim"] for r in group])),
            "images": len(group),
        }
        for (sigma, method), group in groups.items()
    ]


def figure_sigma(sigmas: list[float]) -> float:
    """The sigma of the crop figure: 25 if evaluated, else the middle of ``sigmas``."""
    return FIGURE_SIGMA if FIGURE_SIGMA in sigmas else sigmas[len(sigmas) // 2]


def evaluate(
    paths: list[Path],
    sigmas: list[float],
    seed: int,
    models: dict[str, nn.Module],
    bm3d_cache: Path | None,
    ensemble: bool = False,
    channels: str = "gray",
    bf16: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Score every method on every (sigma, image).

    Args:
        paths: clean images (read as ``channels``).
        sigmas: noise levels on the 0-255 scale.
        seed: noise seed.
        models: loaded models by name.
        bm3d_cache: BM3D cache folder, or None to skip BM3D.
        ensemble: also score every model with the x8 self-ensemble.
        channels: "gray" (colour images on their BT.601 luma) or "rgb".
        bf16: also score every model under bf16 autocast.

    Returns:
        Per-image rows (sigma, image, method, psnr, ssim) and the outputs for the figure (the
        first image at :func:`figure_sigma`), including the clean image.
    """
    shown = figure_sigma(sigmas)
    rows: list[dict[str, Any]] = []
    figure: dict[str, Tensor] = {}
    jobs = [(sigma, index, path) for sigma in sigmas for index, path in enumerate(paths)]
    for sigma, index, path in tqdm(jobs, desc=paths[0].parent.name, unit="image", disable=None):
        clean = read_image(path, channels=channels)
        noisy = noisy_version(clean, sigma, seed, index)
        cache = (
            None if bm3d_cache is None else bm3d_cache_file(bm3d_cache, path, sigma, seed, noisy)
        )
        outputs = restore_all(noisy, sigma, models, cache, ensemble, bf16)
        for method, output in outputs.items():
            rows.append(
                {"sigma": sigma, "image": path.name, "method": method, **score(output, clean)}
            )
        if sigma == shown and index == 0:
            figure = {**outputs, "clean": clean}
    return rows, figure


def environment() -> dict[str, Any]:
    """torch version, CPU model, torch threads, Python and (if installed) bm3d version."""
    try:
        bm3d_version = metadata.version("bm3d")
    except metadata.PackageNotFoundError:
        bm3d_version = None
    return {
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "bm3d": bm3d_version,
    }


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_write(path, make_parents=True) as temp_path:
        temp_path.write_text(text, encoding="utf-8")


def cell(row: dict[str, Any]) -> str:
    """'PSNR / SSIM' for a table cell."""
    return f"{row['psnr']:.2f} / {row['ssim']:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """The average table and one per-image table per sigma, from a report dict."""
    methods = list(dict.fromkeys(r["method"] for r in report["averages"]))
    sigmas = report["sigmas"]
    colour = report.get("channels") == "rgb"
    mean = {(r["sigma"], r["method"]): r for r in report["averages"]}
    lines = [
        f"### {report['set']} average over {len(report['images'])} images (PSNR dB / SSIM)",
        "",
        f"Noise: {report['noise']}; seed {report['seed']}. Metrics: {report['metrics']}."
        + (" Colour images, RGB; bm3d is CBM3D (bm3d.bm3d_rgb)." if colour else ""),
        "",
        "| method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
        "|---|" + "---:|" * len(sigmas),
    ]
    lines += [f"| {m} | " + " | ".join(cell(mean[s, m]) for s in sigmas) + " |" for m in methods]
    per_image = {(r["sigma"], r["image"], r["method"]): r for r in report["rows"]}
    for sigma in sigmas:
        lines += ["", f"### {report['set']} per image, sigma {sigma:g} (PSNR dB / SSIM)", ""]
        lines += ["| image | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for image in report["images"]:
            cells = " | ".join(cell(per_image[sigma, image, m]) for m in methods)
            lines.append(f"| {image} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_crops(figure: dict[str, Tensor], sigma: float, path: Path) -> None:
    """One row of centre crops (noisy, BM3D, models, clean) with PSNRs, saved atomically.

    Args:
        figure: outputs by method name, plus "clean".
        sigma: noise level of the outputs (for the title).
        path: PNG file to write.
    """
    from common_kernels.runtime import bench  # not `figure`: the crops' dict has that name

    clean = figure["clean"]
    names = [name for name in figure if name != "clean"] + ["clean"]
    side = min(CROP_SIDE, *clean.shape[-2:])
    top, left = (clean.shape[-2] - side) // 2, (clean.shape[-1] - side) // 2
    with bench.figure(
        path,
        1,
        len(names),
        figsize=(2.6 * len(names), 3.0),
        squeeze=False,
        savefig={"format": "png", "dpi": 110},
    ) as (fig, axes):
        for ax, name in zip(axes[0], names, strict=True):
            crop = quantize(figure[name])[:, top : top + side, left : left + side]  # (C, h, w)
            title = (
                name if name == "clean" else f"{name}\n{float(psnr(figure[name], clean)):.2f} dB"
            )
            image = crop.permute(1, 2, 0).squeeze(-1)  # (h, w, 3) or (h, w)
            ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{side}x{side} centre crop of the first image, sigma {sigma:g}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``argv``: None reads sys.argv), validated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=DIR", help="save_pretrained folder"
    )
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    parser.add_argument("--data-root", type=Path, default=default_data_root(), help="holds set12/")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (>= 0)")
    parser.add_argument("--models-only", action="store_true", help="skip BM3D")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument(
        "--set", default="set12", help="image folder under --data-root (colour: scored on luma)"
    )
    parser.add_argument(
        "--exclude", nargs="+", default=[], metavar="STEM", help="image names to leave out"
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="also score each model's x8 self-ensemble"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also score each model under bf16 autocast"
    )
    parser.add_argument(
        "--color",
        action="store_true",
        help="colour denoisers on the RGB images, against CBM3D (files <set>_color.*)",
    )
    args = parser.parse_args(argv)
    for sigma in args.sigmas:
        check_sigma(sigma)
    if args.seed < 0 or (args.limit is not None and args.limit < 1):
        parser.error("--seed must be >= 0 and --limit >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Evaluate, write JSON, markdown and the crop figure, print the tables."""
    args = parse_args(argv)
    modules = ("matplotlib",) if args.models_only else ("bm3d", "matplotlib")
    check_benchmark_setup("eval_set12", "semanir", modules=modules, folders={"--out": args.out})
    paths = set12_paths(args.data_root, args.limit, args.set, tuple(args.exclude))
    folders = parse_models(args.model)
    channels = "rgb" if args.color else "gray"
    models = load_denoisers(folders, 3 if args.color else 1)
    bm3d_cache = None if args.models_only else args.out / "bm3d_cache"
    rows, figure = evaluate(
        paths, args.sigmas, args.seed, models, bm3d_cache, args.ensemble, channels, args.bf16
    )
    report = {
        "environment": environment(),
        "noise": NOISE_CONVENTION,
        "metrics": METRIC_CONVENTION,
        "seed": args.seed,
        "sigmas": args.sigmas,
        "data": str(paths[0].parent),
        "set": "Set12" if args.set == "set12" else args.set,
        "channels": channels,
        "images": [p.name for p in paths],
        "models": {name: str(folder) for name, folder in folders.items()},
        "bm3d": bm3d_cache is not None,
        "ensemble": args.ensemble,
        "bf16": args.bf16,
        "averages": averages(rows),
        "rows": rows,
    }
    stem = args.set + ("_color" if args.color else "") + ("_bf16" if args.bf16 else "")
    stem = stem if args.limit is None else f"{stem}_first{args.limit}"
    tables = markdown(report)
    write_text(args.out / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    write_text(args.out / f"{stem}.md", tables)
    plot_crops(figure, figure_sigma(args.sigmas), args.out / f"{stem}_crops.png")
    print(tables)
    print(f"wrote {args.out / stem}.json, .md, _crops.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
