"""LoRA weights and ControlNets on an extractor's U-Net, checked against it before any pass.

LoRA files are read and loaded by diffusers' own loaders (``lora_state_dict`` and
``load_lora_weights`` of ``StableDiffusionLoraLoaderMixin`` / ``StableDiffusionXLLoraLoaderMixin``,
PEFT underneath), optionally fused. Before anything is loaded, every LoRA weight is matched
with a module of the model (:func:`check_lora_state_dict`): a key that names no module, a
module that is not a linear or convolution layer, a rank matrix of the wrong width or a key of
no known component raises one ``ValueError`` naming the key (diffusers would skip some of these
with a log line, or load them into a model of another family whose module paths happen to
exist). ControlNet configurations are compared with the U-Net's (:func:`check_controlnet_config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

# ControlNet config keys that must equal the U-Net's: its residuals are added to the U-Net's
# down blocks and mid block, and it takes the same latent, timestep and text conditioning.
CONTROLNET_MATCH = (
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)
_DEFAULTS = {"layers_per_block": 2, "transformer_layers_per_block": 1}


def lora_components(unet: nn.Module, text_encoders: Sequence[nn.Module]) -> dict[str, nn.Module]:
    """``{key prefix: module}`` a LoRA state dict of diffusers' format may address."""
    components = {"unet": unet}
    for i, encoder in enumerate(text_encoders):
        components["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = encoder
    return components


def _module_path(key: str) -> str:
    index = key.find(".lora")
    return key[:index] if index >= 0 else key.rsplit(".", 1)[0]


def _normalized(value: Any, length: int) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, int) and length:
        return [value] * length
    return value


def _peft_keys(prefix: str, part: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """One component's LoRA weights with the key conversion diffusers applies when loading
    (``load_lora_adapter`` for the U-Net, ``_load_lora_into_text_encoder`` for text encoders):
    PEFT keys ``PATH.lora_A.weight`` / ``PATH.lora_B.weight``."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if prefix == "unet":
        return part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if not hasattr(module, "text_model"):  # flattened CLIP text models of newer transformers
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    return part


def check_lora_state_dict(
    state_dict: Mapping[str, Tensor], components: Mapping[str, nn.Module], source: str = "lora"
) -> dict[str, int]:
    """Raise ``ValueError`` unless every LoRA weight fits a module of ``components``.

    The keys are converted as diffusers converts them when loading, then each must name a
    linear or convolution layer whose width matches the rank matrix. Works on models on the
    ``meta`` device (only module types and weight shapes are read).

    Args:
        state_dict: as returned by diffusers' ``lora_state_dict`` (keys ``unet.PATH...``,
            ``text_encoder.PATH...``, ``text_encoder_2.PATH...``).
        components: from :func:`lora_components`.
        source: the LoRA's name in messages (its path).

    Returns:
        ``{component: number of layers the LoRA targets there}``.
    """
    if not state_dict:
        raise ValueError(f"lora {source}: the file holds no LoRA weights")
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix not in components or not rest:
            known = ", ".join(f"{p}." for p in components)
            raise ValueError(
                f"lora {source}: key {key!r} addresses no component of this model (keys must "
                f"start with {known}); was it made for another model family?"
            )
        parts.setdefault(prefix, {})[rest] = value
    targets: dict[str, int] = {}
    for prefix, part in parts.items():
        model = components[prefix]
        paths = set()
        for rest, value in _peft_keys(prefix, part, model).items():
            key = f"{prefix}.{rest}"
            path = _module_path(rest)
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"lora {source}: {key!r} targets {prefix}.{path}, which this model does not "
                    "have; the LoRA was made for another model"
                ) from None
            base = getattr(module, "base_layer", module)  # a layer that already holds a LoRA
            if not isinstance(base, nn.Linear | nn.Conv2d):
                raise ValueError(
                    f"lora {source}: {key!r} targets {prefix}.{path}, a {type(base).__name__}; "
                    "LoRA applies to linear and convolution layers"
                )
            paths.add(path)
            weight = base.weight
            if ".lora_A." in key and value.ndim >= 2 and value.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"lora {source}: {key!r} takes {value.shape[1]} input features but "
                    f"{prefix}.{path} has {weight.shape[1]}; the LoRA was made for another model"
                )
            if ".lora_B." in key and value.ndim >= 2 and value.shape[0] != weight.shape[0]:
                raise ValueError(
                    f"lora {source}: {key!r} gives {value.shape[0]} output features but "
                    f"{prefix}.{path} has {weight.shape[0]}; the LoRA was made for another model"
                )
        targets[prefix] = len(paths)
    return targets


def lora_source(source, load: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(what diffusers' loaders take, their keyword arguments)`` for a LoRA source: a file
    becomes its folder and ``weight_name``; a state dict is copied (the loaders pop from it)."""
    from pathlib import Path

    load = dict(load)
    if isinstance(source, Path):
        source = str(source)
    if isinstance(source, str) and Path(source).is_file():
        load.setdefault("weight_name", Path(source).name)
        source = str(Path(source).parent)
    if isinstance(source, Mapping):
        source = dict(source)
    elif not isinstance(source, str):
        raise TypeError(f"lora: expected a path, hub id or state dict; got {type(source).__name__}")
    return source, load


