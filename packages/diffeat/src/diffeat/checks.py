"""The checks of ``FeatureExtractor.from_pretrained``, run before any weights are loaded.

:func:`check_from_pretrained` reads only the model's config files and says, in one line, what
is wrong with a model name, a selection of activations, a timestep, a device or the LoRA and
ControlNet options. ``names`` maps an argument to the way the caller spells it (the CLI passes
its flags: ``{"timestep": "--timestep"}``), so the API and the command line give the same
message, each naming the argument in its own words.

Model names follow the repository's one rule (``common_kernels.runtime.hub``): a name that looks
like
a path (``./``, ``/``, ``~`` or an existing folder) is a local folder, and a missing one is a
``FileNotFoundError`` naming it; a hub id (``owner/name``) is fetched, and when the hub cannot
be reached and the repository is not cached, ``HubUnreachableError`` says so within 5 s instead
of the hub client's retries; anything else is an unknown model, refused at once
(``InvalidArgument``, never sent to the hub).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.hub import check_hub, resolve_model_name
from diffeat.adapters import check_adapters
from diffeat.catalogue import LayerInfo, LayerSpec, check_names
from diffeat.configs import DIT_CONFIGS, UNET_CONFIGS
from diffeat.presets import (
    ALL,
    PRESETS,
    default_preset,
    family_of,
    get_preset,
    layer_selection,
    selection_names,
)
from diffeat.schedule import plan_noise
from diffeat.shapes import control_layer_infos, layer_infos

Names = Mapping[str, str]
BUNDLED_CONFIGS = (*UNET_CONFIGS, *DIT_CONFIGS)  # configs, not models: `diffeat layers --config`
SEED_MAX = 2**64 - 1  # the range of torch.Generator.manual_seed: [0, 2**64 - 1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TEXT_TOKENS = 77  # CLIP prompt length, used for shapes when the extractor has no tokenizer
VAE_SPEC = LayerSpec("vae-out", "vae-out", "", "vae")  # not a U-Net module: the VAE latent
MODEL_FILES = (  # what an extraction reads from a model folder besides the weights
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
)
TEXT_FILES = ("text_encoder/config.json", "tokenizer")
SDXL_TEXT_FILES = ("text_encoder_2/config.json", "tokenizer_2")  # text-time U-Nets
FOLDER_HINT = "expected a diffusers SD/SDXL model folder (`diffeat tiny-model DIR` writes one)"


def named(argument: str, names: Names | None) -> str:
    """How the caller spells ``argument`` in messages (the CLI: its flag).

    Args:
        argument: the API's name (``"timestep"``).
        names: argument -> caller's name; ``None`` or a missing key keeps ``argument``.
    """
    return argument if names is None else names.get(argument, argument)


def check_int_range(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an integer in ``[low, high]`` (``high`` None: no bound).

    Args:
        value: the value.
        name: how the caller spells the argument.
        low: the smallest accepted value.
        high: the largest accepted value.

    Raises:
        ValueError: not an integer, or out of range; the message names the range.
    """
    accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def check_number(value: Any, name: str) -> float:
    """``value`` as a finite number (a scale).

    Raises:
        ValueError: not a number, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number; got {value!r}")
    return float(value)


def resolve_source(model: str | Path, name: str, what: str = "model folder") -> Path | str:
    """A local folder or file (checked to exist), or a hub id (checked to be reachable), by the
    repository's one rule (:func:`common_kernels.runtime.hub.resolve_model_name`).

    diffeat bundles configs, not weights, so no bare name is a model here; a bundled config
    name (``sdxl``) is refused like any other unknown name, pointing at ``diffeat layers
    --config``.

    Args:
        model: a path or hub id.
        name: how the caller spells the argument.
        what: the kind of local thing expected (for the message).

    Raises:
        FileNotFoundError: a path where nothing is.
        common_kernels.runtime.errors.InvalidArgument: an unknown model: neither a path nor a hub
        id of
            the form ``owner/name`` (never sent to the hub).
        common_kernels.runtime.hub.HubUnreachableError: a hub id that is not cached while the hub
            cannot be reached.
    """
    try:
        source = resolve_model_name(model, argument=name, what=what)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{name}: {error}") from None
    except InvalidArgument as error:
        if os.fspath(model) not in BUNDLED_CONFIGS:
            raise
        raise InvalidArgument(
            name,
            f"{error.message}; {model!r} is a bundled config without weights (`diffeat layers "
            f"--config {model}` lists its activations)",
        ) from None
    if isinstance(source, Path):
        return source
    check_hub(source)
    return source


def check_model_source(model: str | Path, needs: Sequence[str], name: str) -> Path | str:
    """A diffusers model folder holding ``needs``, or a reachable hub id.

    Args:
        model: the folder or hub id.
        needs: files and folders the folder must hold (relative paths).
        name: how the caller spells the argument.
    """
    source = resolve_source(model, name)
    if isinstance(source, str):
        return source
    if not source.is_dir():
        raise ValueError(
            f"{name} {model} is a file; expected a diffusers model folder or a hub id (org/name)"
        )
    for need in needs:
        if not (source / need).exists():
            raise ValueError(f"{name} {model}: {source / need} is missing; {FOLDER_HINT}")
    return source


def read_config(model: str | Path, loader: Any, subfolder: str, name: str) -> dict[str, Any]:
    """One config file of a checked model (a hub id's is downloaded: a failure there is an
    ``OSError``).

    Args:
        model: a folder checked by :func:`check_model_source`, or a hub id.
        loader: the diffusers class whose ``load_config`` reads it.
        subfolder: ``unet``, ``vae`` or ``scheduler``.
        name: how the caller spells the argument.
    """
    try:
        return dict(loader.load_config(str(model), subfolder=subfolder))
    except (OSError, ValueError) as error:
        text = " ".join(str(error).split())
        if isinstance(model, Path):
            raise ValueError(f"{name} {model}: {text}") from None
        raise OSError(f"cannot read {subfolder}/ of {name} {model} (a hub id): {text}") from None


@dataclass(frozen=True)
class ModelConfigs:
    """What the checks read from a model: its config files, no weights.

    Args:
        unet: the U-Net config.
        vae: the VAE config.
        scheduler: the scheduler, built from its config.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: Any

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the SD VAEs)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor x 2 per U-Net down block but
        the last (each of those halves)."""
        return self.vae_scale * 2 ** (len(self.unet["down_block_types"]) - 1)


def read_model_configs(model: str | Path, name: str) -> ModelConfigs:
    """The U-Net, VAE and scheduler configs of a checked model (no weights are read).

    Args:
        model: from :func:`check_model_source`.
        name: how the caller spells the argument.
    """
    import diffusers

    unet = read_config(model, diffusers.UNet2DConditionModel, "unet", name)
    vae = read_config(model, diffusers.AutoencoderKL, "vae", name)
    scheduler = read_config(model, diffusers.DDPMScheduler, "scheduler", name)
    kind = str(scheduler.get("_class_name"))
    scheduler_cls = getattr(diffusers, kind, None)
    if not isinstance(scheduler_cls, type) or not hasattr(scheduler_cls, "from_config"):
        raise ValueError(f"{name} {model}: scheduler class {kind!r} is not a diffusers scheduler")
    return ModelConfigs(unet, vae, scheduler_cls.from_config(scheduler))


def check_timestep(timestep: int, faithful: bool, scheduler: Any, name: str) -> None:
    """``timestep`` against the model's scheduler (``faithful``: its timestep list)."""
    try:
        plan_noise(scheduler, timestep, faithful)
    except ValueError as error:
        raise ValueError(f"{name}: {str(error).removeprefix('timestep: ')}") from None


