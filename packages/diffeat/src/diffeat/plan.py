"""What an extraction is asked to do, checked before any weights are loaded: the settings
(:class:`ExtractorConfig`) and :func:`check_from_pretrained`, which reads only a model's config
files and returns a :class:`LoadPlan` that :meth:`diffeat.FeatureExtractor.from_plan` loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.cli import UsageError, check_device
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal, shown
from diffeat.backbones import Backbone, _model_index, backbone_of_model
from diffeat.backbones.deepfloyd import check_pixel_options
from diffeat.catalogue import LayerInfo
from diffeat.checks import (
    DTYPES,
    ModelConfigs,
    check_adapter_sources,
    check_control_image,
    check_layer_names,
    check_model_folder,
    check_number,
    check_selection,
    check_timestep,
    model_infos,
    read_model_configs,
    resolve_source,
)
from diffeat.configs import ALPHA_TOKENS, SEED_MAX
from diffeat.errors import check_int_range
from diffeat.inversion import NOISINGS, check_inversion
from diffeat.io import parse_size
from diffeat.offload import OFFLOADS
from diffeat.presets import PRESETS, default_preset, get_preset, layer_selection
from diffeat.schedule import check_sigma, is_flow_matching

LATENT_MODES = ("sample", "mean")
# the LoRA and ControlNet options of from_pretrained (U-Nets only: check_backbone_options)
ADAPTER_KEYS = ("lora", "lora_scale", "fuse_lora", "controlnet", "control_scale", "control_image")


def check_config_fields(settings: Mapping[str, Any]) -> None:
    """The :class:`ExtractorConfig` fields that need no model: ``latent``, ``seed``,
    ``image_size`` (a size), ``early_exit``/``faithful``/``requires_grad`` (booleans),
    ``sigma`` (in [0, 1]), ``guidance_scale`` (finite) and ``offload`` (None or ``"model"``,
    without ``requires_grad``).

    Args:
        settings: field -> value (missing fields are not checked).

    Raises:
        InvalidArgument: the first field out of range, named.
    """
    if settings.get("latent", "sample") not in LATENT_MODES:
        got = literal(repr(settings["latent"]))
        raise InvalidArgument("latent", f"must be one of {LATENT_MODES}; got {got}")
    if "seed" in settings:
        check_int_range(settings["seed"], "seed", 0, SEED_MAX)
    for key in ("early_exit", "faithful", "requires_grad"):
        if not isinstance(settings.get(key, False), bool):
            got = literal(repr(settings[key]))
            raise InvalidArgument(key, f"must be True or False; got {got}")
    parse_size(settings.get("image_size"), "image_size")
    if settings.get("sigma") is not None:
        try:
            check_sigma(settings["sigma"])
        except ValueError as error:
            raise InvalidArgument("sigma", literal(str(error).removeprefix("sigma: "))) from None
    if settings.get("guidance_scale") is not None:
        check_number(settings["guidance_scale"], "guidance_scale")
    if settings.get("noising", "random") not in NOISINGS:
        got = literal(repr(settings["noising"]))
        raise InvalidArgument("noising", f"must be one of {NOISINGS}; got {got}")
    if settings.get("inversion_steps") is not None:
        check_int_range(settings["inversion_steps"], "inversion_steps", 1)
        if settings.get("noising", "random") != "ddim-inversion":
            raise InvalidArgument("inversion_steps", "applies to the ddim-inversion noising only")
    offload = settings.get("offload")
    if offload is not None and offload not in OFFLOADS:
        got = literal(repr(offload))
        raise InvalidArgument("offload", f"must be None or one of {OFFLOADS}; got {got}")
    if offload is not None and settings.get("requires_grad", False):
        raise InvalidArgument(
            "offload", "does not combine with {requires_grad} (the weights leave the device "
            "after each stage, before any backward pass)",
            mentions={"requires_grad": "requires_grad=True"},
        )  # fmt: skip


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
        sigma: flow-matching models (FLUX, SD3) only: the noise level in [0, 1],
            ``x_t = (1 - sigma) z + sigma eps`` (None: ``timestep / 1000``, 0.05 at t = 50).
        guidance_scale: FLUX models with a guidance embedding (FLUX.1-dev) only: its value
            (None: 1.0, as the official code passes it).
        noising: ``"random"`` (noise from the generator at the timestep) or
            ``"ddim-inversion"`` (deterministic DDIM inversion of the clean latent up to the
            timestep, :mod:`diffeat.inversion`; U-Nets and PixArt).
        inversion_steps: DDIM steps of the inversion, in [1, timestep] (None: one per
            timestep, at most 50).
        offload: ``"model"``: model CPU offload (:mod:`diffeat.offload`): every component
            waits on the CPU and goes to the execution device (``device=``, ``.to(...)``)
            only for its own stage; features are equal to those without it. None: every
            component stays on the device.
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
    sigma: float | None = None
    guidance_scale: float | None = None
    noising: str = "random"
    inversion_steps: int | None = None
    offload: str | None = None

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

    @property
    def backbone(self) -> Backbone:
        """The denoising network's kind (U-Net, DiT)."""
        return self.configs.backbone


