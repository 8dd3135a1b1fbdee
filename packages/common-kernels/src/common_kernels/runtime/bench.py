"""What the packages' benchmark scripts share: the device and precision a measurement runs in,
the machine its report names, random weights of the published sizes, and the report's files.

A script measures on ``--device cpu|cuda`` in ``--dtype fp32|fp16|bf16`` (:data:`DTYPES`,
:func:`torch_dtype`), refuses ``--device cuda`` on a machine without one before any work
(:func:`require_cuda`, with the modules and folders in :func:`check_run`), imports the scripts
beside it with :func:`load_sibling`, times after
:func:`synchronize`, reports memory as :func:`peak_rss_mib` / :func:`current_rss_mib`, and writes
its report with :func:`machine` (where it ran) and :func:`write_report` (or
:func:`write_drawn_report`, tables and plot made from the saved JSON), and draws it in a
:func:`figure` (or with :func:`pyplot` and :func:`save_figure`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from common_kernels.runtime.cli import check_benchmark_setup, cpu_model
from common_kernels.runtime.files import atomic_write, write_json, write_text
from common_kernels.runtime.testing import load_script

DTYPES = ("fp32", "fp16", "bf16")
NO_CUDA = (
    "--device cuda: no CUDA device is available (torch.cuda.is_available() is False); use "
    "--device cpu"
)


def default_dtype(device: str) -> str:
    """A benchmark's precision when ``--dtype`` is left out: ``fp16`` on CUDA, ``fp32`` on the CPU.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
    """
    return "fp16" if device == "cuda" else "fp32"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``"fp32"``, ``"fp16"`` or ``"bf16"``.

    Args:
        name: one of :data:`DTYPES`.
    """
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def require_cuda(parser: argparse.ArgumentParser, device: str) -> None:
    """Refuse ``--device cuda`` on a machine without a CUDA device, as ``parser``'s error (one
    line, exit status 2), before anything is measured.

    Args:
        parser: the script's parser.
        device: the ``--device`` value.
    """
    if device == "cuda" and not torch.cuda.is_available():
        parser.error(NO_CUDA)


def check_run(
    parser: argparse.ArgumentParser,
    package: str,
    device: str,
    folders: Mapping[str, Path | None],
    modules: Sequence[str] = ("matplotlib", "psutil"),
) -> None:
    """What a benchmark run checks before any work, each problem one line and exit status 2: its
    optional modules and output folders
    (:func:`common_kernels.runtime.cli.check_benchmark_setup`), then ``--device cuda`` on a
    machine without CUDA (:func:`require_cuda`).

    Args:
        parser: the script's parser (its ``prog`` names the script in the lines).
        package: the distribution whose ``bench`` extra lists ``modules``.
        device: the ``--device`` value.
        folders: output folders by flag (``{"--results": path}``; None: left out).
        modules: the optional modules the run needs.
    """
    check_benchmark_setup(parser.prog, package, modules=modules, folders=folders)
    require_cuda(parser, device)


def load_sibling(folder: str | os.PathLike, name: str, prefix: str) -> ModuleType:
    """Import the script ``<folder>/<name>.py`` beside a benchmark as module ``<prefix>_<name>``
    (registered in ``sys.modules``), whether the benchmark runs as a script or is imported.

    Args:
        folder: the benchmark's folder.
        name: the script's file name without ``.py``.
        prefix: the package's prefix of the module names (``"semanir_bench"``).
    """
    return load_script(Path(folder) / f"{name}.py", f"{prefix}_{name}")


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); no-op on the CPU.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
    """
    if device == "cuda":
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    """The GPU's name for ``"cuda"``, else the CPU's model.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
    """
    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """The resident memory of this process now, in MiB (needs psutil, the ``bench`` extras)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def machine(device: str, dtype: str, threads: int, libraries: tuple[str, ...] = ()) -> dict:
    """Where a benchmark ran, for its report: the device and its name, the precision, CUDA's
    version, torch's threads, the CPU (model, physical cores, memory, load average now), and the
    versions of torch, ``libraries`` and Python.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        dtype: one of :data:`DTYPES`.
        threads: ``torch.set_num_threads`` of the measuring processes.
        libraries: distributions whose versions the report names (``("diffusers",)``).
    """
    import psutil

    found: dict[str, Any] = {
        "device": device,
        "device_name": device_name(device),
        "dtype": dtype,
        "cuda": torch.version.cuda,
        "threads": threads,
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
    }
    found.update({name: metadata.version(name) for name in libraries})
    found["python"] = platform.python_version()
    return found


