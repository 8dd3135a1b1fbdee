"""The checks of ``FeatureExtractor.from_pretrained``, run before any weights are loaded.

:func:`check_from_pretrained` reads only the model's config files and says, in one line, what
is wrong with a model name, a selection of activations, a timestep, a device or the LoRA and
ControlNet options. Its errors name the API's arguments (:mod:`diffeat.errors`); the ``diffeat``
command prints them with its flags, so the API and the command line give the same message, each
naming the argument in its own words.

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

from common_kernels.runtime import hub
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, MissingPath, literal, shown
from diffeat.adapters import check_adapters
from diffeat.backbones import UNET, Backbone
from diffeat.catalogue import LayerInfo, LayerSpec, check_names
from diffeat.configs import DIT_CONFIGS, UNET_CONFIGS
from diffeat.errors import SourceError
from diffeat.inputs import check_image_file
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
from diffeat.shapes import control_layer_infos

BUNDLED_CONFIGS = (*UNET_CONFIGS, *DIT_CONFIGS)  # configs, not models: `diffeat layers --config`
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TEXT_TOKENS = UNET.text_tokens  # CLIP prompt length, for shapes without a tokenizer
VAE_SPEC = LayerSpec("vae-out", "vae-out", "", "vae")  # not a network module: the VAE latent
FOLDER_HINT = "expected a diffusers SD/SDXL model folder (`diffeat tiny-model DIR` writes one)"


def check_number(value: Any, argument: str) -> float:
    """``value`` as a finite number (a scale).

    Raises:
        InvalidArgument: not a number, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(argument, f"must be a finite number; got {literal(repr(value))}")
    return float(value)


def resolve_source(model: str | Path, argument: str, what: str = "model folder") -> Path | str:
    """A local folder or file (checked to exist), or a hub id (checked to be reachable), by the
    repository's one rule (:func:`common_kernels.runtime.hub.resolve_source`).

    diffeat bundles configs, not weights, so no bare name is a model here; a bundled config
    name (``sdxl``) is refused like any other unknown name, pointing at ``diffeat layers
    --config``.

    Args:
        model: a path or hub id.
        argument: the API's argument (named in the messages).
        what: the kind of local thing expected (for the message).

    Raises:
        MissingPath: a path where nothing is (a ``FileNotFoundError``).
        InvalidArgument: an unknown model: neither a path nor a hub id of the form
            ``owner/name`` (never sent to the hub).
        common_kernels.runtime.hub.HubUnreachableError: a hub id that is not cached while the hub
            cannot be reached.
    """
    try:
        source = hub.resolve_source(model, argument, what=what)
    except MissingPath:
        raise
    except InvalidArgument as error:
        if os.fspath(model) not in BUNDLED_CONFIGS:
            raise
        raise InvalidArgument(
            argument,
            f"{error.template}; {literal(repr(model))} is a bundled config without weights "
            f"(`diffeat layers --config {literal(model)}` lists its activations)",
            mentions=error.mentions,
        ) from None
    if isinstance(source, Path):
        return source
    hub.check_hub(source)
    return source


def check_model_folder(
    source: Path, model: str | Path, needs: Sequence[str], argument: str = "model_id_or_dir"
) -> None:
    """A model folder (resolved: ``source``) holding ``needs``.

    Args:
        source: the folder.
        model: as the caller gave it (for messages).
        needs: files and folders it must hold (relative paths).
        argument: the API's argument (named in the messages).
    """
    if not source.is_dir():
        raise InvalidValue(
            argument,
            f"{shown(argument, model)} is a file; expected a diffusers model folder or a hub id "
            "(org/name)",
        )
    for need in needs:
        if not (source / need).exists():
            missing = literal(source / need)
            raise InvalidValue(
                argument, f"{shown(argument, model)}: {missing} is missing; {FOLDER_HINT}"
            )


