"""cpu_speed.py's report: rows from the journal (medians, FLOPs, ratios), the environment,
the markdown tables and the plot, written atomically.

A sibling of ``cpu_speed.py``, imported by name (``cpu_speed.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from cpu_speed_driver import Journal
from cpu_speed_plan import (
    CURRENT,
    REPOSITORY,
    Preset,
    flops_key,
    group_key,
    inference_specs,
    input_name,
    spec_key,
    training_specs,
)

NOTES = (
    "Inference: semanir.restore(model, x, tile=None), fp32, batch 1, a torch.rand input; "
    "random weights for the dense twins and DnCNN (time does not depend on weight values).",
    "Interleaved rounds: one process per configuration, warmed up once, then each round times "
    "one call of every configuration of the input in turn; median (min-max) of the rounds. "
    "A training round runs three optimizer steps back to back and times the last two "
    "(s/step: their mean), as a training loop runs them.",
    "s/MP: seconds per megapixel of the input; GFLOP/MP: torch.utils.flop_counter "
    "(CPU flash attention and the C++ attention counted with the SDPA formula); "
    "GFLOP/s = GFLOP/MP / (s/MP).",
    "x DnCNN: s/MP over the s/MP of the DnCNN (gray or colour) in the same rounds, same input "
    "and threads; x dense: over the dense-window twin's; < 1 is faster.",
    "Peak RSS: ru_maxrss of the configuration's own process (torch and the model included).",
    "x baseline: SemanIR's time over the same configuration's with the code of the baseline "
    "revision (its semanir and common-kernels sources), measured in the same rounds.",
    "Per round: the ratio of the two times of each round (timed seconds apart), median "
    "(min-max) over the rounds; the machine's drift between rounds cancels in it, not in the "
    "ratio of the two medians.",
    "Training: one optimizer step (forward, loss, backward, AdamW, schedule) of each shipped "
    "tiny config at its batch and patch size on random batches, k as RestorationModule draws "
    "it; x DnCNN: over a DnCNN step on the same input batch; data loading and EMA left out. "
    "The process is set up as `semanir fit` sets it up (0.4.6+: semanir.allocator keeps freed "
    "blocks; a baseline revision without it runs glibc's defaults).",
)


def summarize(seconds: list[float], megapixels: float, flop: int | None) -> dict[str, Any]:
    """Median/min/max seconds of the rounds, per megapixel, GFLOP/MP and GFLOP/s.

    Args:
        seconds: one time per round.
        megapixels: of the input (or of a training step's input batch).
        flop: FLOPs of one call (None when the count failed).
    """
    median = statistics.median(seconds)
    row: dict[str, Any] = {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "megapixels": megapixels,
        "s_per_mp": median / megapixels,
        "min_s_per_mp": min(seconds) / megapixels,
        "max_s_per_mp": max(seconds) / megapixels,
        "per_s": 1.0 / median,
    }
    if flop is not None:
        row["gflop"] = flop / 1e9
        row["gflop_per_mp"] = flop / 1e9 / megapixels
        row["gflop_per_s"] = row["gflop_per_mp"] / row["s_per_mp"]
    return row


def megapixels(spec: dict[str, Any]) -> float:
    """Megapixels of an inference input, or of a training step's low-quality batch."""
    if spec["kind"] == "infer":
        return spec["width"] * spec["height"] / 1e6
    return spec["batch"] * spec["lq_patch"] ** 2 / 1e6


def result_rows(specs: list[dict[str, Any]], journal: Journal) -> list[dict[str, Any]]:
    """One row per spec: the spec, its rounds, summary, FLOPs, peak RSS (or its error)."""
    rows = []
    for spec in specs:
        key = spec_key(spec)
        rounds = sorted(journal.find("round", key), key=lambda r: r["round"])
        starts = journal.find("start", key)
        row: dict[str, Any] = {**spec, "label": label(spec), "input": input_name(spec)}
        errors = journal.find("error", key)
        if errors:
            row["error"] = errors[-1]["error"]
        if not rounds:
            row.setdefault("error", "not measured")
            rows.append(row)
            continue
        flops = journal.find("flops", flops_key(spec))
        flop = flops[-1]["flop"] if flops else None
        losses = journal.find("losses", key)
        if losses:
            row["losses"] = losses[-1]["losses"]
        if starts and spec.get("mode") == "compiled":
            row["compile_s"] = starts[-1]["warmup"]["seconds"]
        row.update(
            params=starts[-1]["params"] if starts else None,
            seconds=[r["seconds"] for r in rounds],
            round_index=[r["round"] for r in rounds],
            load=[r["load"] for r in rounds],
            peak_rss_mib=max(r["peak_rss_mib"] for r in [*rounds, *(s["warmup"] for s in starts)]),
            flop_by_op=flops[-1]["flop_by_op"] if flops else None,
            **summarize([r["seconds"] for r in rounds], megapixels(spec), flop),
        )
        rows.append(row)
    return rows


def label(spec: dict[str, Any]) -> str:
    """'semanir_tiny_denoise_gray', 'dense twin of semanir_tiny_denoise_gray' or the DnCNN."""
    name = spec["model"] if spec["kind"] == "infer" else spec["config"]
    if spec["variant"] == "dense":
        return f"dense twin of {name}"
    if spec["variant"] == "arch":
        return f"{name} (random weights)"
    if spec["variant"] == "dncnn":
        return f"DnCNN ({spec['model']})" if spec["kind"] == "infer" else f"DnCNN for {name}"
    mode = spec.get("mode", "fp32")
    name = name if mode == "fp32" else f"{name}, {mode}"
    return name if spec["code"] == CURRENT else f"{name} (baseline {spec['code']})"


def per_round(row: dict[str, Any], other: dict[str, Any]) -> dict[str, float] | None:
    """Median, min and max over the rounds both rows ran of the ratio of their two times in
    that round (None without rounds in common)."""
    theirs = dict(zip(other.get("round_index", ()), other.get("seconds", ()), strict=True))
    mine = zip(row.get("round_index", ()), row.get("seconds", ()), strict=True)
    ratios = [seconds / theirs[r] for r, seconds in mine if r in theirs]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``x_dncnn`` (and ``x_dense``, ``x_baseline``, ``flop_x_dncnn``) to every measured
    row, in place, and ``x_dncnn_rounds`` / ``x_baseline_rounds`` (:func:`per_round`).

    ``x_dncnn``: time over the DnCNN row's of the same group and threads (time per MP for
    inference; per step for training); ``x_dense``: over the dense twin's (a SemanIR row whose
    model the twin row lists in ``twin_of``); ``x_baseline``: over the same SemanIR row's (same
    mode) with the baseline revision's code.
    """
    ok = [r for r in rows if "median_s" in r]
    for row in ok:
        peers = [r for r in ok if group_key(r) == group_key(row) and r["threads"] == row["threads"]]
        dncnn = next((r for r in peers if r["variant"] == "dncnn"), None)
        if dncnn is not None:
            row["x_dncnn"] = row["s_per_mp"] / dncnn["s_per_mp"]
            if row is not dncnn and (rounds := per_round(row, dncnn)) is not None:
                row["x_dncnn_rounds"] = rounds
            if "gflop_per_mp" in row and "gflop_per_mp" in dncnn:
                row["flop_x_dncnn"] = row["gflop_per_mp"] / dncnn["gflop_per_mp"]
        if row["variant"] != "semanir" or row["code"] != CURRENT:
            continue
        baseline = next((r for r in peers if r["variant"] == "semanir" and r["code"] != CURRENT
                         and r["model"] == row["model"]
                         and r.get("mode", "fp32") == row.get("mode", "fp32")), None)  # fmt: skip
        if baseline is not None:
            row["x_baseline"] = row["s_per_mp"] / baseline["s_per_mp"]
            if (rounds := per_round(row, baseline)) is not None:
                row["x_baseline_rounds"] = rounds
        twin = next(
            (r for r in peers if r["variant"] == "dense" and row["model"] in r["twin_of"]), None
        )
        if twin is not None:
            row["x_dense"] = row["s_per_mp"] / twin["s_per_mp"]


def git_state() -> dict[str, Any] | None:
    """The commit of this checkout and the modified source files of semanir and common-kernels
    (None outside a git checkout): what the numbers were measured on."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--",
             "packages/semanir/src", "packages/common-kernels/src"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "modified": [line[3:] for line in status.splitlines()]}


