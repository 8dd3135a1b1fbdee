"""diffeat FLUX / SD3 benchmark: early exit vs the full transformer pass, measured on tiny models
on the CPU and estimated for FLUX.1-dev and SD3.5-Medium at 1024 px from their configs.

Measured (tiny random transformers with the real topologies, ``tiny-flux``/``tiny-sd3``):

* ``full``: the plain diffusers transformer forward, no hooks (the baseline);
* ``preset``: ``diffeat-flux`` / ``diffeat-sd3`` recorded with early exit;
* ``catalogue``: every activation (q/k/v and maps included), the whole pass.

Timing: one subprocess per model, warm-up, then rounds that each time every selection once (so
load changes on this shared machine hit all alike); medians, min and max. Memory: a fresh
subprocess per (model, selection) reports its peak RSS (``ru_maxrss``) and the peak above the
built model. One torch thread.

Estimated (no weights here): parameters of every component counted on the ``meta`` device
(transformer, VAE, the CLIP and T5 text encoders built from their published configs), their
bytes in bf16, and the device memory of a pass at 1024 px without offload, with diffeat's
``offload="model"`` (one stage's components on the device at a time: the text encoders
together, the VAE with its encoder's activations, or the transformer with the pass's) and
with diffusers' sequential offload (one block's weights at a time; not a diffeat option),
plus the activations of one block and the recorded features; FLOPs of ``full`` and
``preset`` counted on ``meta`` (their ratio is what early exit saves). Results:
``results/diffeat_mmdit.{json,md}``; ``--estimates-only`` recomputes the estimates and FLOPs
into the saved results, leaving the measurements as they are.

    OMP_NUM_THREADS=1 python benchmarks/mmdit.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = {  # kind: (tiny config, real config, preset, text tokens of the real model)
    "flux": ("tiny-flux", "flux-dev", "diffeat-flux", 512),
    "sd3": ("tiny-sd3", "sd3.5-medium", "diffeat-sd3", 77 + 256),
}
SELECTIONS = ("full", "preset", "catalogue")
IMAGE = 256  # px of the tiny measurement
BF16 = 2  # bytes
# published text encoder and VAE configs (transformers / diffusers keyword arguments)
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
          "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408}  # fmt: skip
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
          "num_hidden_layers": 32, "projection_dim": 1280, "vocab_size": 49408}  # fmt: skip
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
          "vocab_size": 32128, "feed_forward_proj": "gated-gelu"}  # fmt: skip
VAE_16 = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16, "layers_per_block": 2,
          "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4}  # fmt: skip


def build(config_name: str, device: str = "cpu"):
    """A transformer of a bundled config with random weights (``meta``: no memory)."""
    import torch

    from diffeat.backbones import backbone_of
    from diffeat.configs import unet_config

    config = unet_config(config_name)
    backbone = backbone_of(config)
    torch.manual_seed(0)
    with torch.device(device):
        return backbone, config, backbone.loader().from_config(config).eval()


def inputs(kind: str, config: dict, image: int, tokens: int, device: str = "cpu") -> dict:
    """Random transformer inputs of one ``image`` px square image and ``tokens`` text tokens."""
    import torch

    from diffeat.backbones.mmdit import flux_image_ids

    latent = image // 8
    generator = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    kwargs = {
        "encoder_hidden_states": rand(1, tokens, config["joint_attention_dim"]),
        "pooled_projections": rand(1, config["pooled_projection_dim"]),
        "return_dict": False,
    }
    if kind == "flux":
        grid = latent // 2
        return {**kwargs, "hidden_states": rand(1, grid * grid, config["in_channels"]),
                "timestep": torch.full((1,), 0.05, device=device),
                "img_ids": flux_image_ids(grid, grid, device),
                "txt_ids": torch.zeros(tokens, 3, device=device),
                "guidance": torch.ones(1, device=device)}  # fmt: skip
    return {**kwargs, "hidden_states": rand(1, config["in_channels"], latent, latent),
            "timestep": torch.full((1,), 50.0, device=device)}  # fmt: skip


def names(backbone, model, kind: str, selection: str) -> list[str]:
    from diffeat import PRESETS

    if selection == "full":
        return []
    if selection == "preset":
        return list(PRESETS[KINDS[kind][2]].layers)
    return [spec.name for spec in backbone.catalogue(model)]


def forward(backbone, model, kind: str, kwargs: dict, selection: str, grid: tuple) -> dict:
    """One pass recording the selection (early exit after its last name)."""
    import torch

    from diffeat.backbones.mmdit import JointRecorder

    chosen = names(backbone, model, kind, selection)
    with torch.no_grad():
        if not chosen:
            model(**kwargs)
            return {}
        recorder = JointRecorder(model, chosen, backbone.catalogue(model), grid)
        with recorder:
            model(**kwargs)
        return recorder.features


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    from common_kernels.runtime.bench import current_rss_mib

    torch.set_num_threads(1)
    kind = args.kind
    tiny, _, _, tokens = KINDS[kind]
    backbone, config, model = build(tiny)
    kwargs = inputs(kind, config, IMAGE, tokens)
    grid = (IMAGE // 16, IMAGE // 16)
    if args.task == "memory":
        model_rss = current_rss_mib()
        features = forward(backbone, model, kind, kwargs, args.selection, grid)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = sum(f.numel() * f.element_size() for f in features.values()) / 2**20
        result = {"model_rss_mib": model_rss, "peak_rss_mib": peak, "features_mib": size}
    else:
        times = {s: [] for s in SELECTIONS}
        for _ in range(args.warmup):
            for selection in SELECTIONS:
                forward(backbone, model, kind, kwargs, selection, grid)
        for round_ in range(args.repeats):
            order = SELECTIONS[round_ % 3 :] + SELECTIONS[: round_ % 3]
            for selection in order:
                start = time.perf_counter()
                forward(backbone, model, kind, kwargs, selection, grid)
                times[selection].append(time.perf_counter() - start)
        early = forward(backbone, model, kind, kwargs, "preset", grid)
        recorder_names = list(early)
        from diffeat.backbones.mmdit import JointRecorder

        recorder = JointRecorder(model, recorder_names, backbone.catalogue(model), grid,
                                 early_exit=False)  # fmt: skip
        with torch.no_grad(), recorder:
            model(**kwargs)
        diff = max(float((early[n] - recorder.features[n]).abs().max()) for n in recorder_names)
        result = {"times": times, "max_abs_diff_vs_full_pass": diff}
    Path(args.out).write_text(json.dumps(result))


def run_worker(kind: str, task: str, selection: str, tmp: Path, warmup: int, repeats: int):
    out = tmp / f"{kind}_{task}_{selection}.json"
    command = [sys.executable, __file__, "--worker", "--kind", kind, "--task", task,
               "--selection", selection, "--out", str(out), "--warmup", str(warmup),
               "--repeats", str(repeats)]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def flops(kind: str, image: int = 1024) -> dict[str, float]:
    """FLOPs of ``full`` and ``preset`` on the real config (``meta``; load-independent)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, real, _, tokens = KINDS[kind]
    backbone, config, model = build(real, "meta")
    kwargs = inputs(kind, config, image, tokens, "meta")
    counts = {}
    for selection in ("full", "preset"):
        with FlopCounterMode(display=False) as counter:
            forward(backbone, model, kind, kwargs, selection, (image // 16, image // 16))
        counts[selection] = float(counter.get_total_flops())
    return counts


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate(kind: str, image: int = 1024) -> dict:
    """Parameters of every component and the bf16 device memory of one 1024 px pass."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from diffeat import PRESETS
    from diffeat.memory import VAE_MAPS

    _, real, preset, tokens = KINDS[kind]
    backbone, config, model = build(real, "meta")
    with torch.device("meta"):
        parts = {"transformer": count(model), "vae": count(AutoencoderKL(**VAE_16)),
                 "t5-xxl": count(T5EncoderModel(T5Config(**T5_XXL)))}  # fmt: skip
        if kind == "flux":
            parts["clip-l"] = count(CLIPTextModel(CLIPTextConfig(**CLIP_L)))
        else:
            parts["clip-l"] = count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)))
            parts["clip-g"] = count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)))
    blocks = [*model.transformer_blocks, *getattr(model, "single_transformer_blocks", [])]
    largest_block = max(count(block) for block in blocks)
    grid = image // 16
    width = config["num_attention_heads"] * config["attention_head_dim"]
    sequence = grid * grid + tokens
    # one block's live tensors: input, normed input, q/k/v, attention output (6 x C) and the
    # FFN's 4C inner activation with its projection (5 x C) per token, in bf16; SDPA's
    # flash/memory-efficient kernels keep no (L x L) scores
    block_bytes = sequence * width * 11 * BF16
    infos = {i.name: i.shape for i in backbone.layer_infos(config, (image, image), tokens, 8)}
    features = sum(BF16 * c * h * w for n in PRESETS[preset].layers for c, h, w in [infos[n]])
    weights = {name: n * BF16 for name, n in parts.items()}
    working = block_bytes + features
    # offload="model": the stages of an extraction, each with its components' weights on the
    # device (the text encoders run together; the VAE's fp32 maps as diffeat.memory counts them)
    stages = {
        "text encoders": sum(v for k, v in weights.items() if k not in ("transformer", "vae")),
        "vae": weights["vae"] + VAE_MAPS * VAE_16["block_out_channels"][0] * image * image * 4,
        "transformer": weights["transformer"] + working,
    }
    return {
        "parameters": parts, "bf16_bytes": weights, "largest_block_parameters": largest_block,
        "block_activation_bytes": block_bytes, "preset_feature_bytes": features,
        "offload_stage_bytes": stages,
        "device_bytes": {
            "no offload": sum(weights.values()) + working,
            "diffeat offload=model": max(stages.values()),
            "sequential cpu offload": largest_block * BF16 + working,
        },
    }  # fmt: skip


def markdown(report: dict) -> str:
    gib = 2**30
    lines = [f"CPU, 1 torch thread, tiny random transformers at {IMAGE} px, "
             f"{report['machine']}.", "",
             "| model | selection | s/forward (median) | min | max | vs full | peak RSS MiB "
             "| above model MiB | features MiB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, rows in report["measured"].items():
        base = statistics.median(rows["times"]["full"])
        for selection in SELECTIONS:
            t, m = rows["times"][selection], rows["memory"][selection]
            median = statistics.median(t)
            lines.append(
                f"| {KINDS[kind][0]}@{IMAGE} | {selection} | {median:.3f} | {min(t):.3f} | "
                f"{max(t):.3f} | {base / median:.2f}x | {m['peak_rss_mib']:.0f} | "
                f"{m['peak_rss_mib'] - m['model_rss_mib']:.0f} | {m['features_mib']:.1f} |"
            )
    lines += ["", "Estimated at 1024 px, bf16 (parameters counted on `meta`):", "",
              "| model | parameters (B) | weights GiB | no offload GiB | diffeat offload=\"model\" "
              "GiB | sequential offload GiB (diffusers) | TFLOP full | TFLOP preset | early-exit "
              "FLOP ratio |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, est in report["estimated"].items():
        flop = report["flops"][kind]
        device = est["device_bytes"]
        total = sum(est["parameters"].values())
        parts = ", ".join(f"{k} {v / 1e9:.2f}B" for k, v in est["parameters"].items())
        lines.append(
            f"| {KINDS[kind][1]} ({parts}) "
            f"| {total / 1e9:.2f} | {sum(est['bf16_bytes'].values()) / gib:.1f} | "
            f"{device['no offload'] / gib:.1f} | {device['diffeat offload=model'] / gib:.1f} | "
            f"{device['sequential cpu offload'] / gib:.2f} | {flop['full'] / 1e12:.1f} | "
            f"{flop['preset'] / 1e12:.1f} | {flop['full'] / flop['preset']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    estimates = "recompute the estimates and FLOPs into the saved results (no measurement)"
    parser.add_argument("--estimates-only", action="store_true", help=estimates)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=sorted(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--selection", choices=SELECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import platform

    import torch

    from common_kernels.runtime.files import write_text

    torch.set_num_threads(1)
    report = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "measured": {}, "estimated": {}, "flops": {}}  # fmt: skip
    if args.estimates_only:  # the measurements of the saved run, new estimates
        saved = json.loads((args.results / "diffeat_mmdit.json").read_text())
        report = {**saved, "estimated": {}, "flops": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            if not args.estimates_only:
                timed = run_worker(kind, "time", "full", Path(tmp), args.warmup, args.repeats)
                memory = {s: run_worker(kind, "memory", s, Path(tmp), 0, 0) for s in SELECTIONS}
                report["measured"][kind] = {**timed, "memory": memory}
            report["estimated"][kind] = estimate(kind)
            report["flops"][kind] = flops(kind)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text(args.results / "diffeat_mmdit.json", json.dumps(report, indent=1))
    text = markdown(report)
    write_text(args.results / "diffeat_mmdit.md", text)
    print(text)


if __name__ == "__main__":
    main()
