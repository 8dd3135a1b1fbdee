"""SDXL LoRAs on a Pixelsmith pipeline: checked against the model before they are loaded.

``PixelsmithPipeline.load_lora_weights`` is diffusers' ``StableDiffusionXLLoraLoaderMixin``
method (PEFT backend) with one check in front: every LoRA tensor of the file must name a layer
of the UNet or of a text encoder, with that layer's input and output widths. diffusers alone
loads a file of unknown keys without complaint (nothing changes) and reports a LoRA made for
another model as a many-line ``size mismatch`` list; here both are one ``ValueError`` raised
before any weight changes, so before any denoising step.

Because the same UNet runs every stage, a loaded LoRA acts on the base image and on every
Pixelsmith stage of a cascade. :func:`lora_identity` describes the loaded adapters for the
checkpoint of a run (a run resumes only with the same LoRAs at the same scales).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidValue, literal
from pixelsmith.sources import check_source, check_source_hub

if TYPE_CHECKING:  # diffusers is imported where LoRAs load, not to check the options
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

# the components an SDXL LoRA file may target, by key prefix
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# "<module>.<suffix>": the down (A) and up (B) matrices in the formats diffusers reads
_LORA_KEY = re.compile(
    r"^(?P<component>unet|text_encoder|text_encoder_2)\.(?P<module>.+?)\."
    r"(?P<kind>lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)"
    r"\.(?P<param>weight|bias)$"
)
# entries next to the matrices that name no layer shape: alphas and DoRA magnitudes
_EXTRA_KEY = re.compile(r"\.(alpha|lora_magnitude_vector(\.weight)?)$")


@dataclass(frozen=True)
class LoraMismatch:
    """One LoRA tensor that does not fit the model.

    Args:
        key: the tensor's key in the file.
        reason: why it does not fit, in words.
    """

    key: str
    reason: str


def _base_layer(module: nn.Module) -> nn.Module:
    """The plain layer under a PEFT wrapper (a layer that already holds another LoRA)."""
    return getattr(module, "base_layer", module)


def _layer_widths(module: nn.Module) -> tuple[int, int] | None:
    """(input, output) width of a Linear or Conv2d, or None for other layers."""
    module = _base_layer(module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return None


def _check_key(key: str, tensor: Tensor, components: Mapping[str, nn.Module]) -> str | None:
    """Why the LoRA tensor ``key`` does not fit ``components``, or None when it fits."""
    match = _LORA_KEY.match(key)
    if match is None:
        return "not a LoRA matrix of the UNet or a text encoder"
    component = components.get(match["component"])
    if component is None:
        return f"the pipeline has no {match['component']}"
    try:
        layer = component.get_submodule(match["module"])
    except AttributeError:
        return f"{match['component']} has no layer {match['module']}"
    widths = _layer_widths(layer)
    if widths is None:
        return f"{match['module']} is a {type(_base_layer(layer)).__name__}, not a Linear or Conv2d"
    down = match["kind"] in ("lora_A", "lora.down", "lora_linear_layer.down")
    if match["param"] == "bias":
        return None if down or tensor.shape[0] == widths[1] else "bias of the wrong width"
    expected = widths[0] if down else widths[1]
    found = tensor.shape[1] if down else tensor.shape[0]
    if tensor.ndim < 2 or found != expected:
        side = "input" if down else "output"
        return (
            f"{match['component']}.{match['module']} has {expected} {side} features, "
            f"the file's {'down' if down else 'up'} matrix {tuple(tensor.shape)} expects {found}"
        )
    return None


def lora_mismatches(
    state_dict: Mapping[str, Tensor], components: Mapping[str, nn.Module]
) -> list[LoraMismatch]:
    """The tensors of a LoRA ``state_dict`` (diffusers' keys) that do not fit ``components``.

    Args:
        state_dict: what ``StableDiffusionXLPipeline.lora_state_dict`` returns for a file.
        components: ``{"unet": ..., "text_encoder": ..., "text_encoder_2": ...}``.
    """
    mismatches = []
    for key, tensor in state_dict.items():
        if _EXTRA_KEY.search(key):
            continue
        reason = _check_key(key, tensor, components)
        if reason is not None:
            mismatches.append(LoraMismatch(key, reason))
    return mismatches


def check_lora_state_dict(
    state_dict: Mapping[str, Tensor], components: Mapping[str, nn.Module], source: str
) -> None:
    """Raise one ``ValueError`` when a LoRA does not fit the model (or holds no LoRA matrix).

    Args:
        state_dict: the LoRA in diffusers' keys.
        components: the pipeline's UNet and text encoders by name.
        source: how the LoRA is named in the message (its path or hub id).
    """
    matrices = [key for key in state_dict if _LORA_KEY.match(key)]
    if not matrices:
        shown = ", ".join(repr(key) for key in list(state_dict)[:2]) or "none"
        raise ValueError(
            f"lora {source}: holds no LoRA matrix of an SDXL UNet or text encoder (keys such as "
            f"{shown}); expected an SDXL LoRA in diffusers, PEFT or kohya format"
        )
    mismatches = lora_mismatches(state_dict, components)
    if mismatches:
        first = mismatches[0]
        more = f" (and {len(mismatches) - 1} more tensors)" if len(mismatches) > 1 else ""
        raise ValueError(
            f"lora {source}: does not match the model: {first.key}: {first.reason}{more}; "
            "is it a LoRA for another base model than this SDXL one?"
        )


@contextlib.contextmanager
def quiet_lora_notices() -> Iterator[None]:
    """diffusers' notices about a component without LoRA keys hidden (a UNet-only LoRA is
    normal); errors still show."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def lora_identity(components: Mapping[str, nn.Module]) -> dict:
    """The loaded LoRA adapters, for a run's checkpoint: per adapter a SHA-256 of its weights,
    and per layer the scaling of each adapter (scales set with ``set_adapters`` included).

    Args:
        components: the pipeline's UNet and text encoders by name.
    """
    digests: dict[str, Any] = {}  # adapter -> running hashlib.sha256
    scalings: dict[str, float] = {}
    for name, component in components.items():
        for module_name, module in component.named_modules():
            scaling = getattr(module, "scaling", None)
            if not isinstance(scaling, dict) or not hasattr(module, "lora_A"):
                continue
            active = getattr(module, "active_adapters", list(scaling))
            for adapter in sorted(scaling):
                scale = float(scaling[adapter]) if adapter in active else 0.0
                scalings[f"{name}.{module_name}.{adapter}"] = scale
                digest = digests.setdefault(adapter, hashlib.sha256())
                for matrices in (module.lora_A, module.lora_B):
                    weight = matrices[adapter].weight.detach().float().cpu().contiguous()
                    digest.update(weight.view(torch.uint8).numpy().tobytes())
    return {
        "adapters": {adapter: digest.hexdigest() for adapter, digest in sorted(digests.items())},
        "scaling": hashlib.sha256(repr(sorted(scalings.items())).encode()).hexdigest(),
    }


