"""SemanIR vs dense window attention (throughput, peak memory) and the dictionary-sharing ablation.

    python packages/semanir/benchmarks/run.py [--quick] [--out DIR] [--threads N]
        [--weights DIR] [--data-root DIR]
    python packages/semanir/benchmarks/run.py --device cuda [--quick] [--out DIR]

``--device cuda`` measures SemanIR on a GPU instead (models_cuda.py): the small SR, base and tiny
models with every attention backend against their dense-window twins, inference and a training
step, fp32 and bf16, time and peak memory; it writes ``<out>/<full|quick>-cuda.json`` and
``.md``, journaling each configuration in ``<out>/<full|quick>-cuda.partial.jsonl`` so that a
run cut short resumes (``--quick``: bf16 only, about 3 minutes on an H100). Everything below
describes the CPU run.

Throughput and memory: ``semanir_tiny_denoise_gray`` (window 8, so k <= 64 tokens; k = 64 attends
to the whole window through the KNN path) with k in {16, 32, 64}, against its dense
window-attention twin (same widths, depths and windows); plus a window-16 variant
(window_size=16, top_k=128) at k = 128 against its own dense window-16 twin. Gray, batch 1,
eval mode, ``torch.inference_mode``, fp32, sizes 128 to 1024. Every configuration runs in a
fresh subprocess (worker.py): one warm-up forward (whose peak-RSS growth is the memory figure),
then timed repeats; tables give the median (min-max) and the ratio to the dense baseline of the
same window measured in the same run. ``--quick``: sizes 128 and 256, k in {16, 32}, no
window-16 variant.

Dictionary sharing: the same weights with one KNN graph per stage (the paper) or one per layer:
forward time at 256 and 512 (quick: 256), and PSNR on the first 4 Set12 images (quick: 2) at
sigma 25 (noise as in eval_set12.py) with the trained weights of ``--weights`` (a
save_pretrained folder), or random-init weights when it is not given (then the PSNRs only show
that both modes run).

Writes ``<out>/<full|quick>.json`` (raw results and environment), ``.md`` (tables) and ``.png``
(drawn from the JSON), atomically. Finished configurations are journaled in
``<out>/<full|quick>.partial.jsonl`` so an interrupted run resumes; the journal is removed once
the report is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common_kernels.runtime.bench import load_sibling, write_drawn_report
from common_kernels.runtime.cli import check_benchmark_setup
from semanir.inference import load_model, restore
from semanir.io import read_image
from semanir.metrics import psnr
from semanir.models import SemanIR, build_model, get_config

HERE = Path(__file__).resolve().parent
BASE_CONFIG = "semanir_tiny_denoise_gray"
WINDOW16 = {"window_size": 16, "top_k": 128}
ABLATION_SIGMA = 25.0
NOISE_SEED = 0
WORKER_TIMEOUT_S = 1800
SPEC_FIELDS = (
    "group",
    "config",
    "overrides",
    "dictionary",
    "k",
    "size",
    "threads",
    "repeats",
    "seed",
)
NOTES = (
    "SemanIR k in {16, 32, 64}: semanir_tiny_denoise_gray, window 8 (64 tokens, so k <= 64; "
    "k = 64 attends to every window token, through the KNN path).",
    "k = 128: a window-16 variant (window_size=16, top_k=128) against its own dense window-16 "
    "baseline.",
    "Dense baseline: the same config with dictionary='dense' (registry window_attention_*): "
    "equal width, depth and windows.",
    "Gray, batch 1, eval mode, torch.inference_mode, fp32, random-init weights (time does not "
    "depend on weight values); one warm-up forward, then timed repeats; median (min-max).",
    "speed x dense = dense median time / this median time (> 1: faster than dense); "
    "memory x dense = peak-RSS growth / dense peak-RSS growth.",
    "Peak memory: growth of ru_maxrss over its value after building the model and input, in a "
    "fresh process per configuration.",
)


EVAL = load_sibling(HERE, "eval_set12", "semanir_bench")
MODELS_CUDA = load_sibling(HERE, "models_cuda", "semanir_bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``argv``: None reads sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small grid for a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--weights", type=Path, default=None, help="trained semanir_tiny_denoise_gray folder"
    )
    parser.add_argument(
        "--data-root", type=Path, default=EVAL.default_data_root(), help="holds set12/"
    )
    return parser.parse_args(argv)


def make_spec(
    overrides: dict[str, int],
    dictionary: str,
    k: int | None,
    size: int,
    *,
    threads: int,
    quick: bool,
    group: str = "throughput",
    config: str = BASE_CONFIG,
) -> dict[str, Any]:
    """A worker spec (see worker.py) with the run's repeat policy.

    Args:
        overrides: config fields changed from ``config``.
        dictionary: "stage", "layer" or "dense".
        k: dictionary size (None for dense).
        size: image side.
        threads: torch threads.
        quick: 3 repeats instead of 5.
        group: "throughput" or "ablation"; each group measures its own specs, so the
            configurations it compares run back to back.
        config: registry name of the SemanIR config.
    """
    return {
        "group": group,
        "config": config,
        "overrides": overrides,
        "dictionary": dictionary,
        "k": k,
        "size": size,
        "threads": threads,
        "repeats": 3 if quick else 5,
        "budget_s": 30.0,
        "seed": 0,
    }


def throughput_specs(quick: bool, threads: int) -> list[dict[str, Any]]:
    """Dense baseline + SemanIR per k, for each window group and image size."""
    sizes = (128, 256) if quick else (128, 256, 512, 1024)
    groups: list[tuple[dict[str, int], tuple[int, ...]]] = [
        ({}, (16, 32) if quick else (16, 32, 64))
    ]
    if not quick:
        groups.append((WINDOW16, (128,)))
    specs = []
    for size in sizes:
        for overrides, ks in groups:
            for dictionary, k in [("dense", None), *(("stage", k) for k in ks)]:
                specs.append(
                    make_spec(overrides, dictionary, k, size, threads=threads, quick=quick)
                )
    return specs


def ablation_specs(quick: bool, threads: int, k: int) -> list[dict[str, Any]]:
    """One KNN graph per stage vs per layer at k, sizes 256 and 512 (quick: 256)."""
    sizes = (256,) if quick else (256, 512)
    return [
        make_spec({}, dictionary, k, size, threads=threads, quick=quick, group="ablation")
        for size in sizes
        for dictionary in ("stage", "layer")
    ]


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure ``spec`` in a fresh process; a failure (e.g. out of memory) is recorded."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "worker.py"), json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {WORKER_TIMEOUT_S} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {**spec, "error": f"exit {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spec_key(spec: dict[str, Any]) -> str:
    """A canonical string naming a spec's configuration (results carry the spec's keys too)."""
    return json.dumps([spec[name] for name in SPEC_FIELDS], sort_keys=True)


def run_all(specs: list[dict[str, Any]], journal: Path) -> list[dict[str, Any]]:
    """Measure every distinct spec once, reusing and appending to the journal.

    Args:
        specs: worker specs; duplicates are measured once.
        journal: JSON-lines file of finished results.

    Returns:
        One result per spec, in order.
    """
    done = {}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            result = json.loads(line)
            done[spec_key(result)] = result
    journal.parent.mkdir(parents=True, exist_ok=True)
    todo = [s for s in {spec_key(s): s for s in specs}.values() if spec_key(s) not in done]
    with journal.open("a") as handle:
        for spec in tqdm(todo, desc="benchmark", unit="config", disable=None):
            done[spec_key(spec)] = run_worker(spec)
            handle.write(json.dumps(done[spec_key(spec)]) + "\n")
            handle.flush()
    return [done[spec_key(spec)] for spec in specs]


def window(row: dict[str, Any]) -> int:
    """Window side of a result row's model (also for rows whose worker failed)."""
    return get_config(row["config"], **row["overrides"]).window_size


