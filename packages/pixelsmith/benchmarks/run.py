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

    python benchmarks/run.py                # 2048..8192 sampler, stages up to 16384 px
    python benchmarks/run.py --quick        # 2048 and 4096 only
    OMP_NUM_THREADS=1 python benchmarks/run.py --gigapixel --steps 2
    python benchmarks/run.py --device cuda  # SDXL-sized cascade 1024 -> 2048 -> 4096 on the GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common_kernels.runtime.bench import (
    DTYPES,
    default_dtype,
    machine,
    peak_rss_mib,
    pyplot,
    random_weights,
    require_cuda,
    save_figure,
    synchronize,
    torch_dtype,
    write_report,
)
from common_kernels.runtime.files import write_text

HERE = Path(__file__).resolve().parent
PROMPT = "a lighthouse on a cliff at sunset"
LATENT_MAPS = 4 * 16 + 2  # bytes per latent px: latent, snapshot, guidance, noise (4 ch fp32), map
# SDXL base 1.0's unet/config.json (stabilityai/stable-diffusion-xl-base-1.0): 2.567 B parameters
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# SDXL base 1.0's vae/config.json with force_upcast off, as madebyollin/sdxl-vae-fp16-fix (the
# VAE the official code loads): 83.65 M parameters
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# Text encoders with SDXL's widths (CLIP ViT-L/14: 768; OpenCLIP ViT-bigG/14: 1280, pooled
# projection 1280) but 2 layers instead of 12 and 32: the prompt is encoded once per cascade.
TEXT_ENCODER_CONFIGS = (
    {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
     "projection_dim": 1280},
)  # fmt: skip
TEXT_ENCODER_COMMON = {
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
# pipeline methods PhaseTimer wraps -> the phase they are timed as
TIMED_PHASES = {
    "encode_text": "text",
    "generate_base": "base",
    "guidance_source": "decode previous",
    "encode_guidance": "lanczos+encode",
    "prepare_stage": "sample",
    "sample_stage": "sample",
}
CUDA_SIZES, CUDA_QUICK_SIZES = [1024, 2048, 4096], [1024, 2048]


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


def random_module(cls, config: dict, device: str, dtype: str, seed: int):
    """``cls(**config)`` with random weights, allocated on ``device`` in ``dtype`` directly.

    Built on the meta device, then filled in place: weights ~ N(0, 1/fan_in), norm scales 1,
    biases 0, so activations stay bounded at any depth (no inf in fp16 on random weights).

    Args:
        cls: a diffusers model class without buffers (``UNet2DConditionModel``,
            ``AutoencoderKL``): ``to_empty`` would leave buffers uninitialised.
        config: its constructor arguments.
        device: ``"cpu"``, ``"cuda"`` or ``"meta"`` (shapes only: no memory, no weights).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        seed: seed of the weights (drawn on ``device``).
    """
    import torch

    with torch.device("meta"):
        module = cls(**config)
    if any(True for _ in module.buffers()):
        raise ValueError(f"{cls.__name__} has buffers, which to_empty would leave uninitialised")
    module = torch.nn.Module.to(module, torch_dtype(dtype)).eval()  # ModelMixin.to warns on casts
    return module if device == "meta" else random_weights(module, device, seed)


def sdxl_components(device: str = "cpu", dtype: str = "fp16", seed: int = 0) -> dict:
    """SDXL-sized random components for ``PixelsmithPipeline(**components)`` (no hub access).

    The UNet and the VAE have SDXL's architectures (``SDXL_UNET_CONFIG``, ``SDXL_VAE_CONFIG``);
    the two text encoders have SDXL's widths with 2 layers each (``TEXT_ENCODER_CONFIGS``) and
    share ``pixelsmith.tiny``'s byte-level tokenizer; DDIM from SDXL's scheduler config.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"meta"`` (shapes only, for parameter counts).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        seed: seed of the random weights.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pixelsmith.pipelines.pixelsmith import ddim_from_config
    from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    configs = [
        CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_ENCODER_COMMON, **widths)
        for widths in TEXT_ENCODER_CONFIGS
    ]
    with torch.random.fork_rng(devices=[]), torch.device("meta" if device == "meta" else "cpu"):
        torch.manual_seed(seed)
        encoders = [CLIPTextModel(configs[0]), CLIPTextModelWithProjection(configs[1])]
    encoders = [encoder.to(torch_dtype(dtype)) for encoder in encoders]
    if device != "meta":
        encoders = [encoder.to(device) for encoder in encoders]
    return {
        "unet": random_module(UNet2DConditionModel, SDXL_UNET_CONFIG, device, dtype, seed),
        "vae": random_module(AutoencoderKL, SDXL_VAE_CONFIG, device, dtype, seed + 1),
        "text_encoder": encoders[0].eval(),
        "text_encoder_2": encoders[1].eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": ddim_from_config(dict(SDXL_SCHEDULER_CONFIG)),
    }


def cascade_pipeline(model: str, device: str, dtype: str):
    """The benchmark's pipeline: SDXL-sized random weights (``"sdxl"``) or the tiny model."""
    import torch

    from pixelsmith import PixelsmithPipeline

    if model == "sdxl":
        pipe = PixelsmithPipeline(**sdxl_components(device, dtype), add_watermarker=False)
    else:
        pipe = tiny_pipeline()
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            torch.nn.Module.to(module, device, torch_dtype(dtype))  # ModelMixin.to warns on casts
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "cascade":
        pipe = cascade_pipeline(args.model, args.device, args.dtype)
        with torch.no_grad():
            result = cascade_run(
                pipe, args.sizes, cascade_config(args, args.method == "official"),
                steps=args.steps, slider=args.slider, repeats=args.repeats, warmup=args.warmup,
                device=args.device,
            )  # fmt: skip
        result["peak_rss_mib"] = peak_rss_mib()
        result["threads"] = args.threads
        write_text(args.out, json.dumps(result), make_parents=True)
        return
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
    write_report(args.results / name, report, cascade_markdown(report))


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
    plt = pyplot()

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
    save_figure(fig, path)


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
            write_report(stem, result, gigapixel_markdown(result, env))
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
    write_report(args.results / name, report, markdown(report))
    plot(report, args.results / f"{name}.png")


if __name__ == "__main__":
    main()
