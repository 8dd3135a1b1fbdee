"""SemanIR on a CUDA GPU: every attention backend against the dense-window twin, per model size.

Models (the sizes of the reference H100 measurements): ``semanir_small_sr_x4`` on a 128 px
colour input (window 32, k 256), ``semanir_base_denoise_gray`` on 256 px (window 16, k 128) and
the tiny denoiser on 4 x 256 px (window 8, k 32). Variants: the dense-window twin
(``dictionary="dense"``) and the KNN model with each backend. Modes: inference (eval,
``inference_mode``) and one training step (forward, L1 backward, AdamW step), in fp32 and under
bf16 autocast. Time: median of CUDA-event-timed repeats after warm-ups; memory: peak allocated
over the allocation after building the model, the input and the optimizer.

Used by ``run.py --device cuda``; each configuration runs in this process, one after another,
and is journaled as it finishes, so a run cut short (a 10-minute job limit) resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
from typing import Any

import torch
import torch.nn.functional as F

from semanir.models import dense_window_attention, get_config, model_from_config

MODELS = (
    ("semanir_small_sr_x4", (1, 3, 128, 128), 256),
    ("semanir_base_denoise_gray", (1, 1, 256, 256), 128),
    ("semanir_tiny_denoise_gray", (4, 1, 256, 256), 32),
)
VARIANTS = ("dense", "reference", "mask", "gather", "triton", "flex", "tiles")
# --quick: every size in bf16 with the backends that compile in seconds; FlexAttention compiles
# each (heads, head dim) variant of a model for ~20 s, so it runs on the tiny model only there.
QUICK_VARIANTS = ("dense", "mask", "triton", "tiles")
WARMUP, REPEATS = 3, 10
SPEC_FIELDS = ("config", "shape", "k", "variant", "mode", "precision")


def model_specs(quick: bool) -> list[dict[str, Any]]:
    """Every (model, variant, mode, precision); quick: bf16, the fast-compiling variants (and
    flex on the tiny model), about 3 minutes on an H100."""
    precisions = ("bf16",) if quick else ("fp32", "bf16")
    return [
        {
            "group": "cuda-models", "config": name, "shape": list(shape), "k": k,
            "variant": variant, "mode": mode, "precision": precision,
        }
        for name, shape, k in MODELS
        for precision in precisions
        for mode in ("infer", "train")
        for variant in VARIANTS
        if not quick or variant in QUICK_VARIANTS or (variant == "flex" and name == MODELS[-1][0])
    ]  # fmt: skip


def spec_key(spec: dict[str, Any]) -> str:
    """A canonical string naming a configuration (results carry the spec's keys too)."""
    return json.dumps([spec[name] for name in SPEC_FIELDS])


def build(spec: dict[str, Any], device: str = "cuda") -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of a spec (dense twin or KNN with the spec's backend) and its input."""
    config = get_config(spec["config"])
    if spec["variant"] == "dense":
        config = dense_window_attention(config)
    else:
        config = dataclasses.replace(config, attention_backend=spec["variant"])
    torch.manual_seed(0)
    model = model_from_config(config).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(*spec["shape"], generator=generator, device=device)
    return model, image


def step_function(spec: dict[str, Any], model: torch.nn.Module, image: torch.Tensor):
    """A closure running one inference forward or one training step of the spec."""
    k = None if spec["variant"] == "dense" else spec["k"]
    autocast = (
        torch.autocast(image.device.type, dtype=torch.bfloat16)
        if spec["precision"] == "bf16"
        else contextlib.nullcontext()
    )
    if spec["mode"] == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast:
                return model(image, k=k)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = image if model.upscale == 1 else F.interpolate(image, scale_factor=model.upscale)

    def train():
        with autocast:
            loss = F.l1_loss(model(image, k=k).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return train


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of one configuration; failures (OOM, errors) are recorded."""
    torch.cuda.empty_cache()
    try:
        model, image = build(spec)
        step = step_function(spec, model, image)
        for _ in range(WARMUP):  # compiles kernels; the optimizer allocates its state
            step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(REPEATS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    except Exception as error:  # recorded, like an out-of-memory configuration
        return {**spec, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    finally:
        model = image = step = None
        torch.cuda.empty_cache()
    return {
        **spec,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "peak_mib": peak,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Time and memory of each row over the dense twin's at the same model, mode, precision."""
    dense = {
        (r["config"], r["mode"], r["precision"]): r
        for r in rows
        if r["variant"] == "dense" and "error" not in r
    }
    for r in rows:
        base = dense.get((r["config"], r["mode"], r["precision"]))
        if base is None or "error" in r:
            continue
        r["time_x_dense"] = r["median_ms"] / base["median_ms"]
        r["memory_x_dense"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] else None


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, mode, precision), one column per variant."""
    lines = [
        "| model | input | mode | precision | " + " | ".join(VARIANTS) + " |",
        "|---|---|---|---|" + "---:|" * len(VARIANTS),
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["config"], tuple(r["shape"]), r["mode"], r["precision"])
        groups.setdefault(key, {})[r["variant"]] = r
    for (config, shape, mode, precision), by_variant in groups.items():
        cells = []
        for variant in VARIANTS:
            r = by_variant.get(variant)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("OOM" if "OutOfMemory" in r["error"] else "failed")
            elif variant == "dense":
                cells.append(f"{r['median_ms']:.1f} ms / {r['peak_mib']:.0f} MiB")
            else:
                memory = r.get("memory_x_dense")
                mem = f"{memory:.2f}x" if memory is not None else "-"
                time = r.get("time_x_dense")
                speed = f"{time:.2f}x" if time is not None else "-"
                cells.append(f"{r['median_ms']:.1f} ms ({speed}) / {mem} mem")
        input_shape = "x".join(map(str, shape))
        lines.append(f"| {config} | {input_shape} | {mode} | {precision} | {' | '.join(cells)} |")
    return "\n".join(lines)