def label(row: dict[str, Any]) -> str:
    """Legend name of a throughput row, e.g. 'dense w8' or 'SemanIR w8 k16'."""
    if row["dictionary"] == "dense":
        return f"dense w{window(row)}"
    return f"SemanIR w{window(row)} k{row['k']}"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add speed and memory ratios to the dense row of the same window and size, in place."""
    dense = {
        (json.dumps(r["overrides"], sort_keys=True), r["size"]): r
        for r in rows
        if r["dictionary"] == "dense" and "error" not in r
    }
    for row in rows:
        base = dense.get((json.dumps(row["overrides"], sort_keys=True), row["size"]))
        if "error" in row or base is None:
            continue
        row["speed_vs_dense"] = base["median_ms"] / row["median_ms"]
        growth = base["peak_growth_mib"]
        row["memory_vs_dense"] = row["peak_growth_mib"] / growth if growth > 0 else None


def ablation_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: stage and layer median/min/max ms and the layer / stage time ratio."""
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_size.setdefault(row["size"], {})[row["dictionary"]] = row
    summary = []
    for size, pair in by_size.items():
        stage, layer = pair["stage"], pair["layer"]
        entry: dict[str, Any] = {"size": size, "k": stage["k"]}
        if "error" in stage or "error" in layer:
            entry["error"] = stage.get("error") or layer.get("error")
        else:
            for name, row in (("stage", stage), ("layer", layer)):
                entry.update(
                    {f"{name}_{key}": row[key] for key in ("median_ms", "min_ms", "max_ms")}
                )
            entry["layer_over_stage"] = layer["median_ms"] / stage["median_ms"]
        summary.append(entry)
    return summary