def random_weights(module: nn.Module, device: str | torch.device, seed: int) -> nn.Module:
    """A module built on the meta device, allocated on ``device`` (in its dtype) with cheap
    random weights: weights ~ N(0, 1/fan_in), norm scales 1, biases 0, so that activations stay
    bounded at any depth (no inf in fp16). Buffers are left uninitialised: give it a module
    without any.

    Args:
        module: the module, its parameters on the meta device.
        device: where to allocate it (the weights are drawn there).
        seed: seed of the weights.
    """
    module = module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim > 1:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
    return module


def write_report(stem: Path, report: Mapping[str, Any], table: str) -> None:
    """A benchmark's results: ``STEM.json`` (the report) and ``STEM.md`` (its table), each
    written atomically (folders made as needed); the table is printed too.

    Args:
        stem: the files' path without suffix (``results/diffeat_bench_quick``).
        report: what the run measured, JSON-serialisable.
        table: the report as Markdown.
    """
    write_text(stem.with_name(f"{stem.name}.json"), json.dumps(report, indent=1), make_parents=True)
    write_text(stem.with_name(f"{stem.name}.md"), table, make_parents=True)
    print(table)


def write_drawn_report(
    stem: Path,
    report: Mapping[str, Any],
    markdown: Callable[[Any], str],
    plot: Callable[[Any, Path], None],
    *,
    indent: int = 1,
) -> str:
    """A benchmark's results: ``STEM.json`` (the report), then ``STEM.md`` (``markdown`` of it)
    and ``STEM.png`` (``plot`` of it), both made from the JSON as saved, so that they show
    what the file holds (as a later redraw from the file would); each written atomically
    (folders made as needed). Returns the Markdown.

    Args:
        stem: the files' path without suffix (``results/quick``).
        report: what the run measured, JSON-serialisable.
        markdown: the report's tables from its JSON.
        plot: draws the report from its JSON into the given image file.
        indent: the JSON's indentation.
    """
    saved = write_json(
        stem.with_name(f"{stem.name}.json"), report, indent=indent, make_parents=True
    )
    report = json.loads(saved.read_text(encoding="utf-8"))
    text = markdown(report)
    write_text(stem.with_name(f"{stem.name}.md"), text, make_parents=True)
    plot(report, stem.with_name(f"{stem.name}.png"))
    return text


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files, no display), imported when a report is
    drawn (matplotlib is in the ``bench`` extras)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_figure(figure: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write a matplotlib figure to ``path`` atomically (the format by its suffix); returns it.

    Args:
        figure: the figure.
        path: the image file.
        **savefig: ``Figure.savefig`` options (``dpi``).
    """
    with atomic_write(path, make_parents=True) as temp:
        figure.savefig(temp, **savefig)
    return Path(path)


@contextlib.contextmanager
def figure(
    path: str | os.PathLike,
    *grid: int,
    savefig: Mapping[str, Any] | None = None,
    **subplots: Any,
) -> Iterator[tuple[Any, Any]]:
    """A new figure and its axes (``pyplot().subplots(*grid, **subplots)``) for the block to
    draw in; when it ends, the figure is laid out tight and written to ``path`` with
    :func:`save_figure`. The figure is closed either way (a script may draw many).

    Args:
        path: the image file.
        *grid: rows and columns of axes (none: one axes).
        savefig: ``Figure.savefig`` options (``{"dpi": 100}``).
        **subplots: ``pyplot.subplots`` options (``figsize``).
    """
    plt = pyplot()
    fig, axes = plt.subplots(*grid, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        save_figure(fig, path, **(savefig or {}))
    finally:
        plt.close(fig)