def read_lora(source, **load) -> tuple[dict[str, Tensor], dict | None, Any]:
    """A LoRA's state dict, network alphas and metadata, read by diffusers' ``lora_state_dict``
    (which converts Kohya/A1111 files to diffusers' keys).

    Args:
        source: a ``.safetensors`` file, a folder or hub id holding one, or a state dict.
        **load: ``weight_name``, ``subfolder`` and the usual hub options.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    source, load = lora_source(source, load)
    state_dict, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
        source, return_lora_metadata=True, **load
    )
    return state_dict, alphas, metadata


def lora_loader(unet: nn.Module, text_encoders: Sequence[nn.Module], dual: bool):
    """An object with diffusers' LoRA loader methods (``load_lora_weights``, ``fuse_lora``,
    ``set_adapters``, ``unload_lora_weights``) acting on these components, no pipeline built
    (a pipeline's constructor would rewrite the configs of tiny or old models)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    base = StableDiffusionXLLoraLoaderMixin if dual else StableDiffusionLoraLoaderMixin

    class Loader(base):
        hf_device_map = None

        def __init__(self):
            self.unet = unet
            self.text_encoder = text_encoders[0] if text_encoders else None
            self.text_encoder_2 = text_encoders[1] if len(text_encoders) > 1 else None

        @property
        def components(self) -> dict[str, nn.Module | None]:
            return {
                "unet": self.unet,
                "text_encoder": self.text_encoder,
                "text_encoder_2": self.text_encoder_2,
            }

    return Loader()


def check_controlnet_config(control: Mapping[str, Any], unet: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless a ControlNet config fits a U-Net config.

    Args:
        control: the ``ControlNetModel`` config.
        unet: the ``UNet2DConditionModel`` config.
    """
    levels = len(unet["down_block_types"])
    problems = []
    for key in CONTROLNET_MATCH:
        ours = _normalized(control.get(key, _DEFAULTS.get(key)), levels)
        theirs = _normalized(unet.get(key, _DEFAULTS.get(key)), levels)
        if ours != theirs:
            problems.append(f"{key} {ours!r} (U-Net: {theirs!r})")
    if problems:
        raise ValueError(
            "controlnet: it does not fit this U-Net: " + "; ".join(problems) + " (a ControlNet "
            "for another base model?)"
        )


def meta_components(model: str, unet_config: Mapping[str, Any], **load) -> dict[str, nn.Module]:
    """The U-Net and text encoders of ``model`` built on the ``meta`` device from their config
    files (no weights read), as :func:`check_lora_state_dict` takes them."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffeat.shapes import meta_unet

    unet = meta_unet(unet_config)
    encoders = []
    kinds = [("text_encoder", CLIPTextModel)]
    if unet_config.get("addition_embed_type") == "text_time":
        kinds.append(("text_encoder_2", CLIPTextModelWithProjection))
    for subfolder, cls in kinds:
        config = CLIPTextConfig.from_pretrained(model, subfolder=subfolder, **load)
        with torch.device("meta"):
            encoders.append(cls(config))
    return lora_components(unet, encoders)


def check_adapters(
    model: str,
    unet_config: Mapping[str, Any],
    loras: Sequence[str] = (),
    controlnet: str | None = None,
    **load,
) -> None:
    """Check LoRA files and a ControlNet against ``model`` before any weights of it are read.

    Each LoRA is read (it is small) and matched with meta-device copies of the model's U-Net
    and text encoders; the ControlNet's config is compared with the U-Net's. Raises
    ``ValueError`` (or ``OSError`` for a file or repository that cannot be read).

    Args:
        model: the base model (hub id or folder).
        unet_config: its U-Net config.
        loras: LoRA files, folders or hub ids.
        controlnet: a ControlNet folder or hub id.
        **load: hub options.
    """
    if controlnet is not None:
        from diffusers import ControlNetModel

        check_controlnet_config(ControlNetModel.load_config(controlnet, **load), unet_config)
    if loras:
        components = meta_components(model, unet_config, **load)
        for source in loras:
            state_dict, _, _ = read_lora(source, **load)
            check_lora_state_dict(state_dict, components, str(source))
