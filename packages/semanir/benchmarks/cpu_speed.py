"""SemanIR's speed on the CPU: every bundled model and its dense twin against a DnCNN.

    python packages/semanir/benchmarks/cpu_speed.py [--quick] [--out DIR] [--threads N ...]
        [--rounds N] [--sizes WxH ...] [--baseline GIT_REF] [--loss-steps N]
        [--modes fp32 bf16 compiled onnx]

Inference: every bundled model (``semanir models``; ``semanir.load_model(name)``), its
dense-window twin (the same config with ``dictionary="dense"``, random weights: time does not
depend on weight values; one twin serves every bundled model of the same config) and a DnCNN of
the published size (``semanir.build_model("dncnn_denoise_gray")``: 17 layers, 64 features; the
colour DnCNN for RGB inputs; random weights) restore the same random input through the public
API, ``semanir.restore(model, x, tile=None)`` (fp32, batch 1): gray 256x256, 384x384, 481x321
and 1024x1024 for the gray models (``--sizes`` replaces them), the same sizes in RGB for the
colour denoiser, a 128x128 RGB input for the x4 super-resolution model (DnCNN restores that
same input). Sizes are width x height.

Training: one optimizer step of each shipped tiny training config
(``src/semanir/configs/*_tiny*.yaml``) built as ``semanir fit`` builds it (the config's model
section gives ``RestorationModule`` its model, loss, AdamW and schedule; the data section its
batch and patch size), on random batches, with the dictionary size that ``RestorationModule``
draws at that step; beside it the same step of a DnCNN (the colour one for RGB configs) on the
same low-quality batch (for x4 SR: the 1/4-size patches the model takes), whose time makes the
ratio. The data pipeline and callbacks (EMA) are left out. A training worker sets its process
up as that code's ``semanir fit`` does: from 0.4.6 on, :func:`semanir.allocator.keep_freed_memory`
(glibc keeps freed blocks: no page faults for each step's activations); a baseline revision
without that module runs glibc's defaults, as its ``semanir fit`` did.

``--modes``: how SemanIR's rows run besides fp32 eager (the default; with ``--baseline`` the
baseline code's rows run in each mode too, and "x baseline" compares a mode with itself):
``bf16`` (``restore(..., dtype=torch.bfloat16)``: autocast; AMX/AVX-512-BF16 CPUs run its
matmuls and convolutions in bf16), ``compiled`` (``restore(..., compile=True)``: inductor;
the warm-up call on the whole input compiles, its time is the "compile s" column) and ``onnx``
(the model exported by ``semanir.export_onnx`` once, outside the timing, and run by ONNX
Runtime's CPU provider with the row's thread count on the same input).

``--baseline REF``: SemanIR's rows are measured twice in the same rounds, with this checkout's
code and with the semanir and common-kernels sources of the git revision REF (extracted with
``git archive`` and put first on the worker's ``PYTHONPATH``): "x baseline" is the time over
that revision's. ``--loss-steps N`` also trains each tiny config N steps from the same seed with
both codes and compares the losses (the same step function, on the same random batches).

Every configuration (model, input, threads, code) runs in its own process (``--worker``), so
its peak RSS (``ru_maxrss``) is its own. The processes of one input (both thread counts) start
together and are warmed up (one call; for inputs above 0.25 MP on a 256x256 crop of the input), then
measured in interleaved rounds: each round times one call of every configuration in turn (the
order rotates each round), so machine noise hits all alike; tables give the median and min-max
of the rounds. A training round runs three optimizer steps back to back and times the last
two (their mean), as a training loop runs them: the first step of a round finds the process's
memory out of cache after the other configurations' rounds (0.4.7 and earlier timed that one
step alone).
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (one count per model and input,
after the rounds; the CPU flash-attention op that torch's table lacks, and
common-kernels' C++ attention, are counted with the SDPA formula), giving GFLOP per megapixel
of the input and achieved GFLOP/s (GFLOP/MP divided by seconds per MP). "x DnCNN" is the time
per megapixel over that of the DnCNN measured in the same rounds (same input and threads).

Full run: threads 1 and 2, 3 rounds (training: 2 threads, 3 rounds). ``--quick``: 2 threads,
the 256x256 inputs and the SR input, 2 rounds, the training steps of the three distinct
architectures at one config each.

Writes ``<out>/cpu_speed.json`` (``cpu_speed_quick.json`` for ``--quick``; raw rounds,
environment, machine load), ``.md`` (tables) and ``.png`` (drawn from the JSON), atomically.
Every finished round is journaled in ``<out>/<stem>.partial.jsonl``; a run cut short resumes
from it (configurations left unfinished restart in a fresh process, with a warm-up, and measure
only their missing rounds); the journal is removed once the report is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from tqdm import tqdm

from semanir.bundled import installed_models

HERE = Path(__file__).resolve().parent
SIZES = ((256, 256), (384, 384), (481, 321), (1024, 1024))  # (width, height)
MIN_SIZE = 64  # --sizes: the smallest side (a U-Net input is padded to multiples of 32)
QUICK_SIZES = ((256, 256),)
SR_SIZE = (128, 128)
DNCNN = {1: "dncnn_denoise_gray", 3: "dncnn_denoise_color"}
TRAIN_CONFIGS = (
    "denoise_gray_tiny",
    "denoise_gray_tiny_bundled",
    "jpeg_gray_tiny",
    "denoise_color_tiny",
    "sr_x4_tiny",
)
QUICK_TRAIN_CONFIGS = ("denoise_gray_tiny_bundled", "denoise_color_tiny", "sr_x4_tiny")
WARMUP_FULL_MAX_MP = 0.25  # larger inputs warm up on a crop of this side
TRAIN_STEPS_PER_ROUND = 3  # a training round: one step back into cache, two timed back to back
WARMUP_CROP = 256
SEED = 0
COMMAND_TIMEOUT_S = 1800
LOSS_STEP_TIMEOUT_S = 30  # and per training step of a loss comparison (0.3.1: 2-10 s a step here)
CURRENT = "current"  # the code of this checkout
MODES = ("fp32", "bf16", "compiled", "onnx")
REPOSITORY = HERE.parents[2]
BASELINE_SOURCES = ("packages/semanir/src", "packages/common-kernels/src")
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


# ----------------------------------------------------------------------------------------------
# The plan: configurations, grouped by input
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a run measures.

    Args:
        threads: torch thread counts of the inference configurations.
        sizes: (width, height) of the inputs of the denoisers.
        rounds: timed rounds per configuration.
        train_configs: names of the training configs (``src/semanir/configs/<name>.yaml``).
        train_threads: torch threads of the training steps.
        train_rounds: timed optimizer steps per training configuration.
        baseline: the git revision whose code SemanIR's rows also run with (None: none).
        modes: how SemanIR's rows run (both codes' with a baseline): "fp32" (eager),
            "bf16", "compiled", "onnx".
        loss_steps: optimizer steps whose losses are compared between the codes (0: none).
        archs: registry architectures (``semanir.build_model`` names, random weights) whose
            restores are timed instead of the bundled models' and their dense twins' (a
            targeted run for choosing a model size against DnCNN); empty: the bundled models.
    """

    threads: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    rounds: int
    train_configs: tuple[str, ...]
    train_threads: int
    train_rounds: int
    baseline: str | None = None
    loss_steps: int = 0
    modes: tuple[str, ...] = ("fp32",)
    archs: tuple[str, ...] = ()