def check_from_pretrained(
    model_id_or_dir: str | Path,
    layers: Sequence[str] | str | None = None,
    preset: str | None = None,
    timestep: int = 50,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = "cpu",
    text_stack: bool = True,
    **options,
) -> LoadPlan:
    """Every check of :meth:`FeatureExtractor.from_pretrained`, reading only config files: the
    backbone is the network the model's ``model_index.json`` names (a U-Net or a PixArt
    transformer, :func:`diffeat.backbones.backbone_of_model`).

    Args:
        model_id_or_dir .. text_stack: as :meth:`FeatureExtractor.from_pretrained`
            (``device=None``: cuda when available, else cpu).
        **options: the other keywords of :meth:`FeatureExtractor.from_pretrained`.

    Raises:
        MissingPath: a model, LoRA or ControlNet path where nothing is (a
            ``FileNotFoundError``).
        InvalidArgument: a bad value; the message names the argument and the accepted range.
        common_kernels.runtime.hub.HubUnreachableError: a hub id that is not cached while the hub is
            out of reach (within 5 s).
        diffeat.errors.SourceError: a hub id whose config files cannot be read (an
            ``OSError``).
    """
    dtype = as_dtype(dtype)
    device = checked_device(device)
    check_config_fields(options)
    for key in ("lora_scale", "control_scale"):
        check_number(options.get(key, 1.0), key)
    check_control_image(options.get("control_image"), options.get("controlnet"))
    source = resolve_source(model_id_or_dir, "model_id_or_dir")
    backbone = backbone_of_model(source)
    needs = backbone.model_files() + (backbone.text_files if text_stack else ())
    if isinstance(source, Path):
        check_model_folder(source, model_id_or_dir, needs)
    configs = read_model_configs(source, backbone=backbone)
    if text_stack and isinstance(source, Path):
        check_model_folder(source, model_id_or_dir, backbone.extra_text_files(configs.unet))
    check_backbone_options(backbone, options, configs.unet)
    pipeline = str(_model_index(source).get("_class_name", "")) if backbone.name == "dit" else ""
    if pipeline.startswith("PixArtAlpha") and options.get("max_sequence_length") is None:
        options = {**options, "max_sequence_length": ALPHA_TOKENS}  # its pipeline's 120
    check_flow(backbone, configs, source, model_id_or_dir)
    faithful, sigma = options.get("faithful", False), options.get("sigma")
    check_timestep(timestep, faithful, configs.scheduler, sigma)
    if options.get("noising") == "ddim-inversion":
        try:
            check_inversion(configs.scheduler, timestep, options.get("inversion_steps"), faithful)
        except ValueError as error:
            argument, message = str(error).split(": ", 1)
            raise InvalidArgument(argument, literal(message)) from None
    size_from = "image_size" if options.get("image_size") is not None else None
    if size_from is None and layers is None and preset is not None:
        size_from = "preset"
    if size_from is None and isinstance(layers, str) and layers in PRESETS:
        size_from = "layers"
    requested, preset = check_selection(layers, preset, configs.unet, model_id_or_dir)
    loras = options.get("lora")
    loras = [] if loras is None else list(loras) if isinstance(loras, list | tuple) else [loras]
    control = check_adapter_sources(source, configs.unet, loras, options.get("controlnet"))
    size = parse_size(options.get("image_size"))
    if size_from in ("preset", "layers"):  # a preset given by name sets the size: its own
        size = (get_preset(preset).resolution,) * 2
    size = size or backbone.native_size(configs.unet, configs.vae_scale)
    tokens = options.get("max_sequence_length")
    infos = model_infos(configs, size, options.get("faithful", False), control, tokens)
    argument = "preset" if layers is None and preset is not None else "layers"
    expanded = check_layer_names(requested, infos, argument)
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


