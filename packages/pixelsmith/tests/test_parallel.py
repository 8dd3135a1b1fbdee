"""Patch-parallel sampling: 2 gloo processes on the CPU give the bytes of 1 process and the same
checkpoint files (with a LoRA and a ControlNet), and a run interrupted in 1 process resumes
in 2."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file

from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cli import main
from pixelsmith.parallel import RankGroup
from pixelsmith.sampling import PatchSampler
from pixelsmith.tiny import tiny_controlnet

# 3 stages; the last is 24 x 20 latent px: 9 patches of 8 on even steps, 12 on odd ones, in
# batches of 2: 5 and 6 UNet calls per step, so the rounds of 2 ranks end with one rank idle;
# --no-ddim: Euler draws noise from the generator at every scheduler step
RUN = shlex.split(
    "--sizes 64 128x96 192x160 --slider 2 3 --steps 3 --seed 7 --patch-size 8 --band 2 "
    "--vae-tile 8 --vae-overlap 2 --patch-batch 2 --no-ddim --keep-checkpoint --quiet"
)


class Interrupt(KeyboardInterrupt):
    """Ctrl-C at a chosen step."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parallel") / "tiny"
    assert main(["tiny-model", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def run_args(tiny_dir) -> list[str]:
    """The model, a UNet LoRA and an active ControlNet with its condition: all of them run on
    the ranks (each rank reads the condition crops of its own batches)."""
    pipe = PixelsmithPipeline.from_pretrained(tiny_dir)
    model = copy.deepcopy(pipe.unet)
    torch.manual_seed(3)
    model.add_adapter(LoraConfig(r=2, target_modules=["to_q"], init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    StableDiffusionXLPipeline.save_lora_weights(tiny_dir.parent / "lora", unet_lora_layers=layers)
    controlnet = tiny_controlnet(seed=0)
    with torch.no_grad():
        for layer in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            layer.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    controlnet.save_pretrained(tiny_dir.parent / "controlnet")
    pixels = np.random.default_rng(5).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tiny_dir.parent / "condition.png")
    return [
        "--model", str(tiny_dir), "--lora", str(tiny_dir.parent / "lora"),
        "--controlnet", str(tiny_dir.parent / "controlnet"),
        "--control-image", str(tiny_dir.parent / "condition.png"), *RUN,
    ]  # fmt: skip


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in spawned ranks: the same CPU kernels everywhere."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory) -> Path:
    """The run in this one process (one thread): its image, with its checkpoint kept."""
    out = tmp_path_factory.mktemp("one") / "cat.png"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["generate", "a cat", "-o", str(out), *run_args]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def checkpoint_contents(output: Path) -> dict:
    folder = output.with_name(f"{output.name}.pixelsmith")
    files = sorted(p.name for p in folder.iterdir())
    tensors = {name: load_file(folder / name) for name in files if name.endswith(".safetensors")}
    return {"files": files, "run": json.loads((folder / "run.json").read_text()), **tensors}


def assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a["files"] == b["files"] and a["run"] == b["run"]
    for name in a["files"]:
        if name.endswith(".safetensors"):
            assert a[name].keys() == b[name].keys()
            assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


def test_two_gloo_processes_give_the_bytes_of_one(run_args, tmp_path, reference, one_thread):
    out = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(out), *run_args]
    assert main([*argv, "--devices", "2", "--device", "cpu"]) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert_same_checkpoint(checkpoint_contents(out), checkpoint_contents(reference))


def test_a_run_interrupted_in_one_process_resumes_in_two(
    run_args, tmp_path, reference, one_thread, monkeypatch, capsys
):
    step = PatchSampler.step

    def interrupted(self, index, batches):  # Ctrl-C at step 1 of the last stage
        if self.latents.shape[-2:] == (24, 20) and index == 1:
            raise Interrupt
        step(self, index, batches)

    out = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(out), *run_args]
    with monkeypatch.context() as patched:
        patched.setattr(PatchSampler, "step", interrupted)
        assert main(argv) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err
    progress = load_file(out.with_name("cat.png.pixelsmith") / "stage2_progress.safetensors")
    assert int(progress["step"]) == 1 and not out.exists()
    assert main([*argv, "--devices", "2", "--device", "cpu"]) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert_same_checkpoint(checkpoint_contents(out), checkpoint_contents(reference))


def test_what_cannot_run_on_several_processes(tiny_dir, tmp_path, capsys, make_pipe, monkeypatch):
    argv = ["generate", "a cat", "-o", str(tmp_path / "x.png"), "--model", str(tiny_dir), *RUN]
    assert main([*argv, "--devices", "0"]) == 2
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: --devices must be an int >= 1, got 0\n"
    )
    assert main([*argv, "--devices", "2", "--device", "cpu", "--faithful"]) == 2
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: --faithful runs in one process, got 2 processes: the "
        "official sampler fuses each patch before reverting it, so a patch reads pixels that "
        "earlier patches of the same step changed and the patches of a step cannot run side "
        "by side\n"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc-per-node 2
    assert main([*argv, "--devices", "2", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: --devices 2 starts processes, but this is already one of "
        "2 (torchrun): leave --devices out under torchrun\n"
    )
    assert not (tmp_path / "x.png").exists()
    faithful = PixelsmithConfig(patch_size=8, faithful=True)
    with pytest.raises(ValueError, match=r"^faithful=True runs in one process, got 2 processes"):
        generate_cascade(
            make_pipe(), "a cat", [64, 128], [1], config=faithful, ranks=RankGroup(0, 2)
        )
    with pytest.raises(ValueError, match=r"^faithful=True runs in one process, got 3 processes"):
        PatchSampler(
            torch.zeros(1, 4, 8, 8), num_steps=1, guidance=None, slider=1, band=0,
            denoise=lambda x, patches, step: x, faithful=True, ranks=RankGroup(1, 3),
        )  # fmt: skip


@pytest.mark.slow
def test_scaling_benchmark_on_the_cpu(tmp_path):
    """benchmarks/parallel.py end to end with the tiny model: 1 and 2 gloo processes, the same
    final latent (its SHA-256) for both counts, results written as JSON and Markdown."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "parallel.py"
    command = [sys.executable, str(script), "--device", "cpu", "--devices", "1", "2"]
    command += [
        "--sizes",
        "64",
        "128",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--results",
        str(tmp_path),
    ]
    subprocess.run(
        command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    report = json.loads((tmp_path / "pixelsmith_parallel_cpu.json").read_text())
    assert [row["devices"] for row in report["results"]] == [1, 2]
    first, second = (row["latent_sha256"] for row in report["results"])
    assert len(first) == 1 and first == second
    assert "| 2 |" in (tmp_path / "pixelsmith_parallel_cpu.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_give_the_bytes_of_one(tiny_dir, tmp_path):
    """nccl, rank r on cuda:r: the same PNG bytes as one GPU (the tiny model in float32)."""
    outputs = []
    for devices in ("1", "2"):
        out = tmp_path / f"cat{devices}.png"
        argv = ["generate", "a cat", "-o", str(out), "--model", str(tiny_dir), *RUN]
        assert main([*argv, "--device", "cuda", "--dtype", "float32", "--devices", devices]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
