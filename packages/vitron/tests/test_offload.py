# ruff: noqa: E501
"""Specialists offloaded to the CPU between calls: a fake device-move recorder stands for an
accelerator (nothing moves for real on this CPU-only machine), then the real tiny adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from vitron import Assistant
from vitron.specialists import (
    Artifact,
    CallInputs,
    Consumes,
    Specialist,
    SpecialistOutput,
    SpecialistRegistry,
)
from vitron.specialists.base import OFFLOAD_DEVICE

COMPUTE = torch.device("cuda", 0)  # only recorded, never used for a tensor


class MoveRecorder:
    """Stands for a pipeline: records every ``.to(device)`` and where it was sent last."""

    def __init__(self, device: torch.device, log: list) -> None:
        self.device, self.log = device, log

    def to(self, device) -> MoveRecorder:
        self.device = torch.device(device)
        self.log.append(("move", self.owner, self.device))
        return self


@dataclass
class FakeOptions:
    pass


class FakeSpecialist(Specialist):
    consumes = Consumes.TEXT | Consumes.IMAGE | Consumes.REGION | Consumes.SIGNAL
    packages = ()
    extra = "test"
    hub_weights = "none"
    Options = FakeOptions
    log: ClassVar[list] = []  # set per test

    def load(self) -> None:
        self.weights = MoveRecorder(self.device, self.log)  # loaded onto the compute device
        self.weights.owner = self.name
        self.log.append(("load", self.name, self.device))

    def offloadable(self) -> list:
        return [self.weights]

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        others = [s for s in self.registry.instances.values() if s is not self and s.loaded]
        self.log.append(
            ("run", self.name, self.weights.device, tuple(o.weights.device for o in others))
        )
        return SpecialistOutput(
            {"mask": Artifact("mask", torch.ones(2, 2, dtype=torch.bool))}, f"{self.name} ran"
        )


class FakeSegmenter(FakeSpecialist):
    name = "fake-seg"
    tasks = ("segment_image",)


class FakeGenerator(FakeSpecialist):
    name = "fake-gen"
    tasks = ("generate_image",)


REPLY = 'Ok. <invoke>{"version": 1, "calls": [{"id": "s", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}}, {"id": "g", "task": "generate_image", "args": {"text": "a cat"}}]}</invoke><signal><signal></s>'


def run_two_turns(model, image, tmp_path, offload: bool, monkeypatch) -> list:
    log: list = []
    monkeypatch.setattr(FakeSpecialist, "log", log)
    registry = SpecialistRegistry(
        device=COMPUTE, adapters=[FakeSegmenter, FakeGenerator], offload=offload
    )
    llm_moves = []
    original = nn.Module.to

    def spy(module, *args, **kwargs):
        llm_moves.append(type(module).__name__)
        return original(module, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", spy)
    devices = {n: p.device for n, p in model.named_parameters()}
    assistant = Assistant(
        model, registry, tmp_path, scripted_replies=[REPLY, "Done.", REPLY, "Done."]
    )
    for _ in range(2):
        turn = assistant.chat("segment the dog, then draw a cat", images=[image])
        assert [o.status for o in turn.outcomes[0]] == ["ok", "ok"]
    assert llm_moves == []  # nothing ever moved the LLM (or any module of the Vitron model)
    assert {n: p.device for n, p in model.named_parameters()} == devices
    return log


def test_each_specialist_is_on_the_compute_device_only_during_its_call(
    model, image, tmp_path, monkeypatch
):
    log = run_two_turns(model, image, tmp_path, offload=True, monkeypatch=monkeypatch)
    cpu = OFFLOAD_DEVICE
    assert log == [
        ("load", "fake-seg", COMPUTE), ("run", "fake-seg", COMPUTE, ()), ("move", "fake-seg", cpu),
        ("load", "fake-gen", COMPUTE), ("run", "fake-gen", COMPUTE, (cpu,)), ("move", "fake-gen", cpu),
        # second turn: loaded already, moved there for the call and back
        ("move", "fake-seg", COMPUTE), ("run", "fake-seg", COMPUTE, (cpu,)), ("move", "fake-seg", cpu),
        ("move", "fake-gen", COMPUTE), ("run", "fake-gen", COMPUTE, (cpu,)), ("move", "fake-gen", cpu),
    ]  # fmt: skip


def test_without_offload_the_specialists_stay_on_the_compute_device(
    model, image, tmp_path, monkeypatch
):
    log = run_two_turns(model, image, tmp_path, offload=False, monkeypatch=monkeypatch)
    assert [entry for entry in log if entry[0] == "move"] == []
    assert ("run", "fake-gen", COMPUTE, (COMPUTE,)) in log  # both resident at once


def test_nested_use_moves_once_and_a_failure_still_offloads(monkeypatch):
    log: list = []
    monkeypatch.setattr(FakeSpecialist, "log", log)
    registry = SpecialistRegistry(device=COMPUTE, adapters=[FakeSegmenter], offload=True)
    seg = registry.specialist("segment_image")
    with seg.active():
        with seg.active():  # e.g. editing segments its target inside its own call
            assert seg.weights.device == COMPUTE
        assert seg.weights.device == COMPUTE
    with pytest.raises(RuntimeError, match="boom"), seg.active():
        raise RuntimeError("boom")
    assert seg.weights.device == OFFLOAD_DEVICE
    assert log == [("load", "fake-seg", COMPUTE), ("move", "fake-seg", OFFLOAD_DEVICE),
                   ("move", "fake-seg", COMPUTE), ("move", "fake-seg", OFFLOAD_DEVICE)]  # fmt: skip


def test_real_adapters_move_their_weights_around_each_call(
    specialist_options, image, tmp_path, monkeypatch
):
    """The tiny adapters with offload: each holder of weights goes to the compute device for a
    call and back (here both are the CPU, so the moves are recorded, and the results equal
    those without offload)."""
    moves = []
    original = Specialist.move

    def record(self, device):
        moves.append((self.name, [type(part).__name__ for part in self.offloadable()], device))
        original(self, device)

    outputs = {}
    for offload in (False, True):
        monkeypatch.setattr(Specialist, "move", record)
        registry = SpecialistRegistry(specialist_options, offload=offload)
        edit = registry.specialist("edit_image")
        args = {"image": image, "text": "a cat", "target": "dog"}  # segments "dog" inside
        outputs[offload, "edit"] = edit.run(
            CallInputs(f"e{offload:d}", "edit_image", args, None, tmp_path)
        )
        outputs[offload, "restore"] = registry.specialist("restore_image").run(
            CallInputs(f"r{offload:d}", "restore_image", {"image": image}, None, tmp_path)
        )
    cpu = OFFLOAD_DEVICE
    assert moves == [
        ("itaclip", ["Segmenter"], cpu),  # the inpainter's nested segmentation ends
        ("diffusers-inpaint", ["StableDiffusionInpaintPipeline"], cpu),
        ("semanir", ["SemanIR"], cpu),
    ]
    for name in ("edit", "restore"):
        plain, offloaded = (
            outputs[offload, name].outputs["image"].value for offload in (False, True)
        )
        assert np.array_equal(np.asarray(plain), np.asarray(offloaded)), name