def read_config(
    model: str | Path, loader: Any, subfolder: str, argument: str = "model_id_or_dir"
) -> dict[str, Any]:
    """One config file of a checked model (a hub id's is downloaded: a failure there is an
    ``OSError``).

    Args:
        model: a folder checked by :func:`check_model_folder`, or a hub id.
        loader: the diffusers class whose ``load_config`` reads it.
        subfolder: ``unet``, ``vae`` or ``scheduler``.
        argument: the API's argument (named in the messages).
    """
    try:
        return dict(loader.load_config(str(model), subfolder=subfolder))
    except (OSError, ValueError) as error:
        text = literal(" ".join(str(error).split()))
        if isinstance(model, Path):
            raise InvalidValue(argument, f"{shown(argument, model)}: {text}") from None
        raise SourceError(
            argument, f"cannot read {subfolder}/ of {shown(argument, model)} (a hub id): {text}"
        ) from None


@dataclass(frozen=True)
class ModelConfigs:
    """What the checks read from a model: its config files, no weights.

    Args:
        unet: the denoising network's config (a U-Net's, or a DiT's: ``transformer/``).
        vae: the VAE config.
        scheduler: the scheduler, built from its config.
        backbone: the network's kind.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: Any
    backbone: Backbone = UNET

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the SD VAEs)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor x the network's downsampling
        (2 per U-Net down block but the last; a DiT's patch size)."""
        return self.backbone.size_multiple(self.unet, self.vae_scale)

    @property
    def factors(self) -> str:
        """How :attr:`size_multiple` is made (``"VAE x8, U-Net x8"``), for messages."""
        return self.backbone.factors(self.unet, self.vae_scale)


def read_model_configs(
    model: str | Path, argument: str = "model_id_or_dir", backbone: Backbone = UNET
) -> ModelConfigs:
    """The network, VAE and scheduler configs of a checked model (no weights are read).

    Args:
        model: a checked folder (:func:`check_model_folder`) or hub id.
        argument: the API's argument (named in the messages).
        backbone: the network's kind (its config is ``{backbone.subfolder}/config.json``).
    """
    import diffusers

    unet = read_config(model, backbone.loader(), backbone.subfolder, argument)
    vae = getattr(backbone, "pixels", None)  # DeepFloyd IF: no VAE, its pixels stand in
    if vae is None:
        vae = read_config(model, diffusers.AutoencoderKL, "vae", argument)
    scheduler = read_config(model, diffusers.DDPMScheduler, "scheduler", argument)
    kind = str(scheduler.get("_class_name"))
    scheduler_cls = getattr(diffusers, kind, None)
    if not isinstance(scheduler_cls, type) or not hasattr(scheduler_cls, "from_config"):
        raise InvalidValue(
            argument,
            f"{shown(argument, model)}: scheduler class {literal(repr(kind))} is not a diffusers "
            "scheduler",
        )
    return ModelConfigs(unet, vae, scheduler_cls.from_config(scheduler), backbone)


def check_timestep(timestep: int, faithful: bool, scheduler: Any, sigma: Any = None) -> None:
    """``timestep`` (and a flow-matching ``sigma``) against the model's scheduler
    (``faithful``: its timestep list)."""
    try:
        plan_noise(scheduler, timestep, faithful, sigma)
    except ValueError as error:
        argument, message = str(error).split(": ", 1)
        raise InvalidArgument(argument, literal(message)) from None


def check_selection(
    layers: Sequence[str] | str | None,
    preset: str | None,
    unet: Mapping[str, Any],
    model: str | Path,
) -> tuple[tuple[str, ...], str | None]:
    """The requested activation names (``("all",)`` for everything) and the preset they come
    from; a preset must fit the U-Net's family; neither given: the paper's preset.

    Args:
        layers: names, ``"all"`` or a preset name.
        preset: a key of :data:`diffeat.PRESETS`.
        unet: the model's U-Net config.
        model: the model (for messages).
    """
    if layers is not None and preset is not None:
        raise InvalidValue("layers", "pass either layers=[...] or preset=..., not both")
    argument = "preset" if preset is not None else "layers"
    if isinstance(layers, str) and layers in PRESETS:
        preset = layers
    family = family_of(unet)
    model_shown = shown("model_id_or_dir", model)
    if preset is not None and family is not None and get_preset(preset).family != family:
        fitting = ", ".join(sorted(n for n, p in PRESETS.items() if p.family == family))
        raise InvalidValue(
            argument,
            f"{{{argument}}} {preset}: its names are those of {get_preset(preset).family} "
            f"U-Nets, but {model_shown} is {family}-shaped (its presets: {fitting})",
        )
    if layers is None and preset is None and family is None:
        what = ("this U-Net is neither SD 1.x/2.x- nor SDXL-shaped" if "down_block_types" in unet
                else "no preset fits this transformer's shape")  # fmt: skip
        raise InvalidValue(
            "model_id_or_dir",
            f"{model_shown}: {what}, so no paper preset applies; pass {{layers}} NAMES or 'all'",
        )
    if layers is not None:
        return layer_selection(layers, argument), preset
    preset = preset or default_preset(unet)
    return get_preset(preset).layers, preset