def check_backbone_options(
    backbone: Backbone, options: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> None:
    """Options that one backbone takes and another does not: LoRA, ControlNet and
    ``faithful`` (U-Nets), ``max_sequence_length`` (T5 prompts: PixArt, FLUX, SD3; >= 1),
    ``guidance_scale`` (FLUX with a guidance embedding, as ``config`` says).

    Raises:
        InvalidArgument: naming the option.
    """
    if not backbone.adapters:
        given = {"lora": options.get("lora"), "controlnet": options.get("controlnet"),
                 "fuse_lora": options.get("fuse_lora")}  # fmt: skip
        for key, value in given.items():
            if value:
                raise InvalidArgument(key, "LoRA and ControlNet are supported for U-Nets only")
        if options.get("faithful"):
            raise InvalidArgument(
                "faithful", f"the official code's path is restated for U-Nets only, not for "
                f"{backbone.title} models"
            )  # fmt: skip
    if backbone.name == "if":  # pixel space: no VAE latent mode, no DDIM inversion
        if options.get("max_sequence_length") is not None:
            raise InvalidArgument("max_sequence_length", "DeepFloyd IF's T5 prompts are 77 "
                                  "tokens (IFPipeline.encode_prompt), not settable")  # fmt: skip
        try:
            check_pixel_options(options.get("latent", "sample"), options.get("noising", "random"))
        except ValueError as error:
            argument, message = str(error).split(": ", 1)
            raise InvalidArgument(argument, literal(message)) from None
    if options.get("max_sequence_length") is not None:
        if backbone.name in ("unet", "hunyuan"):  # HunyuanDiT's lengths are in its weights
            raise InvalidArgument(
                "max_sequence_length", "applies to DiTs (T5 prompts: PixArt, FLUX, SD3) only"
            )
        check_int_range(options["max_sequence_length"], "max_sequence_length", 1)
    guided = backbone.name == "flux" and (config or {}).get("guidance_embeds", False)
    if options.get("guidance_scale") is not None and not guided:
        raise InvalidArgument(
            "guidance_scale", f"applies to FLUX transformers with a guidance embedding "
            f"(FLUX.1-dev) only; this model is a {backbone.title} without one"
        )  # fmt: skip


def check_flow(backbone: Backbone, configs: ModelConfigs, source: Path | str, model: Any) -> None:
    """A FLUX/SD3 model: a flow-matching scheduler, a VAE whose latents the transformer takes,
    and (a local folder) transformer weights that fit its config (their headers only).

    Raises:
        InvalidValue: naming ``model_id_or_dir``.
    """
    if not backbone.flow:
        return
    argument, shown_model = "model_id_or_dir", shown("model_id_or_dir", model)
    kind = type(configs.scheduler).__name__
    if not is_flow_matching(configs.scheduler):
        raise InvalidValue(argument, f"{shown_model}: its scheduler {kind} is not a "
                           f"flow-matching one; {backbone.title} models need one")  # fmt: skip
    latent = configs.vae.get("latent_channels")
    wanted = backbone.latent_channels(configs.unet)[0]
    if latent != wanted:
        raise InvalidValue(argument, f"{shown_model}: its VAE has {latent} latent channels; the "
                           f"transformer takes {wanted}")  # fmt: skip
    if isinstance(source, Path):
        try:
            backbone.check_weights(source, configs.unet)
        except ValueError as error:
            raise InvalidValue(argument, f"{shown_model}: {literal(error)}") from None


def adapterless_config(plan: LoadPlan, options: dict[str, Any]) -> ExtractorConfig:
    """The :class:`ExtractorConfig` of a network without LoRA/ControlNet support: the plan's
    selection and timestep, ``options`` less the adapter options (the plan checked them unset).

    Args:
        plan: the checked load plan.
        options: the plan's remaining options (changed: the adapter keys are taken out).
    """
    for key in ADAPTER_KEYS:
        options.pop(key, None)
    return ExtractorConfig(
        layers=plan.requested, timestep=plan.timestep, preset=plan.preset, **options
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


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32``/``float16``/``bfloat16`` or ``"fp32"``/``"fp16"``/``"bf16"``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidArgument("dtype", f"must be fp32, fp16 or bf16; got {dtype}")
        return dtype
    if dtype not in DTYPES:
        got = literal(repr(dtype))
        raise InvalidArgument("dtype", f"must be one of {sorted(DTYPES)}; got {got}")
    return DTYPES[dtype]


def checked_device(device: torch.device | str | None) -> torch.device:
    """``device`` checked against this machine (None: cuda when available, else cpu)."""
    try:
        return check_device(None if device is None else str(device), "device")
    except UsageError as error:
        problem = literal(str(error).removeprefix("device"))
        raise InvalidValue("device", "{device}" + problem) from None