def ablation_models(weights: Path | None, config: str = BASE_CONFIG) -> dict[str, SemanIR]:
    """The same weights as a per-stage and a per-layer dictionary model (eval mode).

    Args:
        weights: a save_pretrained folder of a gray SemanIR, or None for ``config`` with
            random-init weights (seed 0).
        config: registry name used when ``weights`` is None.
    """
    if weights is None:
        torch.manual_seed(0)
        base = build_model(config)
    else:
        base = load_model(weights)
    if not isinstance(base, SemanIR) or base.config.dictionary == "dense":
        raise ValueError(f"--weights must hold a SemanIR model with a KNN dictionary: {weights}")
    if base.in_channels != 1 or base.upscale != 1:
        raise ValueError(f"--weights must hold a gray denoiser (Set12 is gray): {weights}")
    models = {}
    for dictionary in ("stage", "layer"):
        model = SemanIR(dataclasses.replace(base.config, dictionary=dictionary))
        model.load_state_dict(base.state_dict())
        models[dictionary] = model.eval()
    return models


def dictionary_psnr(
    models: dict[str, SemanIR], paths: list[Path], sigma: float, seed: int
) -> dict[str, Any]:
    """PSNR of the noisy input and of each dictionary mode, per image and on average.

    Args:
        models: ``ablation_models`` output.
        paths: clean gray images.
        sigma: noise level on the 0-255 scale.
        seed: noise seed (eval_set12's convention).
    """
    rows = []
    for index, path in enumerate(tqdm(paths, desc="ablation PSNR", unit="image", disable=None)):
        clean = read_image(path, channels="gray")
        noisy = EVAL.noisy_version(clean, sigma, seed, index)
        row = {"image": path.name, "noisy": float(psnr(noisy, clean))}
        for name, model in models.items():
            row[name] = float(psnr(restore(model, noisy[None])[0], clean))
        rows.append(row)
    columns = ("noisy", *models)
    mean = {column: statistics.fmean(r[column] for r in rows) for column in columns}
    return {"images": rows, "mean": mean}


def cell_ms(row: dict[str, Any], prefix: str = "") -> str:
    """'median (min-max)' in ms."""
    times = [row[f"{prefix}{key}"] for key in ("median_ms", "min_ms", "max_ms")]
    return f"{times[0]:.1f} ({times[1]:.1f}-{times[2]:.1f})"


def ratio(value: float | None) -> str:
    """A ratio with 2 decimals, or an empty cell."""
    return "" if value is None else f"{value:.2f}"