def model_infos(
    configs: ModelConfigs,
    size: tuple[int, int],
    faithful: bool = False,
    control: Mapping[str, Any] | None = None,
    text_tokens: int | None = None,
) -> list[LayerInfo]:
    """``vae-out`` (with ``faithful``: the decoded image), the network's catalogue and that of
    the ``control`` config's ControlNet with shapes for ``size`` images, rounded up to the
    model's size multiple (a shape-only pass on the meta device: no weights, no memory);
    ``text_tokens`` prompt tokens (T5's ``max_sequence_length``; default: the backbone's)."""
    multiple, scale = configs.size_multiple, configs.vae_scale
    height, width = (-(-side // multiple) * multiple for side in size)
    latent = (configs.vae["latent_channels"], height // scale, width // scale)
    if faithful:
        latent = (configs.vae.get("out_channels", 3), height, width)
    tokens = configs.backbone.prompt_tokens(text_tokens)
    unet = configs.backbone.layer_infos(configs.unet, (height, width), tokens, scale)
    if control is not None:
        unet += control_layer_infos(control, (height, width), TEXT_TOKENS, scale)
    return [LayerInfo(VAE_SPEC, latent), *unet]


def check_layer_names(
    requested: tuple[str, ...], infos: Sequence[LayerInfo], argument: str = "layers"
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
        raise InvalidArgument(argument, literal(message)) from None
    return requested


def check_control_image(control_image: Any, controlnet: Any) -> None:
    """The conditioning image: given with a ControlNet only, and a file decoded completely (a
    check of the inputs alone, made before any model file is read).

    Args:
        control_image: an image, a file, or None.
        controlnet: the ControlNet (a model, folder or hub id), or None.
    """
    if control_image is not None and controlnet is None:
        raise InvalidArgument("control_image", "needs {controlnet} PATH (no ControlNet is given)")
    if isinstance(control_image, str | Path):
        try:
            check_image_file(Path(control_image))
        except (OSError, ValueError) as error:
            raise InvalidValue("control_image", "{control_image} " + literal(error)) from None


def check_adapter_sources(
    model: str | Path,
    unet: Mapping[str, Any],
    loras: Sequence[Any],
    controlnet: Any,
) -> dict[str, Any] | None:
    """LoRA files and a ControlNet given by path or hub id, checked against the model before
    any of its weights are read; returns the ControlNet's config (None without one).

    Args:
        model: the base model (folder or hub id).
        unet: its U-Net config.
        loras: LoRA sources (paths and hub ids are checked; state dicts are checked on load).
        controlnet: a ControlNet folder or hub id (a loaded ``ControlNetModel`` is checked when
            it is set).
    """
    paths = [source for source in loras if isinstance(source, str | Path)]
    for source in paths:
        resolve_source(source, "lora", "LoRA file or folder")
    by_path = isinstance(controlnet, str | Path)
    if by_path:
        resolve_source(controlnet, "controlnet")
    try:
        check_adapters(str(model), unet, [str(p) for p in paths], controlnet if by_path else None)
    except ValueError as error:  # "lora PATH: ..." or "controlnet: ..."
        argument, rest = re.fullmatch(r"(\w+)(.*)", str(error), re.S).groups()
        raise InvalidValue(argument, f"{{{argument}}}{literal(rest)}") from None
    except OSError as error:
        text = "{lora}/{controlnet}: " + literal(" ".join(str(error).split()))
        local = all(isinstance(p, Path) or Path(p).exists() for p in paths)
        if local and (not by_path or Path(controlnet).exists()):
            raise InvalidValue("lora", text) from None
        raise SourceError("lora", text) from None
    if not by_path:
        return None
    import diffusers

    return dict(diffusers.ControlNetModel.load_config(str(controlnet)))
