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

Results: ``results/pixelsmith_bench{,_quick}.{json,md,png}`` and
``results/pixelsmith_gigapixel.{json,md}``.

    python benchmarks/run.py                # 2048..8192 sampler, stages up to 16384 px
    python benchmarks/run.py --quick        # 2048 and 4096 only
    OMP_NUM_THREADS=1 python benchmarks/run.py --gigapixel --steps 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "a lighthouse on a cliff at sunset"
LATENT_MAPS = 4 * 16 + 2  # bytes per latent px: latent, snapshot, guidance, noise (4 ch fp32), map


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_pipeline():
    """The tiny random SDXL-shaped pipeline with SDXL's DDIM scheduler (seed 0)."""
    from pixelsmith import PixelsmithPipeline
    from pixelsmith.pipelines.pixelsmith import ddim_from_config
    from pixelsmith.tiny import tiny_components

    components = tiny_components(seed=0)
    components["scheduler"] = ddim_from_config(components["scheduler"].config)
    pipe = PixelsmithPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_unet(pipe) -> dict:
    """Hooks counting UNet calls, samples and seconds into the returned dict."""
    counter = {"calls": 0, "samples": 0, "seconds": 0.0}
    started = []

    def before(module, args):
        started.append(time.perf_counter())

    def after(module, args, output):
        counter["calls"] += 1
        counter["samples"] += args[0].shape[0]
        counter["seconds"] += time.perf_counter() - started.pop()

    pipe.unet.register_forward_pre_hook(before)
    pipe.unet.register_forward_hook(after)
    return counter