def baseline_sources(ref: str) -> list[str]:
    """The semanir and common-kernels source folders of git revision ``ref``, extracted once
    (``git archive``) into ``<this folder>/results/baseline-<commit>`` (ignored by git)."""
    commit = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    folder = HERE / "results" / f"baseline-{commit}"
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", "--format=tar", commit, *BASELINE_SOURCES],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(folder)
    return [str(folder / source) for source in BASELINE_SOURCES]


def preset(
    quick: bool,
    threads: list[int] | None = None,
    rounds: int | None = None,
    sizes: list[tuple[int, int]] | None = None,
    train_configs: list[str] | None = None,
) -> Preset:
    """The full or quick preset, with ``threads``, ``rounds``, the denoisers' input ``sizes``
    (width, height) and the ``train_configs`` replaced when given."""
    base = (
        Preset((2,), QUICK_SIZES, 2, QUICK_TRAIN_CONFIGS, 2, 2)
        if quick
        else Preset((1, 2), SIZES, 3, TRAIN_CONFIGS, 2, 3)
    )
    if threads:
        base = dataclasses.replace(base, threads=tuple(threads), train_threads=max(threads))
    if rounds:
        base = dataclasses.replace(base, rounds=rounds, train_rounds=rounds)
    if sizes:
        base = dataclasses.replace(base, sizes=tuple(sizes))
    if train_configs:
        base = dataclasses.replace(base, train_configs=tuple(train_configs))
    return base


