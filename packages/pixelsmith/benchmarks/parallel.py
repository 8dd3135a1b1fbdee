"""Patch-parallel scaling: the same cascade on 1 and on N devices (``pixelsmith.parallel``).

For every count in ``--devices`` the cascade runs in that many processes joined by
``torch.distributed`` (``nccl``, rank r on ``cuda:r``; ``gloo`` with ``--device cpu``), started
by ``pixelsmith.parallel.launch``: one warm-up cascade, then ``--repeats`` timed ones. Each rank
builds the benchmark model of ``run.py`` (its ``models.py``; ``--model sdxl``: SDXL's UNet and
VAE architectures with random weights, no download; ``tiny``: ``pixelsmith.tiny``) and takes
rank 0's weights.
Reported per count: total seconds and seconds per Pixelsmith step (median, min, max; steps
timed after a device synchronisation), the speedup over 1 device measured in the same run, and
a SHA-256 of the final latent, which must be the same for every count (patch parallelism is
bitwise one process's result).

    python benchmarks/parallel.py --device cuda --devices 1 2 4       # SDXL-sized, fp16
    python benchmarks/parallel.py --device cpu --devices 1 2 --model tiny --sizes 64 128

Results: ``results/pixelsmith_parallel_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "a lighthouse on a cliff at sunset"


def load_run_module():
    """``run.py`` beside this script (its benchmark model and environment report)."""
    spec = importlib.util.spec_from_file_location("pixelsmith_bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_worker(options: dict, result: str) -> None:
    """One rank: build the model, take rank 0's weights, time the cascades; rank 0 writes
    ``result`` (JSON)."""
    import torch.distributed as dist

    from common_kernels.runtime.bench import synchronize
    from common_kernels.runtime.files import write_json
    from pixelsmith import PixelsmithConfig, generate_cascade
    from pixelsmith.parallel import RankGroup

    run = load_run_module()
    ranks = RankGroup.current()
    device = options["device"]
    pipe = run.MODELS.cascade_pipeline(options["model"], device, options["dtype"])
    pipe.set_progress_bar_config(disable=True)
    if ranks.world_size > 1:  # one model: rank 0's random weights on every rank
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)
    config = PixelsmithConfig(
        patch_size=options["patch_size"],
        band=min(10, options["patch_size"] // 4),
        vae_tile=options["vae_tile"],
        vae_overlap=options["vae_tile"] // 8,
    )
    sizes, steps = options["sizes"], options["steps"]
    sliders = [max(1, round(0.6 * steps))] * (len(sizes) - 1)
    last = (len(sizes) - 1, steps - 1)
    runs = []
    for repeat in range(1 + options["repeats"]):
        marks: list[tuple[int, float]] = []  # (stage, time) after every Pixelsmith step
        final: list = []

        def on_step(stage: int, step: int, latents, plan, marks=marks, final=final) -> None:
            synchronize(device)
            marks.append((stage, time.perf_counter()))
            if (stage, step) == last:
                final.append(latents.detach().float().cpu().contiguous())

        synchronize(device)
        start = time.perf_counter()
        generate_cascade(
            pipe, PROMPT, sizes, sliders, num_inference_steps=steps, seed=0, config=config,
            progress=False, ranks=ranks, callback=on_step,
        )  # fmt: skip
        synchronize(device)
        total = time.perf_counter() - start
        step_seconds = [
            b - a for (sa, a), (sb, b) in itertools.pairwise(marks) if sa == sb
        ]  # within a stage (between stages lie the VAE decode and encode)
        if repeat > 0:  # the first is the warm-up
            runs.append(
                {
                    "total_s": total,
                    "step_s": statistics.median(step_seconds) if step_seconds else None,
                    "latent_sha256": hashlib.sha256(final[0].numpy().tobytes()).hexdigest(),
                }
            )
    if ranks.main:
        write_json(result, runs)


def summary(runs: list[dict]) -> dict:
    totals = [r["total_s"] for r in runs]
    steps = [r["step_s"] for r in runs if r["step_s"] is not None]
    return {
        "total_s": {"median": statistics.median(totals), "min": min(totals), "max": max(totals)},
        "step_s": {"median": statistics.median(steps), "min": min(steps), "max": max(steps)}
        if steps
        else None,
        "latent_sha256": sorted({r["latent_sha256"] for r in runs}),
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Patch-parallel scaling, {report['options']['model']} model, {env['device_name']}, "
        f"{report['options']['dtype']}, torch {env['torch']}; sizes {report['options']['sizes']}, "
        f"{report['options']['steps']} steps, {report['options']['repeats']} timed runs.",
        "",
        "| devices | total s (median) | s per step (median) | speedup (step) | same latent as 1 |",
        "|---|---|---|---|---|",
    ]
    base = report["results"][0]
    for row in report["results"]:
        step, base_step = row["step_s"], base["step_s"]
        speedup = f"{base_step['median'] / step['median']:.2f}x" if step and base_step else "-"
        same = "yes" if row["latent_sha256"] == base["latent_sha256"] else "NO"
        lines.append(
            f"| {row['devices']} | {row['total_s']['median']:.2f} | "
            f"{step['median'] if step else float('nan'):.3f} | {speedup} | {same} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (the README's examples are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--devices", type=int, nargs="+", default=None, help="default 1 and all")
    parser.add_argument("--model", choices=("sdxl", "tiny"), default=None, help="sdxl on cuda")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=None, help="latent px (default 128)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    import torch

    from common_kernels.runtime.cli import check_benchmark_setup
    from common_kernels.runtime.errors import InvalidArgument
    from common_kernels.runtime.files import write_json, write_text
    from pixelsmith.parallel import check_devices, launch

    check_benchmark_setup(
        "parallel.py", "pixelsmith", modules=("psutil",), folders={"--results": args.results}
    )
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    counts = args.devices or sorted({1, torch.cuda.device_count() if cuda else 2})
    for count in counts:
        try:
            check_devices(count, torch.device(args.device))
        except InvalidArgument as error:
            parser.error(error.for_flags({"devices": "--devices", "device": "--device"}))
    model = args.model or ("sdxl" if cuda else "tiny")
    options = {
        "device": args.device,
        "model": model,
        "dtype": args.dtype or ("fp16" if cuda else "fp32"),
        "sizes": args.sizes,
        "steps": args.steps,
        "repeats": args.repeats,
        "patch_size": args.patch_size or (128 if model == "sdxl" else 8),
        "vae_tile": 128 if model == "sdxl" else 8,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            out = Path(tmp) / f"{count}.json"
            launch(bench_worker, count, options, str(out), device_type=args.device)
            results.append({"devices": count, **summary(json.loads(out.read_text()))})
            print(json.dumps(results[-1]), flush=True)
    threads = torch.get_num_threads()
    env = load_run_module().environment(
        argparse.Namespace(device=args.device, dtype=options["dtype"], threads=threads)
    )
    report = {"options": options, "environment": env, "results": results}
    stem = args.results / f"pixelsmith_parallel_{args.device}"
    write_json(stem.with_suffix(".json"), report, indent=1)
    write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
