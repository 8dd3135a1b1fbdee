"""cpu_speed.py's worker side: one configuration in this process (``cpu_speed.py --worker
SPEC``): its model and input built, warm-up, timed calls or optimizer steps, FLOP counts and
the losses of a loss comparison, answered one JSON line per command.

A sibling of ``cpu_speed.py``, imported by name (``cpu_speed.py`` puts this folder on
``sys.path``). With ``--baseline`` it runs on that revision's semanir and common-kernels.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from cpu_speed_plan import dense_twin_config, read_train_config
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

WARMUP_FULL_MAX_MP = 0.25  # larger inputs warm up on a crop of this side
TRAIN_STEPS_PER_ROUND = 3  # a training round: one step back into cache, two timed back to back
WARMUP_CROP = 256


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
