"""Upper bounds of ``train``'s size-like settings, checked before any weights load.

Each bound comes from what the run can use, read from the model's ``config.json``, the records
of ``data`` and the machine, and a refusal names the setting, the estimate and the limit:

- ``num_workers`` <= the CPU cores this process may run on: more loader processes than cores
  only add processes (each holding a copy of the dataset), not speed; torch's ``DataLoader``
  warns above the same number.
- ``lora_rank`` <= the LLM's hidden size: every linear layer of the LLM reads or writes
  hidden-size vectors, so a LoRA update ``B @ A`` has rank at most the hidden size.
- ``batch_size`` <= the records of ``data`` (a batch takes each record at most once per
  epoch), and a batch's activations fit in memory: at least ``batch_size x max_length x hidden
  size x layers x bytes`` (each block's input, kept for the backward pass even with gradient
  checkpointing), against the host's available memory, or a CUDA device's total memory.
- ``accumulate_grad_batches`` <= the batches of one epoch: Lightning steps the optimizer at the
  end of every epoch, so no step accumulates more.
- ``max_steps`` <= :data:`MAX_EPOCHS` passes over ``data`` (steps per epoch counted on one
  device). No honest time estimate can be made before the model runs (a step's time depends on
  the device, the precision and the data), so the bound is one of passes: LLaVA-style stages
  train 1 to 3 epochs, an overfitting check of a few records tens to hundreds; beyond 1000 a
  run only repeats its data, and a mistyped ``--max-steps`` would run for days.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.memory import host_available_bytes, human_bytes

MAX_EPOCHS = 1000  # passes over the data one run may make (see the module docstring)
# bytes per value of the residual stream (each block's input): float32 weights keep it float32
# under autocast (a float32 input plus a 16-bit block output is float32); bf16-true holds bf16
STREAM_BYTES = {"32-true": 4, "bf16-mixed": 4, "16-mixed": 4, "bf16-true": 2}
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")  # transformers' names of the LLM's width
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def data_loading_cores() -> int:
    """The CPU cores this process may run on (``DataLoader``'s suggested most workers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_num_workers(num_workers: int) -> None:
    """Refuse more data-loading worker processes than :func:`data_loading_cores`.

    Args:
        num_workers: the workers asked for (already >= 0).
    """
    cores = data_loading_cores()
    if num_workers > cores:
        raise InvalidValue(
            "num_workers",
            f"{{num_workers}} {num_workers}: more data-loading processes than the {cores} CPU "
            "cores this process may use only add processes (each with a copy of the dataset), "
            f"not speed; at most {cores}",
        )


def training_memory(
    accelerator: str, devices: int | str | list[int], strategy: str
) -> tuple[str, int | None]:
    """Where one device's batch lives and its bytes: ``("host memory available", N)`` on the
    CPU (and MPS, which shares it), ``("memory of cuda:I", N)`` (the device's total) on CUDA,
    N None when unknown.

    Args:
        accelerator: the checked ``accelerator`` (``"auto"`` is CUDA when available).
        devices: the checked ``devices`` (indices: the first one's memory).
        strategy: the checked ``strategy``; a forking one (``ddp_fork``, ``ddp_notebook``)
            needs CUDA uninitialised, so the device is not asked (unknown).
    """
    cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if not cuda:
        return "host memory available", host_available_bytes()
    index = devices[0] if isinstance(devices, list) else 0
    where = f"memory of cuda:{index}"
    if "fork" in strategy or "notebook" in strategy or index >= torch.cuda.device_count():
        return where, None  # a missing index is Lightning's to name
    return where, torch.cuda.get_device_properties(index).total_memory


def llm_size(llm: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` in the LLM's transformers config (None: none of them)."""
    for key in keys:
        if isinstance(llm.get(key), int):
            return llm[key]
    return None


def check_train_sizes(
    config: Any, model_config: Any, records: int, data: str | Path, model: str
) -> None:
    """Refuse a size-like setting beyond what the run can use (see the module docstring).

    Args:
        config: the checked :class:`~vitron.training.config.TrainConfig`.
        model_config: the model's :class:`~vitron.models.config.VitronConfig` (its weights
            need not be loaded).
        records: the records of ``data``.
        data: the training JSONL (named in messages).
        model: how messages name the model (``"tiny/"``, ``"the model"``).

    Raises:
        InvalidValue: naming the setting, the estimate and the limit.
    """
    hidden = llm_size(model_config.llm, HIDDEN_KEYS)
    layers = llm_size(model_config.llm, LAYER_KEYS)
    rank, batch, accumulate = config.lora_rank, config.batch_size, config.accumulate_grad_batches
    named = literal(model)
    if hidden is not None and rank > hidden:
        raise InvalidValue(
            "lora_rank",
            f"{{lora_rank}} {rank}: a LoRA rank above the LLM's hidden size ({hidden} in "
            f"{named}'s config) adds nothing (every linear layer of the LLM reads or writes "
            f"{hidden}-wide vectors, so an update B @ A has rank <= {hidden}); at most {hidden}",
        )
    data_named = f"{{data}} {literal(data)}"
    if batch > records:
        raise InvalidValue(
            "batch_size",
            f"{{batch_size}} {batch}: more samples than the {records} record(s) of {data_named} "
            f"(a batch takes each record at most once per epoch); at most {records}",
        )
    if hidden is not None and layers is not None:
        check_batch_memory(config, model_config.max_length, hidden, layers, named)
    batches = math.ceil(records / batch)
    if accumulate > batches:
        raise InvalidValue(
            "accumulate_grad_batches",
            f"{{accumulate_grad_batches}} {accumulate}: an epoch of {data_named} ({records} "
            f"record(s)) is {batches} batch(es) of {{batch_size}} {batch}, and Lightning steps "
            f"the optimizer at the end of every epoch, so no step accumulates more; at most "
            f"{batches}",
        )
    per_epoch = math.ceil(batches / accumulate)
    if config.max_steps > MAX_EPOCHS * per_epoch:
        epochs = math.ceil(config.max_steps / per_epoch)
        raise InvalidValue(
            "max_steps",
            f"{{max_steps}} {config.max_steps}: at {per_epoch} optimizer step(s) per epoch of "
            f"{data_named} ({records} record(s), {{batch_size}} {batch}, "
            f"{{accumulate_grad_batches}} {accumulate}) the run passes over the data {epochs} "
            f"times, more than the {MAX_EPOCHS} passes one run may make (LLaVA-style stages "
            f"train 1 to 3); at most {MAX_EPOCHS * per_epoch}",
        )


def check_batch_memory(config: Any, max_length: int, hidden: int, layers: int, model: str) -> None:
    """Refuse a ``batch_size`` whose block inputs alone exceed the memory of one device.

    Args:
        config: the checked :class:`~vitron.training.config.TrainConfig`.
        max_length: the positions of one sample at most (the model's ``max_length``).
        hidden: the LLM's hidden size.
        layers: the LLM's blocks.
        model: how the message names the model (braces doubled).
    """
    where, available = training_memory(config.accelerator, config.devices, config.strategy)
    nbytes = STREAM_BYTES[config.precision]
    sample = max_length * hidden * layers * nbytes
    need = config.batch_size * sample
    if available is None or need <= available:
        return
    most = available // sample
    limit = f"at most {most}" if most else "not even 1 fits"
    raise InvalidValue(
        "batch_size",
        f"{{batch_size}} {config.batch_size}: a batch keeps at least {config.batch_size} "
        f"samples x {max_length} positions ({model}'s max_length) x {hidden} (hidden size) x "
        f"{layers} (layers) x {nbytes} bytes ({{precision}} {config.precision}) = "
        f"{human_bytes(need)} of block inputs for the backward pass, more than the "
        f"{human_bytes(available)} {where}; {limit}",
    )