def throughput_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the throughput rows."""
    lines = [
        "| window | model | k | size | median ms (min-max) | MP/s | speed x dense "
        "| peak growth MiB | memory x dense |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        model = "dense" if r["dictionary"] == "dense" else "SemanIR"
        head = f"| {window(r)} | {model} | {r['k'] or ''} | {r['size']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | |")
            continue
        lines.append(
            f"{head} {cell_ms(r)} | {r['mpix_per_s']:.3f} | {ratio(r.get('speed_vs_dense'))} "
            f"| {r['peak_growth_mib']:.0f} | {ratio(r.get('memory_vs_dense'))} |"
        )
    return "\n".join(lines)


def ablation_tables(ablation: dict[str, Any]) -> str:
    """Markdown tables of the ablation's forward time and PSNR."""
    lines = [
        "| size | stage ms (min-max) | layer ms (min-max) | layer / stage |",
        "|---:|---|---|---:|",
    ]
    for t in ablation["timing"]:
        if "error" in t:
            lines.append(f"| {t['size']} | {t['error']} | | |")
            continue
        lines.append(
            f"| {t['size']} | {cell_ms(t, 'stage_')} | {cell_ms(t, 'layer_')} "
            f"| {t['layer_over_stage']:.2f} |"
        )
    result = ablation["psnr"]
    lines += [
        "",
        f"PSNR (dB) on Set12, sigma {result['sigma']:g}, k={result['k']}: {result['weights']}",
        "",
        "| image | noisy | stage | layer | layer - stage |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in [*result["images"], {"image": "mean", **result["mean"]}]:
        lines.append(
            f"| {r['image']} | {r['noisy']:.2f} | {r['stage']:.2f} | {r['layer']:.2f} "
            f"| {r['layer'] - r['stage']:+.2f} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """All tables of a report, with the environment and the measuring notes."""
    env = report["environment"]
    return (
        "### SemanIR vs dense window attention: inference throughput and peak memory\n\n"
        f"torch {env['torch']}, {env['cpu']}, {env['threads']} threads"
        f"{' (quick run)' if report['quick'] else ''}.\n\n"
        + "".join(f"- {note}\n" for note in report["notes"])
        + f"\n{throughput_table(report['throughput'])}\n\n"
        f"### Dictionary sharing: one KNN graph per stage vs per layer (same weights)\n\n"
        f"{ablation_tables(report['ablation'])}\n"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput and memory vs size per model/k, and the ablation bars, saved atomically."""
    from common_kernels.runtime.bench import figure

    with figure(path, 2, 2, figsize=(13, 9), savefig={"format": "png", "dpi": 110}) as (fig, axes):
        plot_throughput(axes[0], [r for r in report["throughput"] if "error" not in r])
        plot_ablation(axes[1], report["ablation"])
        fig.suptitle(f"{report['model']}, {report['environment']['threads']} threads")


def plot_throughput(axes: Any, rows: list[dict[str, Any]]) -> None:
    """Lines per model/k: megapixels/s and peak-RSS growth vs image side (dense dashed)."""
    for name in dict.fromkeys(label(r) for r in rows):
        series = [r for r in rows if label(r) == name]
        style = "--" if name.startswith("dense") else "-"
        xs = [r["size"] for r in series]
        axes[0].plot(xs, [r["mpix_per_s"] for r in series], style, marker="o", label=name)
        axes[1].plot(xs, [r["peak_growth_mib"] for r in series], style, marker="o", label=name)
    axes[0].set(title="inference throughput", ylabel="megapixels / s (median)")
    axes[1].set(title="peak memory", ylabel="peak RSS growth, MiB")
    sizes = sorted({r["size"] for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("image side (gray, batch 1)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)


def plot_ablation(axes: Any, ablation: dict[str, Any]) -> None:
    """Bars: stage vs layer forward time per size, and mean PSNR (noisy, stage, layer)."""
    timing = [t for t in ablation["timing"] if "error" not in t]
    positions = range(len(timing))
    for offset, name in ((-0.2, "stage"), (0.2, "layer")):
        medians = [t[f"{name}_median_ms"] for t in timing]
        spread = [
            [m - t[f"{name}_min_ms"] for m, t in zip(medians, timing, strict=True)],
            [t[f"{name}_max_ms"] - m for m, t in zip(medians, timing, strict=True)],
        ]
        xs = [p + offset for p in positions]
        axes[0].bar(xs, medians, 0.4, yerr=spread, capsize=3, label=f"KNN once per {name}")
    axes[0].set_xticks(list(positions), [f"{t['size']}x{t['size']}" for t in timing])
    axes[0].set(title=f"dictionary sharing: forward time (k={ablation['k']})", ylabel="ms")
    axes[0].legend(fontsize=8)
    mean = ablation["psnr"]["mean"]
    axes[1].bar(list(mean), list(mean.values()), color=["0.6", "C0", "C1"])
    axes[1].set_ylim(min(mean.values()) - 1.0, max(mean.values()) + 0.5)
    trained = "trained weights" if ablation["psnr"]["trained"] else "random-init weights"
    axes[1].set(title=f"mean PSNR, sigma {ablation['psnr']['sigma']:g} ({trained})", ylabel="dB")


def write_report(report: dict[str, Any], out: Path, stem: str) -> str:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (drawn from the JSON) atomically.

    Args:
        report: the results and environment.
        out: results folder.
        stem: file name stem ("full" or "quick").

    Returns:
        The markdown tables.
    """
    return write_drawn_report(out / stem, report, markdown, plot)


def run_cuda(quick: bool, out: Path) -> int:
    """The GPU model grid (models_cuda.py), measured in this process; writes and prints it."""
    if not torch.cuda.is_available():
        print("run.py --device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    stem = ("quick" if quick else "full") + "-cuda"
    journal = out / f"{stem}.partial.jsonl"
    done = {}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            row = json.loads(line)
            done[MODELS_CUDA.spec_key(row)] = row
    specs = MODELS_CUDA.model_specs(quick)
    todo = [s for s in specs if MODELS_CUDA.spec_key(s) not in done]
    with journal.open("a") as handle:
        for spec in tqdm(todo, desc="cuda models", unit="config", disable=None):
            done[MODELS_CUDA.spec_key(spec)] = MODELS_CUDA.measure(spec)
            handle.write(json.dumps(done[MODELS_CUDA.spec_key(spec)]) + "\n")
            handle.flush()
    rows = [done[MODELS_CUDA.spec_key(spec)] for spec in specs]
    MODELS_CUDA.add_ratios(rows)
    environment = {**EVAL.environment(), "cuda": torch.cuda.get_device_name()}
    report = {"environment": environment, "quick": quick, "models": rows}
    EVAL.write_text(out / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    text = (
        f"### SemanIR on {environment['cuda']}: time (x dense twin) / memory x dense twin\n\n"
        f"torch {environment['torch']}; median of {MODELS_CUDA.REPEATS} CUDA-event-timed runs "
        f"after {MODELS_CUDA.WARMUP} warm-ups; peak allocated memory.\n\n"
        f"{MODELS_CUDA.table(rows)}\n"
    )
    EVAL.write_text(out / f"{stem}.md", text)
    journal.unlink(missing_ok=True)
    print(text)
    print(f"wrote {out / stem}.json, .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the throughput grid and the ablation, write and print the report."""
    args = parse_args(argv)
    modules = () if args.device == "cuda" else ("matplotlib",)  # the CUDA report draws no plot
    check_benchmark_setup("run.py", "semanir", modules=modules, folders={"--out": args.out})
    if args.device == "cuda":
        args.out.mkdir(parents=True, exist_ok=True)
        return run_cuda(args.quick, args.out)
    torch.set_num_threads(args.threads)
    paths = EVAL.set12_paths(args.data_root, 2 if args.quick else 4)  # fail before measuring
    k = get_config(BASE_CONFIG).resolved_inference_k
    stem = "quick" if args.quick else "full"
    journal = args.out / f"{stem}.partial.jsonl"
    throughput = run_all(throughput_specs(args.quick, args.threads), journal)
    add_ratios(throughput)
    ablation_runs = run_all(ablation_specs(args.quick, args.threads, k), journal)
    models = ablation_models(args.weights)
    psnr_result = dictionary_psnr(models, paths, ABLATION_SIGMA, NOISE_SEED)
    weights = (
        f"trained weights from {args.weights}"
        if args.weights
        else f"random-init {BASE_CONFIG} (no --weights: the PSNR comparison is not meaningful)"
    )
    psnr_result.update(
        sigma=ABLATION_SIGMA,
        k=models["stage"].config.resolved_inference_k,
        trained=args.weights is not None,
        weights=weights,
    )
    report = {
        "environment": {**EVAL.environment(), "threads": args.threads},
        "quick": args.quick,
        "model": BASE_CONFIG,
        "notes": list(NOTES),
        "throughput": throughput,
        "ablation": {
            "k": k,
            "timing": ablation_timing(ablation_runs),
            "runs": ablation_runs,
            "psnr": psnr_result,
        },
    }
    tables = write_report(report, args.out, stem)
    journal.unlink(missing_ok=True)
    print(tables)
    print(f"wrote {args.out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