@dataclass(frozen=True)
class LoraPlan:
    """LoRAs checked without the model (:func:`check_lora_options`), ready to load.

    Args:
        sources: the LoRA files, folders or hub ids as given.
        found: each one's local path or hub id (the loader rule).
        scales: the scale of each LoRA.
    """

    sources: tuple[str | os.PathLike, ...]
    found: tuple[Path | str, ...]
    scales: tuple[float, ...]

    def check_hub(self) -> None:
        """Fail within 5 s, saying why, when a LoRA hub id can be neither fetched nor found in
        the cache."""
        for found in self.found:
            check_source_hub(found, "the LoRA")

    def load(self, pipe: StableDiffusionXLLoraLoaderMixin) -> list[str]:
        """Load the LoRAs into ``pipe`` and activate them together, each with its scale; every
        LoRA is checked against the model before the first one is loaded.

        Returns:
            The adapter names (``lora_0``, ``lora_1``, ...).

        Raises:
            InvalidValue: naming ``loras``: a LoRA that does not fit the model.
        """
        for source in self.sources:
            try:
                pipe.check_lora_weights(source)
            except ValueError as error:
                raise InvalidValue("loras", f"{{loras}}: {literal(error)}") from None
        adapters = [f"lora_{index}" for index in range(len(self.sources))]
        for source, adapter in zip(self.sources, adapters, strict=True):
            pipe.load_lora_weights(source, adapter_name=adapter)
        if adapters:
            pipe.set_adapters(adapters, adapter_weights=list(self.scales))
        return adapters