def check_selection(
    layers: Sequence[str] | str | None,
    preset: str | None,
    unet: Mapping[str, Any],
    model: str | Path,
    names: Names | None = None,
) -> tuple[tuple[str, ...], str | None]:
    """The requested activation names (``("all",)`` for everything) and the preset they come
    from; a preset must fit the U-Net's family; neither given: the paper's preset.

    Args:
        layers: names, ``"all"`` or a preset name.
        preset: a key of :data:`diffeat.PRESETS`.
        unet: the model's U-Net config.
        model: the model (for messages).
        names: how the caller spells ``layers``, ``preset`` and ``model_id_or_dir``.
    """
    if layers is not None and preset is not None:
        raise ValueError("pass either layers=[...] or preset=..., not both")
    flag = named("preset" if preset is not None else "layers", names)
    if isinstance(layers, str) and layers in PRESETS:
        preset = layers
    family = family_of(unet)
    if preset is not None and family is not None and get_preset(preset).family != family:
        fitting = ", ".join(sorted(n for n, p in PRESETS.items() if p.family == family))
        raise ValueError(
            f"{flag} {preset}: its names are those of {get_preset(preset).family} U-Nets, but "
            f"{named('model_id_or_dir', names)} {model} is {family}-shaped (its presets: "
            f"{fitting})"
        )
    if layers is None and preset is None and family is None:
        raise ValueError(
            f"{named('model_id_or_dir', names)} {model}: this U-Net is neither SD 1.x/2.x- nor "
            f"SDXL-shaped, so no paper preset applies; pass {named('layers', names)} NAMES or "
            "'all'"
        )
    if layers is not None:
        return layer_selection(layers, flag), preset
    preset = preset or default_preset(unet)
    return get_preset(preset).layers, preset