def parse_size(text: str) -> tuple[int, int]:
    """'384x384' -> (384, 384), (width, height); argparse's type for --sizes."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or min(int(width), int(height)) < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT with both sides >= {MIN_SIZE}, got {text!r}"
        )
    return int(width), int(height)


def input_name(spec: dict[str, Any]) -> str:
    """'gray 481x321' or 'rgb 128x128' (width x height); a training batch: 'gray 8 x 64x64'."""
    channels = "gray" if spec["channels"] == 1 else "rgb"
    if spec["kind"] == "train":
        return f"{channels} {spec['batch']} x {spec['lq_patch']}x{spec['lq_patch']}"
    return f"{channels} {spec['width']}x{spec['height']}"


def dense_twin_config(name: str) -> dict[str, Any]:
    """The config dict of bundled model ``name``'s dense-window twin."""
    from semanir.inference import read_model_config
    from semanir.models import SemanIRConfig, dense_window_attention

    config = SemanIRConfig.from_dict(read_model_config(name))
    return dense_window_attention(config).to_dict()


def inference_specs(plan: Preset) -> list[dict[str, Any]]:
    """One spec per (input, model, threads): bundled models, dense twins, DnCNN.

    A dense twin is measured once for all bundled models whose configs are equal; its spec names
    the first of them (``model``) and lists all (``twin_of``).
    """
    if plan.archs:
        return arch_specs(plan)
    models = installed_models()
    inputs: dict[tuple[int, int, int], list[str]] = {}
    for bundled in models:
        channels = 1 if bundled.channels == "gray" else 3
        sizes = (SR_SIZE,) if bundled.scale > 1 else plan.sizes
        for width, height in sizes:
            inputs.setdefault((channels, width, height), []).append(bundled.name)
    twins: dict[str, list[str]] = {}
    for bundled in models:
        twins.setdefault(json.dumps(dense_twin_config(bundled.name), sort_keys=True), []).append(
            bundled.name
        )
    twin_of = {names[0]: names for names in twins.values()}
    order = sorted(inputs, key=lambda key: (key[1] * key[2], key[0]))  # small inputs first
    specs = []
    for channels, width, height in order:
        names = inputs[(channels, width, height)]
        entries = [("semanir", name, [name], CURRENT, mode) for name in names
                   for mode in plan.modes]  # fmt: skip
        entries += [("semanir", name, [name], plan.baseline, mode) for name in names
                    for mode in plan.modes if plan.baseline is not None]  # fmt: skip
        entries += [("dense", name, twin_of[name], CURRENT, "fp32") for name in names
                    if name in twin_of]  # fmt: skip
        entries.append(("dncnn", DNCNN[channels], names, CURRENT, "fp32"))
        for threads in plan.threads:
            for variant, model, of, code, mode in entries:
                specs.append({
                    "kind": "infer", "variant": variant, "model": model, "twin_of": of,
                    "channels": channels, "width": width, "height": height,
                    "threads": threads, "seed": SEED, "code": code, "mode": mode,
                })  # fmt: skip
    return specs


def arch_specs(plan: Preset) -> list[dict[str, Any]]:
    """One spec per (input, registry architecture of ``plan.archs``, threads), and the DnCNN of
    each input's channels: restore-model sizes weighed against DnCNN (``--archs``)."""
    from semanir.models import build_model

    inputs: dict[tuple[int, int, int], list[str]] = {}
    for name in plan.archs:
        with torch.device("meta"):
            model = build_model(name)
        sizes = (SR_SIZE,) if int(model.upscale) > 1 else plan.sizes
        for width, height in sizes:
            inputs.setdefault((int(model.in_channels), width, height), []).append(name)
    specs = []
    for channels, width, height in sorted(inputs, key=lambda key: (key[1] * key[2], key[0])):
        names = inputs[(channels, width, height)]
        entries = [("arch", name, [name]) for name in names]
        entries.append(("dncnn", DNCNN[channels], names))
        for threads in plan.threads:
            for variant, model, of in entries:
                specs.append({
                    "kind": "infer", "variant": variant, "model": model, "twin_of": of,
                    "channels": channels, "width": width, "height": height,
                    "threads": threads, "seed": SEED, "code": CURRENT, "mode": "fp32",
                })  # fmt: skip
    return specs


