"""One denoiser three ways on one real image: ``semanir.restore``, the ``ImageModelDescriptor``
that spandrel loads from the model's safetensors file (as chaiNNer and ComfyUI load it), and the
exported ONNX file in ONNX Runtime's CPU provider. The figures of the README's spandrel and ONNX
sections.

    python packages/semanir/benchmarks/runtimes.py [--model semanir_tiny_denoise_gray] \
        [--image ../shared/data/set12/05.png] [--sigma 25] [--seed 0] [--threads 2] [--out DIR]

The clean image gets white Gaussian noise of std sigma/255, not clipped (the convention of
``eval_set12.py``), drawn from a generator seeded with ``--seed``. Writes
``<out>/runtimes.json`` (per runtime: PSNR against the clean image, the largest and mean
|difference| from ``restore``'s output, the share of pixels more than 1e-4 and more than one
8-bit level apart), ``runtimes.md`` (the table), ``spandrel.png`` and ``onnx.png`` (noisy
input, ``restore``'s output, the runtime's output, their |difference| in 8-bit levels). The
ONNX file is exported into a temporary folder
(a bundled model: about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import semanir
from common_kernels.runtime.bench import machine, pyplot, save_figure, write_report
from common_kernels.runtime.cli import check_benchmark_setup
from semanir.data.degradations import add_gaussian_noise
from semanir.export import export_onnx, onnx_session, run_onnx
from semanir.inference import load_model, model_folder
from semanir.io import read_image
from semanir.metrics import psnr

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2].parent / "shared" / "data"
LEVEL = 1 / 255  # one 8-bit level
# the optional-dependency groups of semanir that this script needs, with their modules
EXTRAS = {
    "bench": ("matplotlib", "psutil"),
    "spandrel": ("spandrel",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}
RUNTIMES = {"spandrel": "spandrel's ImageModelDescriptor", "onnx": "ONNX Runtime (CPU)"}


def spandrel_runner(folder: Path) -> Callable[[Tensor], Tensor]:
    """The descriptor spandrel loads from ``folder/model.safetensors`` (semanir registered)."""
    import spandrel

    semanir.register_spandrel()
    return spandrel.ModelLoader().load_from_file(folder / "model.safetensors")


def onnx_runner(model: torch.nn.Module, folder: Path, threads: int) -> Callable[[Tensor], Tensor]:
    """``model`` exported to ``folder/model.onnx``, run by an ONNX Runtime CPU session."""
    session = onnx_session(export_onnx(model, folder / "model.onnx"), threads=threads)
    return lambda image: run_onnx(session, image)


def restored(run: Callable[[Tensor], Tensor], image: Tensor) -> Tensor:
    """``run(image)`` without autograd, as float32 clamped to [0, 1]."""
    with torch.inference_mode():
        return run(image).float().clamp(0, 1)


def compare(out: Tensor, reference: Tensor, clean: Tensor) -> dict[str, float]:
    """PSNR of ``out`` against ``clean`` and its distance from ``reference`` (restore's)."""
    difference = (out - reference).abs()
    return {
        "psnr_db": float(psnr(out, clean)),
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
        "share_above_1e-4": float((difference > 1e-4).float().mean()),
        "share_above_one_level": float((difference > LEVEL).float().mean()),
    }


def draw(
    path: Path, title: str, panels: dict[str, Tensor], difference: Tensor, result: dict
) -> Path:
    """Noisy input, restore's output, the runtime's output, and |difference| in 8-bit levels."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    for axis, (label, image) in zip(axes, panels.items(), strict=False):
        shown = image[0].permute(1, 2, 0).clamp(0, 1).numpy()  # (H, W, C)
        axis.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
        axis.set_title(label, fontsize=9)
    levels = (difference[0].amax(0) * 255).numpy()  # (H, W) largest channel difference
    heat = axes[3].imshow(levels, cmap="magma", vmin=0, vmax=max(1.0, float(levels.max())))
    axes[3].set_title(
        f"|difference| x 255: max {result['max_abs_difference']:.1e},\n"
        f"{100 * result['share_above_1e-4']:.3f}% of pixels > 1e-4",
        fontsize=9,
    )
    figure.colorbar(heat, ax=axes[3], shrink=0.8, label="8-bit levels")
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def table(report: dict[str, Any]) -> str:
    rows = [
        f"{report['model']} on {report['image']} (sigma {report['sigma']:g}), "
        f"restore: {report['restore']['psnr_db']:.2f} dB",
        "",
        "| runtime | PSNR dB | max abs difference | > 1e-4 | > 1 level |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in RUNTIMES.items():
        r = report[name]
        rows.append(
            f"| {label} | {r['psnr_db']:.2f} | {r['max_abs_difference']:.1e} | "
            f"{100 * r['share_above_1e-4']:.3f}% | {100 * r['share_above_one_level']:.3f}% |"
        )
    return "\n".join(rows) + "\n"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Restore the noisy image with each runtime, write the figures, return the report."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if model.upscale != 1:
        raise SystemExit(f"runtimes.py: error: --model: must be a denoiser, got x{model.upscale}")
    channels = "gray" if model.in_channels == 1 else "rgb"
    clean = read_image(args.image, channels=channels)[None]  # (1, C, H, W)
    generator = torch.Generator().manual_seed(args.seed)
    noisy = add_gaussian_noise(clean, args.sigma, generator)
    reference = restored(lambda x: semanir.restore(model, x, tile=None), noisy)
    report = {
        "model": args.model,
        "image": args.image.name,
        "sigma": args.sigma,
        "seed": args.seed,
        "noisy_psnr_db": float(psnr(noisy.clamp(0, 1), clean)),
        "restore": compare(reference, reference, clean),
        "environment": machine("cpu", "fp32", args.threads, ("spandrel", "onnxruntime", "onnx")),
    }
    with tempfile.TemporaryDirectory() as temp:
        runners = {
            "spandrel": spandrel_runner(model_folder(args.model)),
            "onnx": onnx_runner(model, Path(temp), args.threads),
        }
        for name, run in runners.items():
            out = restored(run, noisy)
            report[name] = compare(out, reference, clean)
            panels = {
                f"noisy, {report['noisy_psnr_db']:.2f} dB": noisy,
                f"semanir.restore, {report['restore']['psnr_db']:.2f} dB": reference,
                f"{RUNTIMES[name]}, {report[name]['psnr_db']:.2f} dB": out,
            }
            title = f"{args.model} on {args.image.name}, sigma {args.sigma:g}"
            draw(args.out / f"{name}.png", title, panels, (out - reference).abs(), report[name])
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="semanir_tiny_denoise_gray",
                        help="a bundled denoiser's name or a save_pretrained folder")  # fmt: skip
    parser.add_argument("--image", type=Path, default=DATA / "set12" / "05.png")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise std on the 0-255 scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        parser.error(f"--image: no such file: {args.image}")
    if args.threads < 1:
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    for extra, modules in EXTRAS.items():
        check_benchmark_setup("runtimes.py", "semanir", modules=modules, extra=extra)
    check_benchmark_setup("runtimes.py", "semanir", folders={"--out": args.out})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = measure(args)
    write_report(args.out / "runtimes", report, table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
