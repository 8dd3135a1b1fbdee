"""What an extraction is asked to do, checked before any weights are loaded: the settings
(:class:`ExtractorConfig`) and :func:`check_from_pretrained`, which reads only a model's config
files and returns a :class:`LoadPlan` that :meth:`diffeat.FeatureExtractor.from_plan` loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.cli import check_device
from diffeat.catalogue import LayerInfo
from diffeat.checks import (
    DTYPES,
    MODEL_FILES,
    SDXL_TEXT_FILES,
    SEED_MAX,
    TEXT_FILES,
    ModelConfigs,
    Names,
    check_adapter_sources,
    check_int_range,
    check_layer_names,
    check_model_source,
    check_number,
    check_selection,
    check_timestep,
    model_infos,
    named,
    read_model_configs,
)
from diffeat.io import parse_size
from diffeat.presets import PRESETS, default_preset, get_preset, layer_selection

LATENT_MODES = ("sample", "mean")


def check_config_fields(settings: Mapping[str, Any], names: Names | None = None) -> None:
    """The :class:`ExtractorConfig` fields that need no model: ``latent``, ``seed``,
    ``image_size`` (a size), ``early_exit``/``faithful``/``requires_grad`` (booleans).

    Args:
        settings: field -> value (missing fields are not checked).
        names: how the caller spells each field in messages (the CLI: its flags).

    Raises:
        ValueError: the first field out of range, named as ``names`` spells it.
    """
    if settings.get("latent", "sample") not in LATENT_MODES:
        raise ValueError(
            f"{named('latent', names)}: must be one of {LATENT_MODES}; got {settings['latent']!r}"
        )
    if "seed" in settings:
        check_int_range(settings["seed"], named("seed", names), 0, SEED_MAX)
    for key in ("early_exit", "faithful", "requires_grad"):
        if not isinstance(settings.get(key, False), bool):
            raise ValueError(f"{named(key, names)}: must be True or False; got {settings[key]!r}")
    parse_size(settings.get("image_size"), named("image_size", names))


@dataclass
class ExtractorConfig:
    """Extraction settings.

    Args:
        layers: activation names to return (see :func:`diffeat.list_layers`, plus
            ``vae-out``), ``"all"`` (``vae-out`` and the whole U-Net catalogue) or a preset
            name (which then also sets ``preset``).
        timestep: diffusion timestep in ``[0, num_train_timesteps - 1]`` (paper: 50).
        latent: ``"sample"`` (the VAE posterior sample, as the official code) or ``"mean"``.
        faithful: reproduce the official code: its timestep selection (SD 1.5: t=50 -> 51),
            square token reshape, plain attention everywhere when a map is requested, and its
            ``vae-out`` (the VAE decoding of the latents after one scheduler step, (B, 3, H, W)).
        early_exit: stop the U-Net once the last requested activation is produced.
        image_size: (H, W) to resize images to; None keeps their size (must then be a multiple
            of ``FeatureExtractor.size_multiple``).
        seed: seed of the generator used when a call passes none (calls are reproducible).
        output_device: device for returned features (None: the model's device).
        preset: the preset the layers came from (informational).
        requires_grad: run the U-Net (and ControlNet, and the decode of a faithful
            ``vae-out``) with gradients enabled and return features that keep the autograd
            graph, so a loss on them trains the U-Net, a LoRA or a ControlNet. The VAE encode
            and the text encoders stay without gradients.
    """

    layers: tuple[str, ...] | str  # a tuple after __post_init__
    timestep: int = 50
    latent: str = "sample"
    faithful: bool = False
    early_exit: bool = True
    image_size: tuple[int, int] | None = None
    seed: int = 0
    output_device: str | None = None
    preset: str | None = None
    requires_grad: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers in PRESETS and self.preset is None:
            self.preset = self.layers
        self.layers = layer_selection(self.layers, "layers")
        check_config_fields(vars(self))
        self.image_size = parse_size(self.image_size)


@dataclass(frozen=True)
class LoadPlan:
    """What :func:`check_from_pretrained` found: the checked model and options, no weights.

    Args:
        source: the model folder (a ``Path``) or hub id.
        configs: its U-Net, VAE and scheduler configs.
        requested: the requested names (``("all",)`` for everything).
        preset: the preset they come from (None: explicit names).
        names: the returned activation names, ``all`` expanded.
        infos: ``vae-out``, the U-Net and ControlNet catalogues with shapes at ``size``.
        size: the (H, W) of ``infos``: ``image_size``, else the resolution of a preset given
            by name (``preset=`` or ``layers=PRESET``), else the native size.
        dtype: the weights dtype.
        device: where the models run.
        control: the ControlNet's config (None without one).
        options: the remaining ``from_pretrained`` keywords, as given.
        timestep: the checked timestep.
        text_stack: the tokenizers and text encoders are loaded.
        size_from: the argument that sets the size images are fed at: ``"image_size"``,
            ``"preset"`` or ``"layers"`` (a preset name: its resolution, which
            :meth:`FeatureExtractor.from_plan` resizes every image to), None (the images'
            own size).
    """

    source: Path | str
    configs: ModelConfigs
    requested: tuple[str, ...]
    preset: str | None
    names: tuple[str, ...]
    infos: list[LayerInfo]
    size: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    control: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timestep: int = 50
    text_stack: bool = True
    size_from: str | None = None


def check_from_pretrained(
    model_id_or_dir: str | Path,
    layers: Sequence[str] | str | None = None,
    preset: str | None = None,
    timestep: int = 50,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = "cpu",
    text_stack: bool = True,
    *,
    names: Names | None = None,
    **options,
) -> LoadPlan:
    """Every check of :meth:`FeatureExtractor.from_pretrained`, reading only config files.

    Args:
        model_id_or_dir .. text_stack: as :meth:`FeatureExtractor.from_pretrained`
            (``device=None``: cuda when available, else cpu).
        names: how the caller spells each argument in messages (the CLI: its flags).
        **options: the other keywords of :meth:`FeatureExtractor.from_pretrained`.

    Raises:
        FileNotFoundError: a model, LoRA or ControlNet path where nothing is.
        ValueError: a bad value; the message names the argument and the accepted range.
        common_kernels.runtime.hub.HubUnreachableError: a hub id that is not cached while the hub is
            out of reach (within 5 s).
        OSError: a hub id whose config files cannot be read.
    """
    model_flag = named("model_id_or_dir", names)
    dtype = as_dtype(dtype, named("dtype", names))
    device = check_device(None if device is None else str(device), named("device", names))
    check_config_fields(options, names)
    for key in ("lora_scale", "control_scale"):
        check_number(options.get(key, 1.0), named(key, names))
    needs = MODEL_FILES + (TEXT_FILES if text_stack else ())
    source = check_model_source(model_id_or_dir, needs, model_flag)
    configs = read_model_configs(source, model_flag)
    if text_stack and configs.unet.get("addition_embed_type") == "text_time":
        check_model_source(model_id_or_dir, SDXL_TEXT_FILES, model_flag)
    check_timestep(
        timestep, options.get("faithful", False), configs.scheduler, named("timestep", names)
    )
    size_from = "image_size" if options.get("image_size") is not None else None
    if size_from is None and layers is None and preset is not None:
        size_from = "preset"
    if size_from is None and isinstance(layers, str) and layers in PRESETS:
        size_from = "layers"
    requested, preset = check_selection(layers, preset, configs.unet, model_id_or_dir, names)
    loras = options.get("lora")
    loras = [] if loras is None else list(loras) if isinstance(loras, list | tuple) else [loras]
    control = check_adapter_sources(
        source, configs.unet, loras, options.get("controlnet"), options.get("control_image"), names
    )
    size = parse_size(options.get("image_size"))
    if size_from in ("preset", "layers"):  # a preset given by name sets the size: its own
        size = (get_preset(preset).resolution,) * 2
    size = size or (configs.unet["sample_size"] * configs.vae_scale,) * 2
    infos = model_infos(configs, size, options.get("faithful", False), control)
    flag = named("preset" if layers is None and preset is not None else "layers", names)
    expanded = check_layer_names(requested, infos, flag)
    return LoadPlan(
        source,
        configs,
        requested,
        preset,
        expanded,
        infos,
        size,
        dtype,
        device,
        control,
        options,
        timestep,
        text_stack,
        size_from,
    )


def names_or_all(layers: Sequence[str] | str) -> tuple[str, ...]:
    """``layers`` as a tuple of names: ``"all"`` becomes ``("all",)``, a preset its names."""
    return layer_selection(layers, "layers")


def resolve_layers(
    config: Mapping, layers: Sequence[str] | str | None, preset: str | None
) -> tuple[tuple[str, ...], str | None]:
    """Layer names from ``layers`` (a list, ``"all"`` or a preset name) or ``preset``.

    Neither given: the paper's selection for the U-Net's family.
    """
    if layers is not None and preset is not None:
        raise ValueError("pass either layers=[...] or preset=..., not both")
    if layers is not None:
        named = layers if isinstance(layers, str) and layers in PRESETS else None
        return names_or_all(layers), named
    preset = preset or default_preset(config)
    return get_preset(preset).layers, preset


def as_dtype(dtype: torch.dtype | str, name: str = "dtype") -> torch.dtype:
    """``torch.float32``/``float16``/``bfloat16`` or ``"fp32"``/``"fp16"``/``"bf16"``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"{name}: must be fp32, fp16 or bf16; got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"{name}: must be one of {sorted(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]