def codes(plan: Preset) -> tuple[str, ...]:
    """The code SemanIR's rows run with: this checkout's, and the baseline revision's."""
    return (CURRENT,) if plan.baseline is None else (CURRENT, plan.baseline)


def read_train_config(name: str) -> dict[str, Any]:
    """The parsed ``semanir/configs/<name>.yaml``."""
    import yaml

    text = (resources.files("semanir") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def training_specs(plan: Preset) -> list[dict[str, Any]]:
    """Per training config: its SemanIR step and the DnCNN step on the same input batch."""
    specs = []
    for name in plan.train_configs:
        config = read_train_config(name)
        data = config["data"]
        channels = 3 if data.get("channels") == "rgb" else 1
        scale = data.get("scale", 1) if data.get("task") == "sr" else 1
        common = {
            "kind": "train", "config": name, "channels": channels,
            "batch": data["batch_size"], "patch": data["patch_size"],
            "lq_patch": data["patch_size"] // scale, "threads": plan.train_threads,
            "seed": config.get("seed_everything", SEED),
        }  # fmt: skip
        for code in codes(plan):
            specs.append({**common, "variant": "semanir", "model": config["model"]["arch"],
                          "code": code})  # fmt: skip
        specs.append({**common, "variant": "dncnn", "model": DNCNN[channels], "code": CURRENT})
    return specs


def spec_key(spec: dict[str, Any]) -> str:
    """A canonical string naming one configuration (a process of its own)."""
    if spec["kind"] == "infer":
        fields = ("variant", "model", "channels", "width", "height", "threads", "code")
    else:
        fields = ("config", "variant", "threads", "code")
    mode = spec.get("mode", "fp32")  # fp32 keys as before modes existed: journals resume
    extra = [] if mode == "fp32" else [mode]
    return json.dumps([spec["kind"], *(spec[f] for f in fields), *extra])


def flops_key(spec: dict[str, Any]) -> str:
    """What a FLOP count depends on: the configuration without its thread count."""
    return json.dumps([spec["kind"], spec["variant"], spec["model"], spec.get("config"),
                       spec["channels"], spec.get("width"), spec.get("height"),
                       spec["code"]])  # fmt: skip


def group_key(spec: dict[str, Any]) -> str:
    """Configurations measured together (interleaved): one input, or one training config."""
    if spec["kind"] == "infer":
        return f"infer {input_name(spec)}"
    return f"train {spec['config']}"


def groups(specs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``specs`` by :func:`group_key`, in first-seen order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        grouped.setdefault(group_key(spec), []).append(spec)
    return list(grouped.values())


# ----------------------------------------------------------------------------------------------
# The worker: one configuration in this process
# ----------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_flash_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's flop table lacks the CPU flash-attention ops; count them as the other SDPA kernels
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flop,
}


def attention_flop_table() -> dict[Any, Callable[..., int]]:
    """:data:`CPU_ATTENTION_FLOPS`, plus common-kernels' C++ attention, forward and backward
    (its ops exist once the kernels are built), counted with the SDPA formulas: the dense
    N x N logits it computes."""
    table = dict(CPU_ATTENTION_FLOPS)
    try:
        from common_kernels import _cpu_kernels
    except ImportError:  # a --baseline revision from before the C++ kernels
        return table
    if not _cpu_kernels.status()[0]:
        return table
    ops = _cpu_kernels.ops()
    formulas = {
        "masked_attention": _cpu_flash_flop,
        "masked_attention_lse": _cpu_flash_flop,  # its training forward
        "masked_attention_backward": _cpu_flash_backward_flop,
    }
    for name, formula in formulas.items():
        if hasattr(ops, name):  # a --baseline revision may predate the training pair
            table[getattr(ops, name)] = formula
    return table


def count_flops(step: Callable[[], object]) -> dict[str, Any]:
    """FLOPs of one call of ``step``: the total and per op."""
    counter = FlopCounterMode(display=False, custom_mapping=attention_flop_table())
    with counter:
        step()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {"flop": int(counter.get_total_flops()), "flop_by_op": by_op}


def inference_model(spec: dict[str, Any]) -> nn.Module:
    """The eval-mode model of an inference spec (random init seeded for twins and DnCNN)."""
    from semanir.inference import load_model
    from semanir.models import build_model, model_from_config

    torch.manual_seed(spec["seed"])
    if spec["variant"] == "semanir":
        return load_model(spec["model"])
    if spec["variant"] == "dense":
        return model_from_config(dense_twin_config(spec["model"])).eval()
    return build_model(spec["model"]).eval()  # DnCNN, or a registry architecture (--archs)


def inference_steps(spec: dict[str, Any]) -> tuple[nn.Module, Callable[[], object], Callable]:
    """The model, its warm-up call and its timed call (``restore`` of the spec's input)."""
    from semanir.inference import restore

    model = inference_model(spec)
    generator = torch.Generator().manual_seed(spec["seed"])
    shape = (1, spec["channels"], spec["height"], spec["width"])  # (B, C, H, W)
    image = torch.rand(shape, generator=generator)
    mode = spec.get("mode", "fp32")
    warm = image  # compiled: the warm-up compiles for the input's own size
    if spec["width"] * spec["height"] / 1e6 > WARMUP_FULL_MAX_MP and mode != "compiled":
        warm = image[..., :WARMUP_CROP, :WARMUP_CROP]
    options = {"dtype": torch.bfloat16} if mode == "bf16" else {}
    if mode == "compiled":
        options = {"compile": True}
    if mode == "onnx":
        return model, *onnx_steps(model, spec["threads"], image, warm)

    def call(step: int = 0, x: Tensor = image) -> Tensor:
        return restore(model, x, tile=None, **options)

    return model, lambda: call(x=warm), call


def onnx_steps(model: nn.Module, threads: int, image: Tensor, warm: Tensor) -> tuple:
    """The warm-up and timed calls of ``model`` exported to ONNX and run by ONNX Runtime."""
    from semanir.export import export_onnx, onnx_session, run_onnx

    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(export_onnx(model, Path(folder) / "model.onnx"), threads)
    return lambda: run_onnx(session, warm), lambda step=0: run_onnx(session, image)


def training_k(model: nn.Module, seed: int, step: int) -> int | None:
    """The dictionary size ``RestorationModule.training_k`` draws at ``global_step == step``
    in a run seeded with ``seed`` (None for models without a dictionary)."""
    from semanir.data.datasets import index_generator

    config = getattr(model, "config", None)
    choices = getattr(config, "train_k_choices", None)
    if not choices or getattr(config, "dictionary", "dense") == "dense":
        return None
    generator = index_generator(seed % 2**63, step)
    return choices[int(torch.randint(len(choices), (), generator=generator))]


def training_module(spec: dict[str, Any]) -> tuple[nn.Module, Any, Any]:
    """``RestorationModule`` built from the config's model section (DnCNN: its arch swapped),
    with the optimizer and schedule its ``configure_optimizers`` returns."""
    from semanir.lightning_module import RestorationModule

    config = read_train_config(spec["config"])
    torch.manual_seed(spec["seed"])
    options = {**config["model"], "task": config["data"].get("task", "denoise")}
    options.pop("init_weights", None)  # the starting point of a fine-tune: time is the same
    if spec["variant"] == "dncnn":
        options.update(arch=spec["model"], arch_overrides=None)
    module = RestorationModule(**options)
    optimizers = module.configure_optimizers()
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    schedule = scheduler.lr_lambdas[0]
    schedule.total_steps = config["trainer"].get("max_steps") or 1  # as on_train_start sets it
    return module, optimizers["optimizer"], scheduler


def training_steps(spec: dict[str, Any]) -> tuple[nn.Module, Callable[[], object], Callable]:
    """The model, its warm-up step (step 0) and its timed step (step = round + 1), in a process
    set up as the code's ``semanir fit`` sets it up."""
    try:
        from semanir.allocator import keep_freed_memory
    except ImportError:  # a baseline revision from before 0.4.6: glibc's defaults
        pass
    else:
        keep_freed_memory()
    module, optimizer, scheduler = training_module(spec)
    module.train()
    generator = torch.Generator().manual_seed(spec["seed"])
    batch, channels = spec["batch"], spec["channels"]
    lq = torch.rand(batch, channels, spec["lq_patch"], spec["lq_patch"], generator=generator)
    side = spec["patch"] if spec["variant"] == "semanir" else spec["lq_patch"]
    gt = torch.rand(batch, channels, side, side, generator=generator)  # (B, C, p, p)

    def step(index: int = 0) -> Tensor:
        k = training_k(module.model, spec["seed"], index)
        output = module.model(lq) if k is None else module.model(lq, k=k)
        loss = module.compute_loss(output, gt)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return loss.detach()

    return module.model, lambda: step(0), step


def steps_back_to_back(step: Callable[[int], object], round_index: int) -> float:
    """Seconds per optimizer step in round ``round_index``, as a training loop runs them: one
    step untimed (the other configurations' rounds ran since this process's last one, so its
    memory is out of cache), then the mean of the next ``TRAIN_STEPS_PER_ROUND - 1`` steps run
    back to back. Steps are numbered from the round, so every code draws the same k."""
    first = round_index * TRAIN_STEPS_PER_ROUND + 1
    step(first)
    start = time.perf_counter()
    for index in range(first + 1, first + TRAIN_STEPS_PER_ROUND):
        step(index)
    return (time.perf_counter() - start) / (TRAIN_STEPS_PER_ROUND - 1)


def worker(spec: dict[str, Any], commands: Iterator[str], reply: Callable[[dict], None]) -> None:
    """Serve one configuration: build it, then answer ``warmup``, ``run ROUND`` and ``flops``.

    Args:
        spec: an inference or training spec.
        commands: command lines (stdin in a worker process).
        reply: called with one JSON-serialisable dict per command (and once when built).
    """
    from semanir.models import count_parameters

    torch.set_num_threads(spec["threads"])
    build = inference_steps if spec["kind"] == "infer" else training_steps
    model, warm_up, timed = build(spec)
    reply({"params": count_parameters(model), "built_rss_mib": peak_rss_mib()})
    for line in commands:
        command, *args = line.split()
        if command == "warmup":
            start = time.perf_counter()
            warm_up()
            reply({"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()})
        elif command == "run":
            if spec["kind"] == "train":
                seconds = steps_back_to_back(timed, int(args[0]))
            else:
                start = time.perf_counter()
                timed(int(args[0]) + 1)
                seconds = time.perf_counter() - start
            reply({"seconds": seconds, "peak_rss_mib": peak_rss_mib()})
        elif command == "flops":
            reply(count_flops(lambda: timed(0)))
        elif command == "losses":  # a fresh model and optimizer: steps 1..N from the seed
            _, _, fresh = build(spec)
            reply({"losses": [float(fresh(index)) for index in range(1, int(args[0]) + 1)]})
        else:
            raise ValueError(f"unknown worker command {line!r}")


def worker_main(spec_json: str) -> int:
    """``--worker SPEC``: serve stdin's commands, one JSON line on stdout per reply."""

    def reply(message: dict) -> None:
        print(json.dumps(message), flush=True)

    worker(json.loads(spec_json), (line for line in sys.stdin if line.strip()), reply)
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: processes, interleaved rounds, journal
# ----------------------------------------------------------------------------------------------


def losses_timeout(steps: int) -> float:
    """Seconds a worker may take to train ``steps`` steps and answer: a loss comparison of 200
    steps of 0.3.1's code took more than 1800 s on a busy 2-core machine."""
    return COMMAND_TIMEOUT_S + steps * LOSS_STEP_TIMEOUT_S


class WorkerFailed(RuntimeError):
    """A configuration's process died or did not answer in time."""


class Worker:
    """A configuration's process (``--worker``), driven by one command at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        threads = str(spec["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if spec["code"] != CURRENT:  # that revision's sources come first on the path
            sources = baseline_sources(spec["code"])
            env["PYTHONPATH"] = os.pathsep.join([*sources, env.get("PYTHONPATH", "")])
        self.spec = spec
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env,
        )  # fmt: skip

    def read(self, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """The next reply; WorkerFailed when the process ends or stays silent too long."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stderr.seek(0)
            last = (self.stderr.read().strip().splitlines() or ["killed"])[-1]
            self.close()
            if not ready:
                raise WorkerFailed(f"no answer within {timeout:.0f} s")
            raise WorkerFailed(f"exit {self.process.returncode}: {last}")
        return json.loads(line)

    def ask(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send ``command``, return its reply (WorkerFailed after ``timeout`` s of silence)."""
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the process is gone: read() says why
        return self.read(timeout)

    def close(self) -> None:
        """End the process (stdin closed; killed if it does not exit within 30 s)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.process.kill()
                self.process.wait()
        self.stderr.close()


class Journal:
    """Finished measurements, one JSON line each, read back on resume.

    Records: ``{"record": "start" | "round" | "flops" | "error", "key": ..., ...}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            self.records = [json.loads(line) for line in path.read_text().splitlines() if line]

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def find(self, record: str, key: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["record"] == record and r["key"] == key]

    def rounds_done(self, key: str) -> set[int]:
        return {r["round"] for r in self.find("round", key)}

    def failed(self, key: str) -> bool:
        return bool(self.find("error", key))


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def measure_group(
    specs: list[dict[str, Any]], rounds: int, journal: Journal, bar: Any = None,
    loss_steps: int = 0,
) -> None:  # fmt: skip
    """Measure one group's configurations in interleaved rounds, journaling every result.

    Configurations that the journal holds complete (or failed) are skipped; the others start in
    fresh processes, warm up one by one, then run their missing rounds: round ``r`` times one
    call of each in turn, the order rotated by ``r``. FLOP counts the journal lacks follow.

    Args:
        specs: the group's configurations.
        rounds: timed rounds per configuration.
        journal: where results go (and what is done already).
        bar: a tqdm bar advanced by one per round of a configuration.
    """

    def complete(spec: dict[str, Any]) -> bool:
        key = spec_key(spec)
        return journal.failed(key) or journal.rounds_done(key) >= set(range(rounds))

    todo = [s for s in specs if not complete(s)]
    counts = {flops_key(s) for s in specs if not journal.find("flops", flops_key(s))}
    losses = {
        spec_key(s) for s in specs
        if loss_steps and s["kind"] == "train" and s["variant"] == "semanir"
        and not journal.find("losses", spec_key(s))
    }  # fmt: skip
    if not todo and not counts and not losses:
        return
    if not todo:  # the rounds were journaled, counts or losses were not: a process for each
        todo = [s for s in specs if spec_key(s) in losses
                or (flops_key(s) in counts and s.get("mode", "fp32") == "fp32")]  # fmt: skip
    workers = {spec_key(s): Worker(s) for s in todo}
    try:
        live = {}
        for key, worker in workers.items():
            try:
                start = worker.read()  # built
                start.update(warmup=worker.ask("warmup"), load=load_average())
                journal.add({"record": "start", "key": key, **start})
                live[key] = worker
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": str(error)})
        for r in range(rounds):
            keys = list(live)
            keys = keys[r % len(keys) :] + keys[: r % len(keys)] if keys else keys
            for key in keys:
                if r in journal.rounds_done(key) or key not in live:
                    continue
                load = load_average()
                try:
                    result = live[key].ask(f"run {r}")
                except WorkerFailed as error:
                    journal.add({"record": "error", "key": key, "error": str(error)})
                    del live[key]
                    continue
                journal.add({"record": "round", "key": key, "round": r, "load": load, **result})
                if bar is not None:
                    bar.update()
        for key, worker in list(live.items()):
            fkey = flops_key(worker.spec)
            if fkey not in counts or worker.spec.get("mode", "fp32") != "fp32":
                continue  # counted once, eagerly (compiled kernels dispatch no aten op)
            try:
                journal.add({"record": "flops", "key": fkey, **worker.ask("flops")})
                counts.discard(fkey)
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": f"flop count: {error}"})
        for key, worker in list(live.items()):
            if key not in losses:
                continue
            try:
                journal.add(
                    {
                        "record": "losses",
                        "key": key,
                        **worker.ask(f"losses {loss_steps}", losses_timeout(loss_steps)),
                    }
                )
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": f"losses: {error}"})
    finally:
        for worker in workers.values():
            worker.close()


# ----------------------------------------------------------------------------------------------
# The report: arithmetic, tables, plot
# ----------------------------------------------------------------------------------------------


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
    root = HERE.parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--",
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semanir.io import atomic_write

    rows = [r for r in report["inference"] if "median_s" in r]
    threads = report["environment"]["threads"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
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
            next((r["per_s"] for r in training if r["config"] == c and r["variant"] == variant), 0)
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
    fig.tight_layout()
    with atomic_write(path) as temp_path:
        fig.savefig(temp_path, format="png", dpi=100)
    plt.close(fig)


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
    from common_kernels.runtime.files import write_text  # the parent's (a worker may be older)

    json_path = out / f"{stem}.json"
    write_text(json_path, json.dumps(report, indent=1) + "\n", make_parents=True)
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    text = markdown(saved)
    write_text(out / f"{stem}.md", text, make_parents=True)
    plot(saved, out / f"{stem}.png")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``argv``: None reads sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the preset of a few minutes")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts (default: 1 2; --quick: 2)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per configuration (default: 3; --quick: 2)")  # fmt: skip
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="WxH",
                        help="the denoisers' inputs (default: 256x256 384x384 481x321 "
                        "1024x1024; --quick: 256x256)")  # fmt: skip
    parser.add_argument("--train-configs", nargs="+", choices=TRAIN_CONFIGS, default=None,
                        metavar="CONFIG", help="the training configs to step (default: all; "
                        f"--quick: {', '.join(QUICK_TRAIN_CONFIGS)})")  # fmt: skip
    parser.add_argument("--baseline", default=None, metavar="GIT_REF",
                        help="also time SemanIR with the code of this git revision")  # fmt: skip
    parser.add_argument("--loss-steps", type=int, default=0, metavar="N",
                        help="with --baseline: compare N training steps' losses")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["fp32"],
                        help="how SemanIR runs: fp32 eager, bf16 autocast, compiled, "
                        "ONNX Runtime")  # fmt: skip
    parser.add_argument("--archs", nargs="+", default=None, metavar="ARCH",
                        help="time these registry architectures (random weights) against "
                        "DnCNN instead of the bundled models (no training steps unless "
                        "--train-configs)")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds: must be >= 1, got {args.rounds}")
    if args.threads is not None and min(args.threads) < 1:
        parser.error(f"--threads: must be >= 1, got {min(args.threads)}")
    if args.archs:
        from semanir.models import CONFIGS

        unknown = sorted(set(args.archs) - set(CONFIGS))
        if unknown:
            parser.error(f"--archs: unknown architectures {unknown}; known: {sorted(CONFIGS)}")
    if args.loss_steps < 0 or (args.loss_steps and args.baseline is None):
        parser.error(f"--loss-steps: must be >= 0 and needs --baseline, got {args.loss_steps}")
    return args


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


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration (resuming from the journal), write and print the report."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    from common_kernels.runtime.cli import check_benchmark_setup  # the parent's, as above

    check_benchmark_setup("cpu_speed.py", "semanir", modules=("matplotlib",),
                          folders={"--out": args.out})  # fmt: skip
    plan = preset(args.quick, args.threads, args.rounds, args.sizes, args.train_configs)
    if args.baseline is not None:
        try:
            baseline_sources(args.baseline)  # before any measurement: a bad revision fails now
        except subprocess.CalledProcessError as error:
            why = error.stderr.strip() if error.stderr else error
            sys.exit(f"cpu_speed.py: error: --baseline {args.baseline}: not a revision ({why})")
        plan = dataclasses.replace(plan, baseline=args.baseline, loss_steps=args.loss_steps)
    plan = dataclasses.replace(plan, modes=tuple(dict.fromkeys(args.modes)),
                               archs=tuple(dict.fromkeys(args.archs or ())))  # fmt: skip
    if args.archs and not args.train_configs:  # a restore-size run: training steps on request
        plan = dataclasses.replace(plan, train_configs=())
    stem = "cpu_speed_quick" if args.quick else "cpu_speed"
    journal = Journal(args.out / f"{stem}.partial.jsonl")
    inference, training = inference_specs(plan), training_specs(plan)
    todo = groups(inference) + groups(training)
    total = len(inference) * plan.rounds + len(training) * plan.train_rounds
    done = sum(1 for r in journal.records if r["record"] == "round")
    start = time.perf_counter()
    with tqdm(total=total, initial=min(done, total), desc="cpu_speed", unit="call",
              disable=None) as bar:  # fmt: skip
        for group in todo:
            rounds = plan.rounds if group[0]["kind"] == "infer" else plan.train_rounds
            measure_group(group, rounds, journal, bar, plan.loss_steps)
    report = build_report(plan, args.quick, journal, time.perf_counter() - start)
    text = write_report(report, args.out, stem)
    journal.path.unlink(missing_ok=True)
    print(text)
    print(f"wrote {args.out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
