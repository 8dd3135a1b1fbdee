"""run.py's measurements, run in its worker processes: UNet calls and seconds of Pixelsmith
sampling, one stage end to end, the gigapixel cascade, and ``generate_cascade`` timed phase by
phase (:class:`PhaseTimer`); plus the official placement's patch counts (the planner alone, run
in the parent).

Loaded by path by ``run.py`` (as ``pixelsmith_bench_measures``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from common_kernels.runtime.bench import synchronize

PROMPT = "a lighthouse on a cliff at sunset"
LATENT_MAPS = 4 * 16 + 2  # bytes per latent px: latent, snapshot, guidance, noise (4 ch fp32), map
# pipeline methods PhaseTimer wraps -> the phase they are timed as
TIMED_PHASES = {
    "encode_text": "text",
    "generate_base": "base",
    "guidance_source": "decode previous",
    "encode_guidance": "lanczos+encode",
    "prepare_stage": "sample",
    "sample_stage": "sample",
}


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
    """generate_cascade 1024 -> 4096 -> size to a BigTIFF, timing each phase (PhaseTimer)."""
    import tifffile

    from pixelsmith import PixelsmithConfig

    counter = count_unet(pipe)
    timer = PhaseTimer(pipe, "cpu", counter)
    sizes = [1024, 4096, size]
    run = timed_cascade(
        pipe, timer, sizes, [steps, steps], steps, PixelsmithConfig(),
        output=workdir / "gigapixel.tif", progress=True,
    )  # fmt: skip
    path = run["output"]
    with tifffile.TiffFile(path) as tif:  # read back the first tile only
        page = tif.pages[0]
        shape, bigtiff = list(page.shape), tif.is_bigtiff
        tif.filehandle.seek(page.dataoffsets[0])
        first_tile = page.decode(tif.filehandle.read(page.databytecounts[0]), 0)[0]
    return {
        "sizes": sizes,
        "steps": steps,
        "seconds_total": run["seconds"],
        "phase_seconds": run["phases"],
        "unet_calls": counter["calls"],
        "tiff_shape": shape,
        "bigtiff": bigtiff,
        "tiff_gib": path.stat().st_size / 2**30,
        "first_tile_mean": float(first_tile.mean()),
        "latent_maps_gib": (size // 8) ** 2 * LATENT_MAPS / 2**30,
    }


class PhaseTimer:
    """Wall time of the phases of ``generate_cascade`` on ``pipe``, stage by stage.

    Wraps the pipeline's stage methods (instance attributes, so ``generate_cascade`` calls the
    wrappers) and synchronises the device at every boundary, so CUDA times are complete.
    ``records`` holds ``(phase, stage, seconds)`` in call order; ``step_seconds[stage]`` the
    time of every Pixelsmith step (via :meth:`on_step`, the cascade's ``callback``).

    Args:
        pipe: the pipeline.
        device: ``"cpu"`` or ``"cuda"``.
        unet_counter: the dict of :func:`count_unet`, read to count UNet calls per stage.
    """

    def __init__(self, pipe, device: str, unet_counter: dict) -> None:
        self.device = device
        self.unet_counter = unet_counter
        for method, phase in TIMED_PHASES.items():
            setattr(pipe, method, self._timed(phase, getattr(pipe, method)))
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (before a new cascade)."""
        self.stage = 0
        self.records: list[tuple[str, int, float]] = []
        self.stage_calls: dict[int, int] = {}
        self.step_seconds: dict[int, list[float]] = {}
        self._last_mark = 0.0

    def _timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            if phase == "decode previous":  # the first phase of every Pixelsmith stage
                self.stage += 1
            calls = self.unet_counter["calls"]
            synchronize(self.device)
            start = self._last_mark = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            self.records.append((phase, self.stage, time.perf_counter() - start))
            made = self.unet_counter["calls"] - calls
            self.stage_calls[self.stage] = self.stage_calls.get(self.stage, 0) + made
            return result

        return wrapper

    def on_step(self, stage: int, step: int, latents, plan) -> None:
        """The cascade callback: time since the previous step (or the stage's sampling start)."""
        synchronize(self.device)
        now = time.perf_counter()
        self.step_seconds.setdefault(stage, []).append(now - self._last_mark)
        self._last_mark = now

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase, summed over the stages."""
        totals: dict[str, float] = {}
        for phase, _, seconds in self.records:
            totals[phase] = totals.get(phase, 0.0) + seconds
        return totals

    def stage_seconds(self) -> dict[int, float]:
        """Seconds per stage (base, then decode previous + encode + sample of each stage)."""
        totals: dict[int, float] = {}
        for phase, stage, seconds in self.records:
            if phase != "text":
                totals[stage] = totals.get(stage, 0.0) + seconds
        return totals


def timed_cascade(pipe, timer: PhaseTimer, sizes: list[int], sliders: list[int], steps: int,
                  config, output: Path | None = None, progress: bool = False) -> dict:  # fmt: skip
    """One ``generate_cascade`` run (seed 0) timed by ``timer``: the result (a PIL image, or
    ``output``), total seconds, seconds per phase and per stage.

    ``"decode+write"`` is what the run spends outside the timed phases: the tiled decode of the
    final latent and collecting the image (or writing ``output``), and with ``output`` the
    checkpoint saves between phases (those after every step fall in ``"sample"``).
    """
    from pixelsmith import generate_cascade

    timer.reset()
    synchronize(timer.device)
    start = time.perf_counter()
    output = generate_cascade(
        pipe, PROMPT, sizes, sliders, num_inference_steps=steps, seed=0, config=config,
        output=output, progress=progress, callback=timer.on_step,
    )  # fmt: skip
    synchronize(timer.device)
    total = time.perf_counter() - start
    phases = timer.phase_seconds()
    phases["decode+write"] = total - sum(phases.values())
    return {"seconds": total, "phases": phases, "stages": timer.stage_seconds(), "output": output}


def cascade_run(pipe, sizes: list[int], config, *, steps: int, slider: int, repeats: int,
                warmup: int, device: str) -> dict:  # fmt: skip
    """``generate_cascade`` over ``sizes``: time, UNet calls and peak memory, median of repeats.

    Warm-up: ``warmup`` cascades over the first two sizes with 2 steps (the same kernels and
    shapes: patches, VAE tiles). Then ``repeats`` timed cascades; on CUDA the peak of
    ``torch.cuda.max_memory_allocated()`` over them (reset after the warm-up) and the memory
    the weights hold.

    Args:
        pipe: the pipeline (see :func:`cascade_pipeline`).
        sizes: stage sizes in px.
        config: ``PixelsmithConfig`` (``faithful=True``: the official placement).
        steps: denoising steps of every stage.
        slider: the slider of every Pixelsmith stage.
        repeats: timed cascades (>= 1).
        warmup: untimed cascades first.
        device: ``"cpu"`` or ``"cuda"``.
    """
    import torch

    counter = count_unet(pipe)
    timer = PhaseTimer(pipe, device, counter)
    for _ in range(warmup):
        timed_cascade(pipe, timer, sizes[:2], [min(slider, 2)], min(steps, 2), config)
    if device == "cuda":
        model_gpu_mib = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    runs, calls, step_seconds = [], [], {}
    for _ in range(repeats):
        runs.append(timed_cascade(pipe, timer, sizes, [slider] * (len(sizes) - 1), steps, config))
        runs[-1]["image_size"] = list(runs[-1].pop("output").size)  # (W, H); drop the image
        calls.append(dict(timer.stage_calls))
        for stage, seconds in timer.step_seconds.items():
            step_seconds.setdefault(stage, []).extend(seconds)
    totals = [run["seconds"] for run in runs]
    stages = []
    for index, size in enumerate(sizes):
        stage_times = [run["stages"][index] for run in runs]
        row = {
            "size": size,
            "unet_calls": calls[-1][index],
            "seconds_median": statistics.median(stage_times),
            "seconds_min": min(stage_times),
            "seconds_max": max(stage_times),
        }
        if index > 0:
            row["seconds_per_step_median"] = statistics.median(step_seconds[index])
        stages.append(row)
    result = {
        "method": "official" if config.faithful else "grid",
        "sizes": sizes,
        "steps": steps,
        "slider": slider,
        "repeats": repeats,
        "warmup": warmup,
        "seconds_median": statistics.median(totals),
        "seconds_min": min(totals),
        "seconds_max": max(totals),
        "phase_seconds_median": {
            phase: statistics.median(run["phases"][phase] for run in runs)
            for phase in runs[0]["phases"]
        },
        "stages": stages,
        "image_size": runs[-1]["image_size"],
    }
    if device == "cuda":
        result["model_gpu_mib"] = model_gpu_mib
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def cascade_config(args: argparse.Namespace, faithful: bool):
    """The cascade comparison's ``PixelsmithConfig`` from ``--patch-size`` and ``--vae-tile``."""
    from pixelsmith import PixelsmithConfig

    return PixelsmithConfig(
        patch_size=args.patch_size, band=min(10, args.patch_size // 4), vae_tile=args.vae_tile,
        vae_overlap=args.vae_tile // 8, faithful=faithful,
    )  # fmt: skip
