"""pixelsmith benchmarks with the tiny random SDXL-shaped model (``pixelsmith.tiny``).

Every configuration runs in a fresh subprocess (peak memory = its ``ru_maxrss``):

* ``spec``: the spec's example, a 256x192 latent (2048x1536 px), 6 steps, patch 128: UNet calls
  per step of ``faithful=True`` (the official sampler: random centres drawn by a permutation, one
  patch per call) against the default (minimum grid, disjoint patches batched), measured by
  hooks on the UNet; plus the official placement's totals over 10 seeds (planner only).
* ``sampler``: Pixelsmith sampling (guidance, fusion, chess mask, revert, bands) at 2048^2,
  4096^2 and 8192^2 px for the official placement (baseline) and the default grid: UNet calls and
  patches per step, seconds per step (median/min/max over the steps), speedup.
* ``stage``: one stage end to end (decode the previous latent at half size, Lanczos, tiled
  encode, 1 step, tiled decode streamed to a BigTIFF): peak RSS per resolution next to the bytes
  of the full latent maps (latent, snapshot, guidance, noise, step map).
* ``--gigapixel``: ``generate_cascade`` 1024 -> 4096 -> 31616 px (or ``--giga-size``) to a
  BigTIFF: time per phase and peak RSS. Takes tens of minutes on one core.
* ``--device cuda`` (or ``--cascade`` on the CPU): ``generate_cascade`` 1024 -> 2048 -> 4096 px
  (``--sizes``) with the official placement (``faithful=True``) against the default grid, each
  in a fresh subprocess: one warm-up cascade over the first two sizes, then ``--repeats`` timed
  cascades (median, min, max of the total and of every stage, median seconds per step, UNet
  calls per stage) and the peak ``torch.cuda.max_memory_allocated()`` over them. On CUDA the
  model has SDXL's UNet and VAE architectures with random weights (built from the configs below,
  no download) and small text encoders of SDXL's widths, in ``--dtype`` (default fp16); on the
  CPU the tiny model. Times are taken after ``torch.cuda.synchronize()``.

Results: ``results/pixelsmith_bench{,_quick}.{json,md,png}``,
``results/pixelsmith_gigapixel.{json,md}`` and
``results/pixelsmith_cascade{,_quick}{,_cuda}.{json,md}``.

The code: this file (the command line, the worker processes and the cascade comparison),
``models.py`` (the tiny and SDXL-sized random pipelines), ``measures.py`` (what a worker
measures) and ``report.py`` (the markdown tables and the plot).

    python benchmarks/run.py                # 2048..8192 sampler, stages up to 16384 px
    python benchmarks/run.py --quick        # 2048 and 4096 only
    OMP_NUM_THREADS=1 python benchmarks/run.py --gigapixel --steps 2
    python benchmarks/run.py --device cuda  # SDXL-sized cascade 1024 -> 2048 -> 4096 on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common_kernels.runtime.bench import (
    DTYPES,
    default_dtype,
    load_sibling,
    machine,
    peak_rss_mib,
    require_cuda,
    write_report,
)
from common_kernels.runtime.files import write_text

HERE = Path(__file__).resolve().parent
CUDA_SIZES, CUDA_QUICK_SIZES = [1024, 2048, 4096], [1024, 2048]
MODELS = load_sibling(HERE, "models", "pixelsmith_bench")
MEASURES = load_sibling(HERE, "measures", "pixelsmith_bench")
REPORT = load_sibling(HERE, "report", "pixelsmith_bench")


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "cascade":
        pipe = MODELS.cascade_pipeline(args.model, args.device, args.dtype)
        with torch.no_grad():
            result = MEASURES.cascade_run(
                pipe, args.sizes, MEASURES.cascade_config(args, args.method == "official"),
                steps=args.steps, slider=args.slider, repeats=args.repeats, warmup=args.warmup,
                device=args.device,
            )  # fmt: skip
        result["peak_rss_mib"] = peak_rss_mib()
        result["threads"] = args.threads
        write_text(args.out, json.dumps(result), make_parents=True)
        return
    pipe = MODELS.tiny_pipeline()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.worker == "sampler":
            latent = (args.size // 8, args.size // 8)
            result = MEASURES.sample_run(
                pipe,
                latent,
                faithful=args.method == "official",
                steps=args.steps,
                slider=args.steps,
                patch_size=args.patch_size,
            )
        elif args.worker == "spec":
            result = MEASURES.sample_run(
                pipe,
                (args.size // 8, args.size * 3 // 32),
                faithful=args.method == "official",
                steps=6,
                slider=6,
                patch_size=args.patch_size,
            )
        elif args.worker == "stage":
            result = MEASURES.stage_run(
                pipe,
                args.size,
                patch_size=args.patch_size,
                vae_tile=args.vae_tile,
                workdir=Path(tmp),
            )
        else:
            result = MEASURES.gigapixel_run(pipe, args.size, args.steps, Path(tmp))
    result["peak_rss_mib"] = peak_rss_mib()
    result["threads"] = args.threads
    write_text(args.out, json.dumps(result), make_parents=True)


def run_worker(kind: str, args: argparse.Namespace, tmp: Path, **options) -> dict:
    """Run ``--worker kind`` with ``options`` (lists become several values) in a subprocess."""
    stem = "_".join(
        "-".join(map(str, v)) if isinstance(v, list) else str(v) for v in options.values()
    )
    out = tmp / f"{kind}_{stem}.json"
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--patch-size",
        str(args.patch_size),
        "--vae-tile",
        str(args.vae_tile),
    ]
    if args.workdir:
        command += ["--workdir", str(args.workdir)]
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        command += [f"--{key.replace('_', '-')}", *map(str, values)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def environment(args: argparse.Namespace) -> dict:
    """Where the benchmark runs (``--device``, ``--dtype``, ``--threads``), diffusers' version
    included."""
    return machine(args.device, args.dtype, args.threads, ("diffusers",))


def cascade_comparison(args: argparse.Namespace, env: dict) -> None:
    """Official placement vs the default grid over the cascade, one subprocess each."""
    with tempfile.TemporaryDirectory() as tmp:
        official, grid = (
            run_worker(
                "cascade", args, Path(tmp), method=method, sizes=args.sizes, steps=args.steps,
                slider=args.slider, repeats=args.repeats, warmup=args.warmup,
                device=args.device, dtype=args.dtype, model=args.model,
            )
            for method in ("official", "grid")
        )  # fmt: skip
    grid["speedup"] = official["seconds_median"] / grid["seconds_median"]
    for ours, base in zip(grid["stages"], official["stages"], strict=True):
        ours["speedup"] = base["seconds_median"] / ours["seconds_median"]
    env["load_average"] = os.getloadavg()
    report = {
        "environment": env,
        "quick": args.quick,
        "model": args.model,
        "patch_size": args.patch_size,
        "vae_tile": args.vae_tile,
        "rows": [official, grid],
    }
    name = "pixelsmith_cascade" + ("_quick" if args.quick else "")
    name += "_cuda" if args.device == "cuda" else ""
    write_report(args.results / name, report, REPORT.cascade_markdown(report))


def check_cascade_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill the cascade comparison's defaults and refuse bad values, naming the flag."""
    from pixelsmith.config import validate_cascade

    args.dtype = args.dtype or default_dtype(args.device)
    args.model = args.model or ("sdxl" if args.device == "cuda" else "tiny")
    args.sizes = args.sizes or (CUDA_QUICK_SIZES if args.quick else CUDA_SIZES)
    args.steps = 10 if args.steps is None else args.steps
    args.repeats = 3 if args.repeats is None else args.repeats
    args.warmup = 1 if args.warmup is None else args.warmup
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    args.slider = max(1, round(0.6 * args.steps)) if args.slider is None else args.slider
    if not 1 <= args.slider <= args.steps:
        parser.error(f"--slider must be in [1, --steps] = [1, {args.steps}], got {args.slider}")
    if len(args.sizes) < 2:
        parser.error(f"--sizes: the cascade needs at least two sizes (px), got {args.sizes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        validate_cascade(
            args.sizes, [args.slider] * (len(args.sizes) - 1), args.steps,
            vae_scale_factor=8, patch_size=args.patch_size,
        )  # fmt: skip
    except (TypeError, ValueError) as error:
        parser.error(f"--sizes/--patch-size: {error}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (the README's examples are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048 and 4096 px only")
    parser.add_argument("--gigapixel", action="store_true", help="only the gigapixel cascade")
    parser.add_argument("--giga-size", type=int, default=31616, help="gigapixel side in px")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps (default 3; gigapixel 2; cascade 10)"
    )
    parser.add_argument("--patch-size", type=int, default=128, help="latent px")
    parser.add_argument("--vae-tile", type=int, default=128, help="latent px")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None,
        help="sampler sizes (px); with --device cuda / --cascade the cascade's sizes (default "
        "1024 2048 4096; --quick 1024 2048)",
    )  # fmt: skip
    parser.add_argument("--stage-sizes", type=int, nargs="+", default=None, help="stage sizes (px)")
    parser.add_argument("--spec-size", type=int, default=2048, help="spec example height (px)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--workdir", type=Path, default=None, help="temporary files (BigTIFFs)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cuda: the cascade comparison (official placement vs grid) on the GPU",
    )  # fmt: skip
    parser.add_argument(
        "--cascade", action="store_true",
        help="the cascade comparison on --device cpu (default model: the tiny one)",
    )  # fmt: skip
    cascade = parser.add_argument_group("cascade comparison (--device cuda or --cascade)")
    cascade.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default fp16 on cuda, fp32 on cpu"
    )
    cascade.add_argument(
        "--model", choices=("sdxl", "tiny"), default=None,
        help="sdxl: SDXL-sized random weights (default on cuda); tiny: pixelsmith.tiny",
    )  # fmt: skip
    cascade.add_argument("--slider", type=int, default=None, help="default 3/5 of --steps")
    cascade.add_argument("--repeats", type=int, default=None, help="timed cascades (default 3)")
    cascade.add_argument("--warmup", type=int, default=None, help="warm-up cascades (default 1)")
    parser.add_argument(
        "--worker", choices=("sampler", "spec", "stage", "gigapixel", "cascade"),
        help=argparse.SUPPRESS,
    )  # fmt: skip
    parser.add_argument("--method", choices=("official", "grid"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    from common_kernels.runtime.cli import check_benchmark_setup

    plots = not (args.gigapixel or args.cascade or args.device == "cuda")  # the others: JSON, md
    modules = ("matplotlib", "psutil") if plots else ("psutil",)
    folders = {"--results": args.results, "--workdir": args.workdir}
    check_benchmark_setup(parser.prog, "pixelsmith", modules=modules, folders=folders)

    if args.device == "cuda" or args.cascade:
        if args.gigapixel:
            parser.error("--gigapixel runs the tiny model on the CPU: not with --device cuda or "
                         "--cascade")  # fmt: skip
        require_cuda(parser, args.device)
        check_cascade_args(args, parser)
        cascade_comparison(args, environment(args))
        return
    for flag in ("dtype", "model", "slider", "repeats", "warmup"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} applies to the cascade comparison only (--device cuda or "
                         "--cascade)")  # fmt: skip
    args.dtype = "fp32"
    from pixelsmith.patches import minimum_patches

    env = environment(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.gigapixel:
            steps = args.steps or 2
            result = run_worker("gigapixel", args, tmp, size=args.giga_size, steps=steps)
            result["environment"] = env
            stem = args.results / "pixelsmith_gigapixel"
            write_report(stem, result, REPORT.gigapixel_markdown(result, env))
            return
        steps = args.steps or 3
        sizes = args.sizes or ([2048, 4096] if args.quick else [2048, 4096, 8192])
        stage_sizes = args.stage_sizes or (
            [2048, 4096] if args.quick else [2048, 4096, 8192, 16384]
        )
        spec_rows = [
            run_worker("spec", args, tmp, method=m, size=args.spec_size)
            for m in ("official", "grid")
        ]
        spec_latent = (args.spec_size // 8, args.spec_size * 3 // 32)
        spec = {
            "latent": list(spec_latent),
            "rows": spec_rows,
            "official_totals_10_seeds": MEASURES.official_totals(
                spec_latent, 6, args.patch_size, range(10)
            ),
        }
        sampler = []
        for size in sizes:
            base = run_worker("sampler", args, tmp, method="official", size=size, steps=steps)
            ours = run_worker("sampler", args, tmp, method="grid", size=size, steps=steps)
            ours["speedup"] = base["seconds_per_step_median"] / ours["seconds_per_step_median"]
            for row in (base, ours):
                row["minimum_patches"] = minimum_patches(size // 8, size // 8, args.patch_size)
            sampler += [base, ours]
        stage = [run_worker("stage", args, tmp, size=size) for size in stage_sizes]
    env["load_average"] = os.getloadavg()
    report = {
        "environment": env,
        "quick": args.quick,
        "steps": steps,
        "patch_size": args.patch_size,
        "spec": spec,
        "sampler": sampler,
        "stage": stage,
    }
    name = "pixelsmith_bench_quick" if args.quick else "pixelsmith_bench"
    write_report(args.results / name, report, REPORT.markdown(report))
    REPORT.plot(report, args.results / f"{name}.png")


if __name__ == "__main__":
    main()