def sample_run(
    pipe,
    latent: tuple[int, int],
    *,
    faithful: bool,
    steps: int,
    slider: int,
    patch_size: int,
    seed: int = 0,
) -> dict:
    """Pixelsmith sampling of a random guidance latent; per-step calls and times."""
    import torch

    from pixelsmith import PixelsmithConfig

    config = PixelsmithConfig(
        patch_size=patch_size, band=min(10, patch_size // 4), faithful=faithful
    )
    gen = torch.Generator().manual_seed(seed)
    guidance = torch.randn(1, 4, *latent, generator=gen)
    text = pipe.encode_text(PROMPT, guidance_scale=7.5)
    latents, noise = pipe.prepare_stage(
        guidance, num_inference_steps=steps, config=config, generator=gen
    )
    counter = count_unet(pipe)
    calls, times = [], []
    marks = [time.perf_counter()]

    def on_step(step, current, plan):
        marks.append(time.perf_counter())
        calls.append(counter["calls"] - sum(calls))

    stats = pipe.sample_stage(
        text,
        guidance,
        noise,
        latents,
        slider=slider,
        num_inference_steps=steps,
        config=config,
        generator=gen,
        on_step=on_step,
        progress=False,
    )
    times = [b - a for a, b in itertools.pairwise(marks)]
    return {
        "latent": list(latent),
        "method": "official" if faithful else "grid",
        "steps": steps,
        "unet_calls_per_step": calls,
        "patches_per_step": stats.patches_per_step,
        "unet_samples": counter["samples"],
        "unet_seconds": counter["seconds"],
        "step_seconds": times,
        "seconds_per_step_median": statistics.median(times),
        "seconds_per_step_min": min(times),
        "seconds_per_step_max": max(times),
    }


def official_totals(
    latent: tuple[int, int], steps: int, patch_size: int, seeds: range
) -> list[int]:
    """Patches (= UNet calls) of the official placement over ``steps`` steps, per seed."""
    import torch

    from pixelsmith.patches import RandomPlanner

    totals = []
    for seed in seeds:
        planner = RandomPlanner(*latent, patch_size, permutation_draw=True, always_draw_rolls=True)
        gen = torch.Generator().manual_seed(seed)
        totals.append(sum(len(planner.plan(n, chess=True, generator=gen)) for n in range(steps)))
    return totals


def stage_run(pipe, size: int, *, patch_size: int, vae_tile: int, workdir: Path) -> dict:
    """One stage end to end from a half-size latent to a BigTIFF; times and sizes."""
    import torch

    from pixelsmith import PixelsmithConfig
    from pixelsmith.io import write_tiff

    config = PixelsmithConfig(
        patch_size=patch_size,
        band=min(10, patch_size // 4),
        vae_tile=vae_tile,
        vae_overlap=vae_tile // 8,
    )
    factor = pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    previous = torch.randn(1, 4, size // (2 * factor), size // (2 * factor), generator=gen)
    text = pipe.encode_text(PROMPT, guidance_scale=7.5)
    start = time.perf_counter()
    source = pipe.guidance_source(
        previous, (size, size), config=config, workdir=workdir, progress=False
    )
    guidance = pipe.encode_guidance(source, config=config, generator=gen, progress=False)
    del source  # as in generate_cascade: the previous image is dropped once encoded
    encoded = time.perf_counter()
    latents, noise = pipe.prepare_stage(
        guidance, num_inference_steps=1, config=config, generator=gen
    )
    pipe.sample_stage(
        text,
        guidance,
        noise,
        latents,
        slider=1,
        num_inference_steps=1,
        config=config,
        generator=gen,
        progress=False,
    )
    sampled = time.perf_counter()
    path = write_tiff(
        pipe.decoded_rows(latents, config=config, progress=False), workdir / "stage.tif", size, size
    )
    done = time.perf_counter()
    latent_px = (size // factor) ** 2
    return {
        "size": size,
        "latent_maps_mib": latent_px * LATENT_MAPS / 2**20,
        "output_mib": path.stat().st_size / 2**20,
        "encode_seconds": encoded - start,
        "sample_seconds": sampled - encoded,
        "decode_seconds": done - sampled,
    }


def gigapixel_run(pipe, size: int, steps: int, workdir: Path) -> dict:
    """generate_cascade 1024 -> 4096 -> size to a BigTIFF, timing each phase."""
    import tifffile

    from pixelsmith import PixelsmithConfig, generate_cascade

    phases: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
            return result

        return wrapper

    def timed_rows(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            for block in function(*args, **kwargs):
                phases["decode+write"] = (
                    phases.get("decode+write", 0.0) + time.perf_counter() - start
                )
                yield block
                start = time.perf_counter()
            phases["decode+write"] = phases.get("decode+write", 0.0) + time.perf_counter() - start

        return wrapper

    pipe.generate_base = timed("base", pipe.generate_base)
    pipe.guidance_source = timed("decode previous", pipe.guidance_source)
    pipe.encode_guidance = timed("lanczos+encode", pipe.encode_guidance)
    pipe.sample_stage = timed("sample", pipe.sample_stage)
    pipe.decoded_rows = timed_rows(pipe.decoded_rows)
    counter = count_unet(pipe)
    sizes = [1024, 4096, size]
    start = time.perf_counter()
    path = generate_cascade(
        pipe,
        PROMPT,
        sizes,
        [steps, steps],
        num_inference_steps=steps,
        seed=0,
        output=workdir / "gigapixel.tif",
        config=PixelsmithConfig(),
        progress=True,
    )
    total = time.perf_counter() - start
    with tifffile.TiffFile(path) as tif:  # read back the first tile only
        page = tif.pages[0]
        shape, bigtiff = list(page.shape), tif.is_bigtiff
        tif.filehandle.seek(page.dataoffsets[0])
        first_tile = page.decode(tif.filehandle.read(page.databytecounts[0]), 0)[0]
    return {
        "sizes": sizes,
        "steps": steps,
        "seconds_total": total,
        "phase_seconds": phases,
        "unet_calls": counter["calls"],
        "tiff_shape": shape,
        "bigtiff": bigtiff,
        "tiff_gib": path.stat().st_size / 2**30,
        "first_tile_mean": float(first_tile.mean()),
        "latent_maps_gib": (size // 8) ** 2 * LATENT_MAPS / 2**30,
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    pipe = tiny_pipeline()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.worker == "sampler":
            latent = (args.size // 8, args.size // 8)
            result = sample_run(
                pipe,
                latent,
                faithful=args.method == "official",
                steps=args.steps,
                slider=args.steps,
                patch_size=args.patch_size,
            )
        elif args.worker == "spec":
            result = sample_run(
                pipe,
                (args.size // 8, args.size * 3 // 32),
                faithful=args.method == "official",
                steps=6,
                slider=6,
                patch_size=args.patch_size,
            )
        elif args.worker == "stage":
            result = stage_run(
                pipe,
                args.size,
                patch_size=args.patch_size,
                vae_tile=args.vae_tile,
                workdir=Path(tmp),
            )
        else:
            result = gigapixel_run(pipe, args.size, args.steps, Path(tmp))
    result["peak_rss_mib"] = peak_rss_mib()
    result["threads"] = args.threads
    atomic_write_text(args.out, json.dumps(result))


def run_worker(kind: str, args: argparse.Namespace, tmp: Path, **options) -> dict:
    out = tmp / f"{kind}_{'_'.join(str(v) for v in options.values())}.json"
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
        command += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def environment(args: argparse.Namespace) -> dict:
    import diffusers
    import psutil
    import torch

    return {
        "threads": args.threads,
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Tiny random SDXL-shaped model (pixelsmith.tiny), patch {report['patch_size']} latent px, "
        f"{env['threads']} torch thread(s), {env['cpu']} ({env['physical_cores']} cores, load "
        f"average {env['load_average'][0]:.1f} at the end), torch {env['torch']}, diffusers "
        f"{env['diffusers']}.",
        "",
        "**Spec example** (256x192 latent = 2048x1536 px, 6 steps; UNet calls per step):",
        "",
        "| mode | UNet calls per step | total calls | patches | official placement over 10 seeds |",
        "|---|---|---|---|---|",
    ]
    totals = report["spec"]["official_totals_10_seeds"]
    for row in report["spec"]["rows"]:
        seeds = (
            f"{min(totals)}-{max(totals)} (mean {statistics.mean(totals):.1f})"
            if row["method"] == "official"
            else "-"
        )
        name = "faithful (official)" if row["method"] == "official" else "default (grid)"
        lines.append(
            f"| {name} | {', '.join(map(str, row['unet_calls_per_step']))} | "
            f"{sum(row['unet_calls_per_step'])} | {sum(row['patches_per_step'])} | {seeds} |"
        )
    lines += [
        "",
        f"**Sampling** ({report['steps']} steps, slider {report['steps']}; seconds per step: "
        "median (min-max); speedup = official / grid median):",
        "",
        "| size (px) | latent | method | UNet calls/step | patches/step | minimum | s/step | "
        "UNet s | peak RSS MiB | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["sampler"]:
        size = row["latent"][0] * 8
        minimum = row["minimum_patches"]
        speedup = "1 (baseline)" if row["method"] == "official" else f"{row['speedup']:.2f}x"
        lines.append(
            f"| {size} | {row['latent'][0]}x{row['latent'][1]} | {row['method']} | "
            f"{statistics.mean(row['unet_calls_per_step']):.1f} | "
            f"{statistics.mean(row['patches_per_step']):.1f} | {minimum} | "
            f"{row['seconds_per_step_median']:.2f} ({row['seconds_per_step_min']:.2f}-"
            f"{row['seconds_per_step_max']:.2f}) | {row['unet_seconds']:.1f} | "
            f"{row['peak_rss_mib']:.0f} | {speedup} |"
        )
    lines += [
        "",
        "**One stage end to end** (half-size latent -> decode -> Lanczos -> tiled encode -> 1 step "
        "-> tiled decode -> BigTIFF):",
        "",
        "| size (px) | latent maps MiB | peak RSS MiB | RSS - maps MiB | encode s | sample s | "
        "decode+write s | BigTIFF MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["stage"]:
        lines.append(
            f"| {row['size']} | {row['latent_maps_mib']:.0f} | {row['peak_rss_mib']:.0f} | "
            f"{row['peak_rss_mib'] - row['latent_maps_mib']:.0f} | {row['encode_seconds']:.1f} | "
            f"{row['sample_seconds']:.1f} | {row['decode_seconds']:.1f} | {row['output_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def gigapixel_markdown(result: dict, env: dict) -> str:
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in result["phase_seconds"].items())
    return (
        f"Cascade {' -> '.join(map(str, result['sizes']))} px, {result['steps']} steps per stage, "
        f"tiny random model, {env['threads']} torch thread(s), {env['cpu']}.\n\n"
        "| final size | total time | peak RSS | latent maps | UNet calls | BigTIFF |\n"
        "|---|---|---|---|---|---|\n"
        f"| {result['tiff_shape'][0]}x{result['tiff_shape'][1]} | "
        f"{result['seconds_total'] / 60:.1f} min | {result['peak_rss_mib'] / 1024:.2f} GiB | "
        f"{result['latent_maps_gib']:.2f} GiB | {result['unet_calls']} | "
        f"{result['tiff_gib']:.2f} GiB (bigtiff={result['bigtiff']}) |\n\n"
        f"Phases: {phases}.\n"
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in ("official", "grid"):
        rows = [r for r in report["sampler"] if r["method"] == method]
        sizes = [r["latent"][0] * 8 for r in rows]
        axes[0].plot(
            sizes, [statistics.mean(r["unet_calls_per_step"]) for r in rows], "o-", label=method
        )
        axes[1].plot(sizes, [r["seconds_per_step_median"] for r in rows], "o-", label=method)
    minimum = {r["latent"][0] * 8: r["minimum_patches"] for r in report["sampler"]}
    axes[0].plot(list(minimum), list(minimum.values()), "k--", label="minimum patches")
    stage = report["stage"]
    axes[2].plot(
        [r["size"] for r in stage], [r["peak_rss_mib"] for r in stage], "o-", label="peak RSS"
    )
    axes[2].plot(
        [r["size"] for r in stage],
        [r["latent_maps_mib"] for r in stage],
        "s--",
        label="latent maps",
    )
    titles = ("UNet calls per step", "seconds per step", "one stage: memory (MiB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("image side (px)")
        ax.set_title(title)
        ax.legend()
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048 and 4096 px only")
    parser.add_argument("--gigapixel", action="store_true", help="only the gigapixel cascade")
    parser.add_argument("--giga-size", type=int, default=31616, help="gigapixel side in px")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=None, help="steps (default 3; gigapixel 2)")
    parser.add_argument("--patch-size", type=int, default=128, help="latent px")
    parser.add_argument("--vae-tile", type=int, default=128, help="latent px")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="sampler sizes (px)")
    parser.add_argument("--stage-sizes", type=int, nargs="+", default=None, help="stage sizes (px)")
    parser.add_argument("--spec-size", type=int, default=2048, help="spec example height (px)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--workdir", type=Path, default=None, help="temporary files (BigTIFFs)")
    parser.add_argument(
        "--worker", choices=("sampler", "spec", "stage", "gigapixel"), help=argparse.SUPPRESS
    )
    parser.add_argument("--method", choices=("official", "grid"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from pixelsmith.patches import minimum_patches

    env = environment(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.gigapixel:
            steps = args.steps or 2
            result = run_worker("gigapixel", args, tmp, size=args.giga_size, steps=steps)
            result["environment"] = env
            atomic_write_text(
                args.results / "pixelsmith_gigapixel.json", json.dumps(result, indent=1)
            )
            table = gigapixel_markdown(result, env)
            atomic_write_text(args.results / "pixelsmith_gigapixel.md", table)
            print(table)
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
            "official_totals_10_seeds": official_totals(spec_latent, 6, args.patch_size, range(10)),
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
    atomic_write_text(args.results / f"{name}.json", json.dumps(report, indent=1))
    table = markdown(report)
    atomic_write_text(args.results / f"{name}.md", table)
    plot(report, args.results / f"{name}.png")
    print(table)


if __name__ == "__main__":
    main()