def model_infos(
    configs: ModelConfigs,
    size: tuple[int, int],
    faithful: bool = False,
    control: Mapping[str, Any] | None = None,
) -> list[LayerInfo]:
    """``vae-out`` (with ``faithful``: the decoded image), the U-Net catalogue and that of the
    ``control`` config's ControlNet with shapes for ``size`` images, rounded up to the model's
    size multiple (a shape-only pass on the meta device: no weights, no memory)."""
    multiple, scale = configs.size_multiple, configs.vae_scale
    height, width = (-(-side // multiple) * multiple for side in size)
    latent = (configs.vae["latent_channels"], height // scale, width // scale)
    if faithful:
        latent = (configs.vae.get("out_channels", 3), height, width)
    unet = layer_infos(configs.unet, (height, width), TEXT_TOKENS, scale)
    if control is not None:
        unet += control_layer_infos(control, (height, width), TEXT_TOKENS, scale)
    return [LayerInfo(VAE_SPEC, latent), *unet]


def check_layer_names(
    requested: tuple[str, ...], infos: Sequence[LayerInfo], name: str
) -> tuple[str, ...]:
    """``requested`` with ``all`` expanded, checked against ``infos`` (``vae-out`` and the
    catalogue); unknown names come with close matches and the whole-selection names."""
    specs = [info.spec for info in infos]
    if requested == (ALL,):
        return tuple(spec.name for spec in specs)
    try:
        check_names(requested, specs)
    except ValueError as error:
        message = str(error).removeprefix("layers: ")
        if not {spec.name for spec in specs}.issuperset(requested):
            message += f"; whole selections: {', '.join(selection_names())}"
        raise ValueError(f"{name}: {message}") from None
    return requested


def check_adapter_sources(
    model: str | Path,
    unet: Mapping[str, Any],
    loras: Sequence[Any],
    controlnet: Any,
    control_image: Any,
    names: Names | None = None,
) -> dict[str, Any] | None:
    """LoRA files and a ControlNet given by path or hub id, checked against the model before
    any of its weights are read; returns the ControlNet's config (None without one).

    Args:
        model: the base model (folder or hub id).
        unet: its U-Net config.
        loras: LoRA sources (paths and hub ids are checked; state dicts are checked on load).
        controlnet: a ControlNet folder or hub id (a loaded ``ControlNetModel`` is checked when
            it is set).
        control_image: the default conditioning image.
        names: how the caller spells ``lora``, ``controlnet`` and ``control_image``.
    """
    if control_image is not None and controlnet is None:
        raise ValueError(
            f"{named('control_image', names)}: needs {named('controlnet', names)} PATH "
            "(no ControlNet is given)"
        )
    paths = [source for source in loras if isinstance(source, str | Path)]
    for source in paths:
        resolve_source(source, named("lora", names), "LoRA file or folder")
    by_path = isinstance(controlnet, str | Path)
    if by_path:
        resolve_source(controlnet, named("controlnet", names))
    try:
        check_adapters(str(model), unet, [str(p) for p in paths], controlnet if by_path else None)
    except ValueError as error:  # "lora PATH: ..." or "controlnet: ..."
        argument, rest = re.fullmatch(r"(\w+)(.*)", str(error), re.S).groups()
        raise ValueError(f"{named(argument, names)}{rest}") from None
    except OSError as error:
        text = " ".join(str(error).split())
        flags = f"{named('lora', names)}/{named('controlnet', names)}"
        local = all(isinstance(p, Path) or Path(p).exists() for p in paths)
        if local and (not by_path or Path(controlnet).exists()):
            raise ValueError(f"{flags}: {text}") from None
        raise OSError(f"{flags}: {text}") from None
    if not by_path:
        return None
    import diffusers

    return dict(diffusers.ControlNetModel.load_config(str(controlnet)))
