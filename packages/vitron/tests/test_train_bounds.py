"""``train``'s size-like settings are bounded from above (issue 49, item 2): ``lora_rank`` by the
LLM's hidden size, ``batch_size`` by the records of ``data`` and a memory estimate,
``accumulate_grad_batches`` by one epoch's batches, ``max_steps`` by ``MAX_EPOCHS`` passes,
``num_workers`` by the CPU cores. Each is refused before any weights load, in one line naming
the argument (API) or the flag (CLI), the estimate and the limit, with nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.imports import runs_in_fresh_interpreter
from vitron.cli import FLAGS, main
from vitron.models import VitronModel
from vitron.tiny import tiny_model
from vitron.training import TrainConfig, sizes, train
from vitron.training.config import check_train

RECORDS = 8
MIB = 2**20
AVAILABLE = 3 * MIB  # the host memory the tests pretend is available
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
# the tiny model: max_length 4096, hidden size 32, 2 layers; float32: 1 MiB of block inputs
# per sample (4096 x 32 x 2 x 4 bytes)
BLOCK_INPUTS = "{b} samples x 4096 positions ({m}'s max_length) x 32 (hidden size) x 2 (layers)"

# API argument -> (settings, the message with {x} for an argument's name, {m} the model, {t}
# the data's folder)
CASES = {
    "lora_rank": (
        {"lora_rank": 33},
        "{lora_rank} 33: a LoRA rank above the LLM's hidden size (32 in {m}'s config) adds "
        "nothing (every linear layer of the LLM reads or writes 32-wide vectors, so an update "
        "B @ A has rank <= 32); at most 32",
    ),
    "lora_rank_stage_1": (
        {"lora_rank": 4, "stage": 1},
        "{lora_rank} applies to {stage} 2 and 3 (stage 1 trains only the projector), got {stage} 1",
    ),
    "batch_size_records": (
        {"batch_size": 9},
        "{batch_size} 9: more samples than the 8 record(s) of {data} {t}/data.jsonl (a batch "
        "takes each record at most once per epoch); at most 8",
    ),
    "batch_size_memory": (
        {"batch_size": 4},
        "{batch_size} 4: a batch keeps at least "
        + BLOCK_INPUTS.replace("{b}", "4")
        + " x 4 bytes ({precision} 32-true) = 4.0 MiB of block inputs for the backward pass, "
        "more than the 3.0 MiB host memory available; at most 3",
    ),
    "batch_size_memory_bf16": (
        {"batch_size": 7, "precision": "bf16-true"},
        "{batch_size} 7: a batch keeps at least "
        + BLOCK_INPUTS.replace("{b}", "7")
        + " x 2 bytes ({precision} bf16-true) = 3.5 MiB of block inputs for the backward pass, "
        "more than the 3.0 MiB host memory available; at most 6",
    ),
    "accumulate_grad_batches": (
        {"batch_size": 2, "accumulate_grad_batches": 5},
        "{accumulate_grad_batches} 5: an epoch of {data} {t}/data.jsonl (8 record(s)) is 4 "
        "batch(es) of {batch_size} 2, and Lightning steps the optimizer at the end of every "
        "epoch, so no step accumulates more; at most 4",
    ),
    "max_steps": (
        {"batch_size": 2, "accumulate_grad_batches": 2, "max_steps": 2001},
        "{max_steps} 2001: at 2 optimizer step(s) per epoch of {data} {t}/data.jsonl (8 "
        "record(s), {batch_size} 2, {accumulate_grad_batches} 2) the run passes over the data "
        "1001 times, more than the 1000 passes one run may make (LLaVA-style stages train 1 to "
        "3); at most 2000",
    ),
    "num_workers": (
        {"num_workers": CORES + 1},
        f"{{num_workers}} {CORES + 1}: more data-loading processes than the {CORES} CPU cores "
        f"this process may use only add processes (each with a copy of the dataset), not speed; "
        f"at most {CORES}",
    ),
}
FLAG_VALUES = {"stage": "--stage", "precision": "--precision", "data": "--data"}


@pytest.fixture
def data(tmp_path) -> Path:
    """``data.jsonl``: 8 caption records of one image."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    record = {
        "images": ["a.png"],
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "black"}],
    }
    (tmp_path / "data.jsonl").write_text((json.dumps(record) + "\n") * RECORDS)
    return tmp_path / "data.jsonl"


@pytest.fixture
def no_weights(monkeypatch):
    """A weights load fails the test; the host has ``AVAILABLE`` bytes and no CUDA."""

    def fail(*args, **kwargs):
        pytest.fail("the weights were loaded before the sizes were checked")

    monkeypatch.setattr(VitronModel, "from_pretrained", fail)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sizes, "host_available_bytes", lambda: AVAILABLE)