def environment(plan: Preset) -> dict[str, Any]:
    """torch, CPU, cores, thread counts, package versions and the checkout."""
    import common_kernels
    import semanir
    from common_kernels.runtime.cli import cpu_model  # 0.3.4: the parent's, not a baseline worker's

    return {
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "threads": list(plan.threads),
        "train_threads": plan.train_threads,
        "baseline": plan.baseline,
        "modes": list(plan.modes),
        "semanir": semanir.__version__,
        "common_kernels": common_kernels.__version__,
        "git": git_state(),
    }


def load_summary(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Min, median and max of the 1-minute load average sampled before every timed call."""
    loads = [value for row in rows for value in row.get("load", [])]
    if not loads:
        return None
    return {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}


def build_report(plan: Preset, quick: bool, journal: Journal, elapsed_s: float) -> dict[str, Any]:
    """The report of a run from its journal: rows with ratios, environment, load, notes."""
    inference = result_rows(inference_specs(plan), journal)
    training = result_rows(training_specs(plan), journal)
    add_ratios(inference)
    add_ratios(training)
    return {
        "environment": environment(plan),
        "quick": quick,
        "rounds": plan.rounds,
        "train_rounds": plan.train_rounds,
        "elapsed_s": elapsed_s,
        "load": load_summary([*inference, *training]),
        "notes": list(NOTES),
        "inference": inference,
        "training": training,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or an empty cell."""
    return "" if value is None else f"{value:.{digits}f}"


def spread(row: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """'median (min-max)' of a row's seconds per MP (``scale``: times the MP, for per-step)."""
    values = [row[f"{key}s_per_mp"] * scale for key in ("", "min_", "max_")]
    return f"{values[0]:.{digits}f} ({values[1]:.{digits}f}-{values[2]:.{digits}f})"


def round_spread(ratios: dict[str, float] | None, inverse: bool = False) -> str:
    """'median (min-max)' of :func:`per_round`'s ratios (``inverse``: of their reciprocals, a
    speed-up), or an empty cell."""
    if ratios is None:
        return ""
    values = [ratios["median"], ratios["min"], ratios["max"]]
    if inverse:
        values = [1 / values[0], 1 / values[2], 1 / values[1]]
    return f"{values[0]:.2f} ({values[1]:.2f}-{values[2]:.2f})"


def size_name(row: dict[str, Any]) -> str:
    return f"{row['width']}x{row['height']}"


def ratio_table(rows: list[dict[str, Any]], threads: int) -> str:
    """Models x input sizes: x DnCNN per model (DnCNN rows: their s/MP), at ``threads``."""
    rows = [r for r in rows if r["threads"] == threads]
    sizes = list(dict.fromkeys(size_name(r) for r in rows))
    lines = [
        f"| model ({threads} thread{'s' if threads > 1 else ''}) | " + " | ".join(sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for name in dict.fromkeys(
        ("DnCNN " + ("gray" if r["channels"] == 1 else "rgb") + ", s/MP")
        if r["variant"] == "dncnn" else r["label"]
        for r in rows
    ):  # fmt: skip
        cells = []
        for size in sizes:
            row = next((r for r in rows if size_name(r) == size and _summary_name(r) == name), None)
            if row is None:
                cells.append("")
            elif "median_s" not in row:
                cells.append("failed")
            elif row["variant"] == "dncnn":
                cells.append(f"{row['s_per_mp']:.1f}")
            else:
                cells.append(f"{row['x_dncnn']:.2f}x" if "x_dncnn" in row else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary_name(row: dict[str, Any]) -> str:
    if row["variant"] == "dncnn":
        return "DnCNN " + ("gray" if row["channels"] == 1 else "rgb") + ", s/MP"
    return row["label"]


def inference_table(rows: list[dict[str, Any]]) -> str:
    """Every inference row: s/MP, GFLOP/MP, GFLOP/s, peak RSS, x DnCNN, x dense twin."""
    lines = [
        "| input | model | threads | s/MP median (min-max) | GFLOP/MP | GFLOP/s | peak RSS MiB "
        "| x DnCNN | per round | x dense | x baseline | per round |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        name = r["label"] + (f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else "")
        head = f"| {r['input']} | {name} | {r['threads']} |"
        if "median_s" not in r:
            lines.append(f"{head} {r.get('error', 'not measured')} | | | | | | | | |")
            continue
        lines.append(
            f"{head} {spread(r)} | {fmt(r.get('gflop_per_mp'), 0)} | {fmt(r.get('gflop_per_s'), 1)}"
            f" | {r['peak_rss_mib']:.0f} | {fmt(r.get('x_dncnn'))} "
            f"| {round_spread(r.get('x_dncnn_rounds'))} | {fmt(r.get('x_dense'))} "
            f"| {fmt(r.get('x_baseline'))} | {round_spread(r.get('x_baseline_rounds'))} |"
        )
    return "\n".join(lines)


def training_table(rows: list[dict[str, Any]]) -> str:
    """Every training row: s/step, steps/s, GFLOP/step, GFLOP/s, peak RSS, x DnCNN, and the
    steps/s over the baseline code's (speed-up)."""
    lines = [
        "| config | model | batch x input | threads | s/step median (min-max) | steps/s "
        "| GFLOP/step | GFLOP/s | peak RSS MiB | x DnCNN | steps/s x baseline | per round |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        model = r["label"] if r["variant"] == "semanir" else f"DnCNN ({r['model']})"
        shape = f"{r['batch']} x {r['lq_patch']}x{r['lq_patch']}"
        head = f"| {r['config']} | {model} | {shape} | {r['threads']} |"
        if "median_s" not in r:
            lines.append(f"{head} {r.get('error', 'not measured')} | | | | | | | |")
            continue
        speedup = 1 / r["x_baseline"] if "x_baseline" in r else None
        lines.append(
            f"{head} {spread(r, r['megapixels'])} | {r['per_s']:.3f} | {fmt(r.get('gflop'), 1)} "
            f"| {fmt(r.get('gflop_per_s'), 1)} | {r['peak_rss_mib']:.0f} "
            f"| {fmt(r.get('x_dncnn'))} | {fmt(speedup)} "
            f"| {round_spread(r.get('x_baseline_rounds'), inverse=True)} |"
        )
    return "\n".join(lines)


def loss_table(rows: list[dict[str, Any]]) -> str:
    """Per training config: the losses of this checkout's code and the baseline's over the
    same steps from the same seed, and their largest difference."""
    lines = [
        "| config | steps | first loss | last loss (current) | last loss (baseline) "
        "| max abs difference | max relative difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["variant"] != "semanir" or r["code"] != CURRENT or "losses" not in r:
            continue
        base = next((b for b in rows if b["config"] == r["config"] and b["variant"] == "semanir"
                     and b["code"] != CURRENT and "losses" in b), None)  # fmt: skip
        if base is None:
            continue
        ours, theirs = r["losses"], base["losses"]
        diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
        relative = max(d / abs(b) for d, b in zip(diffs, theirs, strict=True))
        lines.append(
            f"| {r['config']} | {len(ours)} | {ours[0]:.5f} | {ours[-1]:.5f} | {theirs[-1]:.5f} "
            f"| {max(diffs):.2e} | {relative:.2e} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables, with the environment, the machine load and the notes."""
    env = report["environment"]
    git = env.get("git")
    checkout = ""
    if git:
        state = "clean" if not git["modified"] else "modified: " + ", ".join(git["modified"])
        checkout = f" Commit {git['commit']} (semanir and common-kernels sources {state})."
    load = report["load"]
    load_text = (
        f" 1-minute load average before the timed calls: {load['min']:.1f}-{load['max']:.1f} "
        f"(median {load['median']:.1f}) on {env['cores']} cores; other work shared the machine "
        "whenever it exceeds the threads in use."
        if load else ""
    )  # fmt: skip
    threads = ", ".join(str(t) for t in env["threads"])
    text = (
        f"### SemanIR on the CPU: every bundled model, its dense twin and DnCNN"
        f"{' (quick run)' if report['quick'] else ''}\n\n"
        f"torch {env['torch']}, {env['cpu']} ({env['cpu_capability']}), threads {threads} "
        f"(training: {env['train_threads']}), {report['rounds']} interleaved rounds "
        f"(training: {report['train_rounds']}); {report['elapsed_s'] / 60:.1f} min."
        f"{checkout}{load_text}\n\n" + "".join(f"- {note}\n" for note in report["notes"])
    )
    for threads_used in env["threads"]:
        text += (
            f"\nTime per megapixel over DnCNN's (x DnCNN; DnCNN rows: its s/MP), "
            f"{threads_used} thread{'s' if threads_used > 1 else ''}:\n\n"
            f"{ratio_table(report['inference'], threads_used)}\n"
        )
    text += f"\n#### Inference\n\n{inference_table(report['inference'])}\n"
    if report["training"]:
        text += f"\n#### Training steps\n\n{training_table(report['training'])}\n"
    if any("losses" in r for r in report["training"]):
        text += (
            "\n#### Losses of the first steps, this checkout against the baseline (same seed, "
            f"same batches)\n\n{loss_table(report['training'])}\n"
        )
    return text


def plot(report: dict[str, Any], path: Path) -> None:
    """x DnCNN and GFLOP/s per model and input, and the training steps, saved atomically."""
    from common_kernels.runtime.bench import figure

    rows = [r for r in report["inference"] if "median_s" in r]
    threads = report["environment"]["threads"]
    with figure(path, 2, 2, figsize=(15, 10), savefig={"format": "png", "dpi": 100}) as (fig, axes):
        for ax, value, title in (
            (axes[0, 0], "x_dncnn", "time per megapixel / DnCNN's (same rounds)"),
            (axes[0, 1], "gflop_per_s", "achieved GFLOP/s"),
            (axes[1, 0], "peak_rss_mib", "peak RSS, MiB"),
        ):
            grouped_bars(ax, rows, value, threads)
            ax.set_title(title)
        axes[0, 0].axhline(1.0, color="0.3", lw=1, ls="--")
        training = [r for r in report["training"] if "median_s" in r]
        configs = list(dict.fromkeys(r["config"] for r in training))
        for offset, variant in ((-0.2, "semanir"), (0.2, "dncnn")):
            values = [
                next(
                    (r["per_s"] for r in training if r["config"] == c and r["variant"] == variant),
                    0,
                )
                for c in configs
            ]
            name = "SemanIR" if variant == "semanir" else "DnCNN, same input batch"
            axes[1, 1].bar([i + offset for i in range(len(configs))], values, 0.4, label=name)
        axes[1, 1].set_xticks(range(len(configs)), configs, rotation=20, fontsize=8)
        axes[1, 1].set(title=f"training steps/s ({report['environment']['train_threads']} threads)",
                       ylabel="steps / s")  # fmt: skip
        axes[1, 1].legend(fontsize=8)
        env = report["environment"]
        fig.suptitle(f"SemanIR on the CPU: {env['cpu']}, torch {env['torch']}"
                     f"{' (quick run)' if report['quick'] else ''}")  # fmt: skip


def grouped_bars(ax: Any, rows: list[dict[str, Any]], value: str, threads: list[int]) -> None:
    """Bars of ``value`` per model (colour) within each input x threads group (x position)."""
    keys = list(dict.fromkeys((r["input"], r["threads"]) for r in rows))
    names = list(dict.fromkeys(_summary_name(r) for r in rows))
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        xs, ys = [], []
        for position, (input_, t) in enumerate(keys):
            row = next((r for r in rows if (r["input"], r["threads"]) == (input_, t)
                        and _summary_name(r) == name), None)  # fmt: skip
            if row is not None and value in row:
                xs.append(position - 0.4 + width * (index + 0.5))
                ys.append(row[value])
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(keys)), [f"{i}\n{t} thr" for i, t in keys], fontsize=7)
    ax.legend(fontsize=6)
    ax.grid(True, axis="y", alpha=0.3)


def write_report(report: dict[str, Any], out: Path, stem: str) -> str:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (drawn from the JSON) atomically.

    Returns:
        The markdown text.
    """
    # imported at the call: the parent's common-kernels (a worker may run an older checkout)
    from common_kernels.runtime.bench import write_drawn_report

    return write_drawn_report(out / stem, report, markdown, plot)