def check_lora_options(
    sources: Sequence[str | os.PathLike], scales: Sequence[float] | None = None
) -> LoraPlan:
    """LoRA sources and scales checked without the model.

    A source that looks like a path (``./``, ``/``, ``~`` or an existing name) must exist
    (:func:`pixelsmith.sources.check_source`); anything else must be a hub id.

    Args:
        sources: LoRA files, folders or hub ids (the ``loras`` argument).
        scales: one scale per LoRA, one for all, or ``None`` (1.0 each); finite numbers (the
            ``lora_scales`` argument).

    Raises:
        MissingPath: ``loras: no LoRA file or folder ...`` (a ``FileNotFoundError``).
        InvalidValue: naming ``loras`` or ``lora_scales``.
        TypeError: a scale that is not a number.
    """
    found = tuple(
        check_source(source, "loras", what="LoRA file or folder", file_ok=True)
        for source in sources
    )
    weights = [1.0] * len(sources)
    if scales is not None and len(scales) > 0:
        if not sources:
            raise InvalidValue("lora_scales", "{lora_scales} given without {loras}")
        if len(scales) not in (1, len(sources)):
            raise InvalidValue(
                "lora_scales",
                "{lora_scales} takes one scale for all LoRAs or one per LoRA "
                f"({len(sources)}), got {len(scales)}",
            )
        for scale in scales:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise TypeError(f"lora_scales must be finite numbers, got {scale!r}")
            if not math.isfinite(scale):
                raise InvalidValue(
                    "lora_scales", f"{{lora_scales}} must be finite numbers, got {scale}"
                )
        weights = [float(s) for s in scales] * (len(sources) if len(scales) == 1 else 1)
    return LoraPlan(tuple(sources), found, tuple(weights))


def load_loras(
    pipe: StableDiffusionXLLoraLoaderMixin,
    sources: Sequence[str | os.PathLike],
    scales: Sequence[float] | None = None,
) -> list[str]:
    """Load SDXL LoRAs into ``pipe`` and activate them together, each with its scale.

    Every LoRA is checked against the model (:func:`check_lora_state_dict`) before the first
    one is loaded, so a bad file leaves the pipeline unchanged.

    Args:
        pipe: a :class:`~pixelsmith.PixelsmithPipeline`.
        sources: LoRA files, folders (``pytorch_lora_weights.safetensors``) or hub ids.
        scales: one scale per LoRA, one for all, or ``None`` (1.0 each).

    Returns:
        The adapter names (``lora_0``, ``lora_1``, ...).
    """
    return check_lora_options(sources, scales).load(pipe)


class CheckedLoraLoaderMixin:
    """``load_lora_weights`` of diffusers' SDXL LoRA mixin with :meth:`check_lora_weights` in
    front (a base class of ``PixelsmithPipeline``, before ``StableDiffusionXLPipeline``)."""

    def check_lora_weights(
        self, pretrained_model_name_or_path_or_dict: str | Path | dict[str, Tensor], **kwargs
    ) -> None:
        """Raise one ``ValueError`` unless the LoRA fits this model's UNet and text encoders.

        Args:
            pretrained_model_name_or_path_or_dict: a LoRA file, folder, hub id or state dict.
            **kwargs: ``weight_name``, ``subfolder``, ... as for ``load_lora_weights``.
        """
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            label, source = "(state dict)", dict(source)
        else:
            label = str(source)
            found = check_source(source, "lora", what="LoRA file or folder", file_ok=True)
            check_source_hub(found, "the LoRA")
            source = os.fspath(found)
        options = {k: v for k, v in kwargs.items() if k not in ("low_cpu_mem_usage", "hotswap")}
        try:
            state_dict, _ = self.lora_state_dict(source, unet_config=self.unet.config, **options)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"lora {label}: cannot be read: {error}") from None
        components = {name: getattr(self, name, None) for name in LORA_COMPONENTS}
        components = {name: module for name, module in components.items() if module is not None}
        check_lora_state_dict(state_dict, components, label)

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | Path | dict[str, Tensor],
        adapter_name: str | None = None,
        **kwargs,
    ) -> None:
        """diffusers' SDXL LoRA loading (PEFT), after :meth:`check_lora_weights`: a LoRA of
        another model is one ``ValueError`` before any weight changes. It acts on every stage.

        Args:
            pretrained_model_name_or_path_or_dict: a LoRA file, folder, hub id or state dict.
            adapter_name: the adapter's name (diffusers picks one when ``None``).
            **kwargs: passed to ``StableDiffusionXLLoraLoaderMixin.load_lora_weights``.
        """
        self.check_lora_weights(pretrained_model_name_or_path_or_dict, **kwargs)
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, Path):
            source = str(source)
        with quiet_lora_notices():
            super().load_lora_weights(source, adapter_name=adapter_name, **kwargs)