def spelt(message: str, names: dict[str, str], model: str, folder: Path) -> str:
    """``message`` with each ``{argument}`` spelt by ``names`` (the API's: itself)."""
    for argument in ("lora_rank", "batch_size", "accumulate_grad_batches", "max_steps",
                     "num_workers", "stage", "precision", "data"):  # fmt: skip
        message = message.replace(f"{{{argument}}}", names.get(argument, argument))
    return message.replace("{m}", model).replace("{t}", str(folder))


def argument_of(case: str) -> str:
    return next(name for name in FLAGS if case.startswith(name))


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_refuses_a_size_beyond_its_bound_before_loading(
    case, model_dir, data, tmp_path, no_weights
):
    settings, message = CASES[case]
    with pytest.raises(InvalidArgument) as caught:
        train(model_dir, data, tmp_path / "out", **{"stage": 2, **settings})
    assert caught.value.argument == argument_of(case)
    assert str(caught.value) == spelt(message, {}, str(model_dir), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "data.jsonl"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_vitron_train_refuses_a_size_beyond_its_bound_in_one_line(
    case, model_dir, data, tmp_path, capsys, no_weights
):
    settings, message = CASES[case]
    settings = {"stage": 2, **settings}
    argv = ["train", "--model", str(model_dir), "--data", str(data), "-o", str(tmp_path / "out")]
    for name, value in settings.items():
        argv += [FLAGS[name], str(value)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = spelt(message, {**FLAGS, **FLAG_VALUES}, str(model_dir), tmp_path)
    assert captured.err == f"vitron train: error: {line}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "data.jsonl"]


def test_a_model_object_is_named_the_model(data, tmp_path, no_weights):
    with pytest.raises(InvalidArgument) as caught:
        train(tiny_model(), data, tmp_path / "out", stage=3, lora_rank=64)
    assert caught.value.argument == "lora_rank"
    assert "(32 in the model's config)" in str(caught.value)
    assert str(caught.value).endswith("; at most 32")


def test_the_limits_themselves_pass_the_checks(model_dir, data, tmp_path, no_weights):
    """Each bound's largest value is accepted (check_train: the checks of train, no fit)."""
    most = {"lora_rank": 32, "batch_size": 3, "num_workers": CORES}
    check_train(model_dir, data, tmp_path / "out", TrainConfig(stage=2, **most))
    bf16 = TrainConfig(stage=2, batch_size=6, precision="bf16-true")
    check_train(model_dir, data, tmp_path / "out", bf16)
    # 8 records in batches of 2: 4 batches an epoch, 2 steps of 2 batches, 1000 epochs
    steps = TrainConfig(stage=2, batch_size=2, accumulate_grad_batches=2, max_steps=2000)
    check_train(model_dir, data, tmp_path / "out", steps)
    accumulate = TrainConfig(stage=2, batch_size=2, accumulate_grad_batches=4)
    check_train(model_dir, data, tmp_path / "out", accumulate)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "data.jsonl"]


def test_the_memory_is_a_cuda_devices_total_on_cuda(monkeypatch):
    """On CUDA the batch is weighed against the device's total memory (a forking strategy
    leaves CUDA uninitialised: unknown, the check passes)."""

    class Properties:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties)
    assert sizes.training_memory("auto", 1, "auto") == ("memory of cuda:0", 80 * 2**30)
    assert sizes.training_memory("gpu", [1, 0], "ddp") == ("memory of cuda:1", 80 * 2**30)
    assert sizes.training_memory("gpu", [2], "ddp") == ("memory of cuda:2", None)
    assert sizes.training_memory("cuda", 2, "ddp_fork") == ("memory of cuda:0", None)
    monkeypatch.setattr(sizes, "host_available_bytes", lambda: 5)
    assert sizes.training_memory("cpu", 1, "auto") == ("host memory available", 5)


def test_a_size_refusal_imports_no_model_library(model_dir, data, tmp_path):
    """The bounds read config.json and the data, never the weights: in a fresh interpreter,
    transformers, Lightning and peft stay unimported."""
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--stage", "2",
            "-o", str(tmp_path / "out"), "--lora-rank", "33"]  # fmt: skip
    steps = runs_in_fresh_interpreter("vitron.cli", [argv], ["transformers", "lightning", "peft"])
    run = steps[" ".join(argv)]
    assert (run.status, run.loaded) == (2, [])
    assert run.stderr.startswith("vitron train: error: --lora-rank 33: a LoRA rank above")
