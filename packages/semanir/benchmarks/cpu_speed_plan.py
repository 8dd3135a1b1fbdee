"""cpu_speed.py's plan: what a run measures (:class:`Preset`), its configurations (one spec
per process), their keys and groups, and the baseline revision's sources.

A sibling of ``cpu_speed.py``, imported by name (``cpu_speed.py`` puts this folder on
``sys.path``); its worker processes import it too, with the baseline's sources first on the path.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import tarfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from semanir.bundled import installed_models

HERE = Path(__file__).resolve().parent
SIZES = ((256, 256), (384, 384), (481, 321), (1024, 1024))  # (width, height)
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
SEED = 0
CURRENT = "current"  # the code of this checkout
MODES = ("fp32", "bf16", "compiled", "onnx")
REPOSITORY = HERE.parents[2]
BASELINE_SOURCES = ("packages/semanir/src", "packages/common-kernels/src")


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
