"""run.py's reports: the markdown tables of the sampler and stage benchmark, the cascade
comparison and the gigapixel run, and the plot of the first.

Loaded by path by ``run.py`` (as ``pixelsmith_bench_report``).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from common_kernels.runtime.bench import figure


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


def cascade_markdown(report: dict) -> str:
    """Tables of the cascade comparison: totals and peak memory, then stage by stage."""
    env, (official, grid) = report["environment"], report["rows"]
    cuda = env["device"] == "cuda"
    where = (
        f"{env['device_name']} (CUDA {env['cuda']})"
        if cuda
        else f"CPU ({env['cpu']}, {env['threads']} torch thread(s))"
    )
    model = (
        "SDXL-sized random weights (UNet 2.57 B and VAE 83.7 M parameters, 2-layer text "
        "encoders of SDXL's widths)"
        if report["model"] == "sdxl"
        else "tiny random SDXL-shaped model (pixelsmith.tiny)"
    )
    key, label = ("peak_gpu_mib", "peak GPU MiB") if cuda else ("peak_rss_mib", "peak RSS MiB")
    lines = [
        f"Cascade {' -> '.join(map(str, official['sizes']))} px, {official['steps']} steps per "
        f"stage, slider {official['slider']}, patch {report['patch_size']} latent px, {model} in "
        f"{env['dtype']}, {where}, torch {env['torch']}, diffusers {env['diffusers']}. "
        f"{official['repeats']} timed run(s) after {official['warmup']} warm-up(s): seconds are "
        "median (min-max); speedup = official / grid median.",
        "",
        f"| method | total s | speedup | {label} |",
        "|---|---|---|---|",
    ]
    for row in (official, grid):
        speedup = "1 (baseline)" if row is official else f"{row['speedup']:.2f}x"
        lines.append(
            f"| {row['method']} | {row['seconds_median']:.2f} ({row['seconds_min']:.2f}-"
            f"{row['seconds_max']:.2f}) | {speedup} | {row[key]:.0f} |"
        )
    lines += [
        "",
        "| stage (px) | method | UNet calls | s | s/step | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for index, size in enumerate(official["sizes"]):
        for row in (official, grid):
            stage = row["stages"][index]
            per_step = stage.get("seconds_per_step_median")
            speedup = "1 (baseline)" if row is official else f"{stage['speedup']:.2f}x"
            lines.append(
                f"| {size} | {row['method']} | {stage['unet_calls']} | "
                f"{stage['seconds_median']:.2f} ({stage['seconds_min']:.2f}-"
                f"{stage['seconds_max']:.2f}) | {'-' if per_step is None else f'{per_step:.3f}'} "
                f"| {speedup} |"
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
    with figure(path, 1, 3, figsize=(13, 3.8)) as (_, axes):
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
