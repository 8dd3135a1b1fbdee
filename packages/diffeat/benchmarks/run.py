"""diffeat speed and memory benchmark: early exit per preset vs the full U-Net pass.

For every model (random weights, built from the published configs or the tiny test configs),
a random latent of the given resolution with random text conditioning (77 tokens) at t = 50 is
fed to the U-Net with these selections:

* ``full``: the plain diffusers U-Net forward, no hooks (the baseline of its model);
* a paper preset (``ours-v1.5``, ``legacy-v1.5``, ``ours-xl``, ``legacy-xl``): the
  :class:`~diffeat.ActivationRecorder` with early exit after the preset's last activation;
* ``catalogue``: every activation of the catalogue (q/k/v and attention maps included).

Timing: one subprocess per model builds the U-Net once, warms up, then runs ``repeats`` rounds
that each time every selection once (in a rotating order), so load changes on a shared machine
hit all selections alike; the speed-up is the ratio of medians to ``full``. ``catalogue`` is
timed in rounds of its own afterwards: the pass that follows its GiBs of features runs slower.
Memory: a fresh subprocess per (model, selection) runs one forward and reports its peak RSS
(``ru_maxrss``) and the peak above the loaded model. Also reported: the size of the returned
features and (tiny models) the max abs difference between early-exit and full-pass features.
Only the U-Net is measured: VAE and text encoding cost the same for every selection.

``--device cuda`` runs the U-Nets on the GPU in ``--dtype`` (default fp16): SD 1.5 @512 and
SDXL @1024 with every selection, the catalogue included; times are taken after
``torch.cuda.synchronize()`` and memory is the peak of ``torch.cuda.max_memory_allocated()``
(reset after the model is built) in a fresh process per (model, selection).
Results: ``results/diffeat_bench{,_quick}{,_cuda}.{json,md,png}``.

    python benchmarks/run.py                  # tiny + SD 1.5 @512 + SDXL @1024 (+ @512 catalogue)
    python benchmarks/run.py --quick          # tiny models only
    python benchmarks/run.py --device cuda    # SD 1.5 @512, SDXL @1024 on the GPU, fp16
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
TEXT_TOKENS = 77
SD15_PRESETS = ("ours-v1.5", "legacy-v1.5")
SDXL_PRESETS = ("ours-xl", "legacy-xl")

# (label, U-Net config name, image size in pixels, selections, warm-up, repeats)
QUICK = [
    ("tiny-sd15@256", "tiny-sd15", 256, ("full", *SD15_PRESETS, "catalogue"), 3, 20),
    ("tiny-sdxl@256", "tiny-sdxl", 256, ("full", *SDXL_PRESETS, "catalogue"), 3, 20),
]
FULL = [
    *QUICK,
    ("sd15@512", "sd15", 512, ("full", *SD15_PRESETS, "catalogue"), 1, 2),
    ("sdxl@1024", "sdxl", 1024, ("full", *SDXL_PRESETS), 1, 2),
    ("sdxl@512", "sdxl", 512, ("full", "catalogue"), 1, 2),
]
CUDA = [
    ("sd15@512", "sd15", 512, ("full", *SD15_PRESETS, "catalogue"), 3, 10),
    ("sdxl@1024", "sdxl", 1024, ("full", *SDXL_PRESETS, "catalogue"), 3, 10),
]
DTYPES = ("fp32", "fp16", "bf16")


def random_unet(config_name: str, seed: int = 0, device: str = "cpu", dtype: str = "fp32"):
    """A U-Net from a named config with cheap random weights (built on meta, filled in place).

    Weights ~ N(0, 1/fan_in), norm scales 1, biases 0: activations stay bounded at any depth.

    Args:
        config_name: a name of ``diffeat.configs.UNET_CONFIGS``.
        seed: seed of the weights (drawn on ``device``).
        device: ``"cpu"``, ``"cuda"`` or ``"meta"`` (shapes only: no memory, no weights).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (allocated in this dtype directly).
    """
    import torch
    from diffusers import UNet2DConditionModel

    from common_kernels.runtime.bench import random_weights, torch_dtype
    from diffeat.configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(config_name))
    unet = unet.to(torch_dtype(dtype)).eval()
    return unet if device == "meta" else random_weights(unet, device, seed)


def unet_inputs(unet, image: int, seed: int = 1):
    """Random latent (1, 4, S/8, S/8), timestep 50, text embeddings and SDXL conditioning.

    Drawn on the CPU (the same values on every device), then moved to the U-Net's device and
    dtype.
    """
    import torch

    config = unet.config
    device, dtype = unet.device, unet.dtype
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, config.in_channels, image // 8, image // 8, generator=generator)
    context = torch.randn(1, TEXT_TOKENS, config.cross_attention_dim, generator=generator)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=generator).to(device, dtype),
            "time_ids": torch.tensor([[image, image, 0, 0, image, image]], dtype=dtype).to(device),
        }
    return (
        latent.to(device, dtype),
        torch.tensor(50, device=device),
        context.to(device, dtype),
        kwargs,
    )


def selection_names(unet, selection: str) -> list[str] | None:
    """Activation names of a selection (None for the plain ``full`` pass)."""
    from diffeat import PRESETS, build_catalogue

    if selection == "full":
        return None
    if selection == "catalogue":
        return [spec.name for spec in build_catalogue(unet)]
    return list(PRESETS[selection].layers)


def forward(unet, inputs, names: list[str] | None, early_exit: bool = True) -> dict:
    """One U-Net pass; returns the recorded features ({} for the plain pass)."""
    import torch

    from diffeat import ActivationRecorder

    latent, timestep, context, kwargs = inputs
    with torch.no_grad():
        if names is None:
            unet(latent, timestep, context, return_dict=False, **kwargs)
            return {}
        recorder = ActivationRecorder(unet, names, early_exit=early_exit)
        with recorder:
            unet(latent, timestep, context, return_dict=False, **kwargs)
        recorder.raise_if_missing()
        return recorder.features


def feature_stats(features: dict) -> dict:
    return {
        "feature_mib": sum(f.numel() * f.element_size() for f in features.values()) / 2**20,
        "channels": sum(f.shape[1] for f in features.values()),
    }


def time_selections(config_name: str, image: int, selections: list[str], warmup: int,
                    repeats: int, check: bool, device: str = "cpu",
                    dtype: str = "fp32") -> dict[str, dict]:  # fmt: skip
    """Interleaved timing of every selection on one U-Net in this process.

    Args:
        config_name: U-Net config name.
        image: image side in pixels (latent side / 8).
        selections: ``full``, preset names, ``catalogue``.
        warmup: untimed rounds first.
        repeats: timed rounds (each selection once per round).
        check: also compare early-exit features with full-pass ones (max abs diff).
        device: ``"cpu"`` or ``"cuda"`` (timed after a synchronize).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    """
    from common_kernels.runtime.bench import synchronize

    unet = random_unet(config_name, device=device, dtype=dtype)
    inputs = unet_inputs(unet, image)
    names = {s: selection_names(unet, s) for s in selections}
    times = {s: [] for s in selections}
    results = {}
    # the catalogue returns GiBs of features and the pass after it runs ~6% slower (measured:
    # full after catalogue 13.1 s, after a preset 12.4 s), so it is timed in rounds of its own
    light = [s for s in selections if s != "catalogue"]
    heavy = [s for s in selections if s == "catalogue"]
    for group in (g for g in (light, heavy) if g):
        for round_index in range(warmup + repeats):
            shift = round_index % len(group)
            for selection in group[shift:] + group[:shift]:
                synchronize(device)
                start = time.perf_counter()
                features = forward(unet, inputs, names[selection])
                synchronize(device)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    times[selection].append(elapsed)
                results.setdefault(selection, feature_stats(features))
    for selection in selections:
        chosen = names[selection]
        results[selection].update(
            selection=selection,
            activations=0 if chosen is None else len(chosen),
            last_activation=None if chosen is None else chosen[-1],
            seconds_median=statistics.median(times[selection]),
            seconds_min=min(times[selection]),
            seconds_max=max(times[selection]),
            repeats=repeats,
            max_abs_diff_vs_full_pass=None,
        )
        if check and chosen is not None:
            early = forward(unet, inputs, chosen, early_exit=True)
            full = forward(unet, inputs, chosen, early_exit=False)
            diff = max(float((early[n] - full[n]).abs().max()) for n in chosen)
            results[selection]["max_abs_diff_vs_full_pass"] = diff
    return results


def peak_memory(config_name: str, image: int, selection: str, device: str = "cpu",
                dtype: str = "fp32") -> dict:  # fmt: skip
    """Peak RSS of one forward (meaningful in a fresh process only); on CUDA also the peak
    ``torch.cuda.max_memory_allocated()`` of the forward and the memory of the model."""
    import torch

    from common_kernels.runtime.bench import current_rss_mib, peak_rss_mib, synchronize

    unet = random_unet(config_name, device=device, dtype=dtype)
    inputs = unet_inputs(unet, image)
    model_rss = current_rss_mib()
    if device == "cuda":
        synchronize(device)
        model_gpu = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    forward(unet, inputs, selection_names(unet, selection))
    synchronize(device)
    peak = max(peak_rss_mib(), current_rss_mib())
    result = {"model_rss_mib": model_rss, "peak_rss_mib": peak}
    if device == "cuda":
        result["model_gpu_mib"] = model_gpu
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def memory_columns(device: str) -> tuple[str, str, str]:
    """(peak key, model key, label) of the memory a report shows for ``device``."""
    if device == "cuda":
        return "peak_gpu_mib", "model_gpu_mib", "peak GPU MiB"
    return "peak_rss_mib", "model_rss_mib", "peak RSS MiB"


def worker(args: argparse.Namespace) -> None:
    import torch

    from common_kernels.runtime.files import write_text

    torch.set_num_threads(args.threads)
    if args.task == "time":
        selections = args.selection.split(",")
        result = time_selections(
            args.config, args.image, selections, args.warmup, args.repeats, args.check,
            args.device, args.dtype,
        )  # fmt: skip
    else:
        result = peak_memory(args.config, args.image, args.selection, args.device, args.dtype)
    write_text(args.out, json.dumps(result), make_parents=True)


def run_worker(task: str, model: tuple, selection: str, args, tmp: Path) -> dict:
    label, config, image, _, warmup, repeats = model
    out = tmp / f"{task}_{label}_{selection.replace(',', '+')}.json"
    command = [
        sys.executable, __file__, "--worker", "--task", task, "--config", config,
        "--image", str(image), "--selection", selection, "--threads", str(args.threads),
        "--warmup", str(warmup), "--repeats", str(repeats), "--out", str(out),
        "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    if config.startswith("tiny"):
        command.append("--check")
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def flop_counts(config_name: str, image: int, selections: list[str]) -> dict[str, float]:
    """FLOPs of each selection's (early-exited) pass, counted on the meta device (no weights).

    Load-independent: ``flops(full) / flops(selection)`` is the speed-up early exit can give.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffeat.configs import unet_config
    from diffeat.shapes import meta_inputs, meta_unet

    config = unet_config(config_name)
    unet = meta_unet(config)
    latent, context, kwargs = meta_inputs(config, image // 8, image // 8, TEXT_TOKENS)
    inputs = (latent, torch.zeros(1, device="meta"), context, kwargs)
    counts = {}
    for selection in selections:
        with FlopCounterMode(display=False) as counter:
            forward(unet, inputs, selection_names(unet, selection))
        counts[selection] = float(counter.get_total_flops())
    return counts


def run_model(model: tuple, args, tmp: Path) -> list[dict]:
    """FLOPs (meta), timing (one process) and peak memory (one per selection) of one model."""
    label, config, image, selections, _, _ = model
    flops = flop_counts(config, image, list(selections))
    timed = run_worker("time", model, ",".join(selections), args, tmp)
    rows = []
    for selection in selections:
        row = {"model": label, "config": config, "image": image, **timed[selection]}
        row.update(run_worker("memory", model, selection, args, tmp))
        row["speedup"] = timed["full"]["seconds_median"] / row["seconds_median"]
        row["tflops"] = flops[selection] / 1e12
        row["flop_speedup"] = flops["full"] / flops[selection]
        peak_key, _, label_memory = memory_columns(args.device)
        print(
            f"{label:>14} {selection:>12}: {row['seconds_median']:.3f} s, "
            f"{row['speedup']:.2f}x, {label_memory} {row[peak_key]:.0f}",
            flush=True,
        )
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    device = report["device"]
    peak_key, model_key, label_memory = memory_columns(device)
    where = f"{report['device_name']} (CUDA {report['cuda']})" if device == "cuda" else "CPU"
    lines = [
        f"U-Net forward at t = 50, batch 1, random weights, {report['dtype']}, {where}, "
        f"{report['threads']} torch thread(s), {report['cpu']} ({report['physical_cores']} "
        f"cores, load average {report['load_average'][0]:.1f} at the end), torch "
        f"{report['torch']}, diffusers {report['diffusers']}.",
        "",
        "| model | selection | activations | channels | TFLOP | FLOP ratio | s/forward (median) "
        f"| min | max | speed-up vs full | {label_memory} | above model MiB | features MiB "
        "| max abs diff vs full pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        full = row["selection"] == "full"
        speedup = "1 (baseline)" if full else f"{row['speedup']:.2f}x"
        diff = row["max_abs_diff_vs_full_pass"]
        lines.append(
            f"| {row['model']} | {row['selection']} | {row['activations'] or '-'} | "
            f"{row['channels'] or '-'} | {row['tflops']:.3g} | {row['flop_speedup']:.3f}x | "
            f"{row['seconds_median']:.3f} | {row['seconds_min']:.3f} | "
            f"{row['seconds_max']:.3f} | {speedup} | {row[peak_key]:.0f} | "
            f"{row[peak_key] - row[model_key]:.0f} | {row['feature_mib']:.1f} | "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    from common_kernels.runtime.bench import figure

    peak_key, model_key, label_memory = memory_columns(report["device"])
    models = list(dict.fromkeys(row["model"] for row in report["rows"]))
    with figure(path, 1, 2, figsize=(11, 4), savefig={"dpi": 120}) as (_, axes):
        for m_index, model in enumerate(models):
            rows = [r for r in report["rows"] if r["model"] == model]
            for r_index, row in enumerate(rows):
                x = m_index + (r_index - (len(rows) - 1) / 2) * 0.18
                axes[0].bar(x, row["speedup"], 0.16, color=f"C{r_index}")
                axes[0].plot(x, row["flop_speedup"], "k_", markersize=10)
                axes[0].text(
                    x,
                    row["speedup"],
                    row["selection"],
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
                axes[1].bar(x, row[peak_key] - row[model_key], 0.16, color=f"C{r_index}")
        for ax, title in zip(
            axes,
            ("speed-up vs full pass (bars: measured, -: FLOPs)", f"{label_memory} above the model"),
            strict=True,
        ):
            ax.set_xticks(range(len(models)), models, fontsize=8)
            ax.set_title(title)
        axes[0].axhline(1.0, color="grey", linewidth=0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--only", default=None, help="comma-separated model labels to run")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cuda: SD 1.5 @512 and SDXL @1024 on the GPU (--quick: the tiny models)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="weights and inputs (default: fp16 on "
        "cuda, fp32 on cpu)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--selection", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from common_kernels.runtime.bench import check_run, default_dtype, machine, write_report

    args.dtype = args.dtype or default_dtype(args.device)
    if args.worker:
        worker(args)
        return
    check_run(parser, "diffeat", args.device, {"--results": args.results})

    models = QUICK if args.quick else CUDA if args.device == "cuda" else FULL
    if args.only:
        wanted = set(args.only.split(","))
        models = [m for m in models if m[0] in wanted]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            rows += run_model(model, args, Path(tmp))
    environment = machine(args.device, args.dtype, args.threads, ("diffusers",))
    report = {"quick": args.quick, **environment, "rows": rows}
    name = (
        "diffeat_bench"
        + ("_quick" if args.quick else "")
        + ("_cuda" if args.device == "cuda" else "")
    )
    write_report(args.results / name, report, markdown(report))
    plot(report, args.results / f"{name}.png")


if __name__ == "__main__":
    main()
