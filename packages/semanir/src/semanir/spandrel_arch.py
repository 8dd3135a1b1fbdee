"""SemanIR and DnCNN as spandrel architectures (chaiNNer, ComfyUI): :func:`register_spandrel`.

``spandrel.ModelLoader().load_from_file("model.safetensors")`` recognises a state dict by its
keys and reads the architecture from its shapes: channels, widths, stage depths, heads, U-net
levels, MLP ratio, upsampler and scale (DnCNN: channels, features, depth, batch norm). What
the weights do not determine (window size, k, similarity, dictionary mode, norm placement,
input mean and range) comes from the ``semanir_settings`` tensor of a file written by
:func:`save_for_spandrel` (a uint8 JSON buffer), else from the shipped named config with those
shapes (``semanir.CONFIGS``; the key-semantic one before its dense twin): the bundled weights
and every ``save_pretrained`` file of a shipped config load as they are.

Hosts such as ComfyUI feed every model RGB images. A gray model written with
``luma_input=True`` loads as a :class:`LumaInput` model: RGB in, its BT.601 luma restored and
its chroma kept, RGB out, as ``semanir restore`` treats a colour photo (:func:`write_bundled`
writes the bundled models so).

Needs ``spandrel`` (the ``spandrel`` extra); importing semanir does not import this module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    SizeRequirements,
    StateDict,
)
from spandrel.util import KeyCondition, get_seq_len
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.files import atomic_write, convert_channels

from .bundled import BUNDLED_MODELS
from .data.degradations import bicubic_resize
from .models import CONFIGS, DnCNN, DnCNNConfig, SemanIR, SemanIRConfig

SETTINGS_KEY = "semanir_settings"
# present (any value) in a gray model's file: it loads as LumaInput, taking RGB images
LUMA_INPUT_KEY = "semanir_luma_input"
# SemanIRConfig fields the weights' shapes do not determine (heads: when neither cosine
# attention nor the position bias holds a per-head tensor; the widths of a position MLP or an
# upsampler the model does not have)
SETTINGS = ("window_size", "top_k", "train_k_choices", "inference_k", "similarity", "dictionary",
            "norm", "img_range", "img_mean", "attention_backend", "heads",
            "position_bias_hidden", "upsampler_dim")  # fmt: skip
# Measured on the CPU (fp16 or bf16 weights and input against fp32, the pinned README image of
# each bundled model, tests/test_spandrel.py): PSNR 59-64 dB (fp16) and 49-55 dB (bf16) over
# fp32's output, at most 2 and 7 8-bit levels apart; DnCNN (random weights: none ship) above
# 60 dB. Both dtypes are usable (> 45 dB), for both architectures.
SEMANIR_HALF, SEMANIR_BFLOAT16 = True, True
DNCNN_HALF, DNCNN_BFLOAT16 = True, True


def encode_settings(config: SemanIRConfig) -> torch.Tensor:
    """The :data:`SETTINGS` fields of ``config`` as a uint8 tensor of their JSON (what
    ``.to(dtype)`` leaves alone: it converts floating tensors only)."""
    fields = {name: getattr(config, name) for name in SETTINGS}
    return torch.tensor(list(json.dumps(fields, sort_keys=True).encode()), dtype=torch.uint8)


def decode_settings(tensor: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`encode_settings`."""
    return json.loads(bytes(tensor.tolist()).decode())


class LumaInput(nn.Module):
    """A gray model for RGB images: it restores their BT.601 luma and adds back their chroma
    (upscaled bicubically with the image), clamped to [0, 1]: what ``semanir restore`` (and
    :func:`semanir.batch.restore_photo`'s ``colour="luma"``) does with a colour photo.

    Args:
        model: a model with ``in_channels == 1`` and an ``upscale`` attribute.
    """

    in_channels = 3
    out_channels = 3

    def __init__(self, model: SemanIR | DnCNN) -> None:
        super().__init__()
        if model.in_channels != 1:
            raise InvalidArgument(
                "model", f"LumaInput wraps gray models (in_channels=1), got {model.in_channels}"
            )
        self.model = model
        self.upscale = int(getattr(model, "upscale", 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H * upscale, W * upscale) in [0, 1]."""
        luma = convert_channels(x, "gray")  # (B, 1, H, W)
        restored = self.model(luma).clamp(0.0, 1.0)  # (B, 1, H', W')
        chroma = x - luma  # (B, 3, H, W): R-Y, G-Y, B-Y
        if self.upscale > 1:
            chroma = bicubic_resize(chroma, self.upscale)  # (B, 3, H', W')
        return (restored + chroma).clamp(0.0, 1.0)


def spandrel_state_dict(model: SemanIR | DnCNN, luma_input: bool = False) -> dict[str, Tensor]:
    """``model``'s state dict with its settings (:func:`encode_settings`) for SemanIR, and the
    :data:`LUMA_INPUT_KEY` mark when ``luma_input`` (see :func:`save_for_spandrel`)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if isinstance(model, SemanIR):
        state[SETTINGS_KEY] = encode_settings(model.config)
    if luma_input:
        if model.in_channels != 1:
            raise InvalidArgument(
                "luma_input", f"applies to gray models; this model takes {model.in_channels} "
                "channels"
            )  # fmt: skip
        state[LUMA_INPUT_KEY] = torch.ones(1, dtype=torch.uint8)
    return state


def save_for_spandrel(
    model: SemanIR | DnCNN, path: str | os.PathLike, *, luma_input: bool = False
) -> Path:
    """Write ``model`` as one ``.safetensors`` file spandrel loads with every setting (also
    those of configs that ship with no name), atomically.

    Args:
        model: a SemanIR or DnCNN model.
        path: the file to write (its folder must exist).
        luma_input: a gray model loads as :class:`LumaInput` (RGB in and out), for hosts that
            give every model RGB images (ComfyUI's "Upscale Image (using Model)").

    Returns:
        The path written.
    """
    state = spandrel_state_dict(model, luma_input)
    with atomic_write(path) as temp:
        save_file(state, os.fspath(temp))
    return Path(path)


def write_bundled(folder: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Write bundled models as ``<name>.safetensors`` files spandrel loads, the gray ones
    with ``luma_input`` (RGB in and out): the files ComfyUI's "Load Upscale Model" reads from
    ``models/upscale_models`` (each written atomically; an existing one is replaced).

    Args:
        folder: an existing folder.
        names: bundled model names (``semanir models``); None: every installed one.

    Returns:
        The files written, in ``names``' order.
    """
    from .inference import load_model

    installed = [name for name, model in BUNDLED_MODELS.items() if model.is_installed()]
    names = installed if names is None else list(names)
    unknown = [name for name in names if name not in installed]
    if unknown:
        raise InvalidArgument(
            "names", f"not bundled models of this installation: {', '.join(unknown)} (these "
            f"are: {', '.join(installed)})"
        )  # fmt: skip
    target = Path(folder)
    if not target.is_dir():
        raise InvalidArgument("folder", f"must be an existing folder, got {os.fspath(folder)!r}")
    written = []
    for name in names:
        model = load_model(name)
        luma = BUNDLED_MODELS[name].channels == "gray"
        written.append(save_for_spandrel(model, target / f"{name}.safetensors", luma_input=luma))
    return written


# -- SemanIR ------------------------------------------------------------------------------------


def _heads(state: StateDict, stage: int) -> int | None:
    """Heads of a stage from its first layer's per-head tensors (None: it has none)."""
    prefix = f"stages.{stage}.layers.0.attn."
    if prefix + "logit_scale" in state:
        return state[prefix + "logit_scale"].shape[0]
    if prefix + "position_mlp.2.weight" in state:
        return state[prefix + "position_mlp.2.weight"].shape[0]
    return None


def _reconstruction(state: StateDict) -> dict[str, int]:
    """out_channels, upscale and upsampler_dim from the reconstruction's convolutions."""
    if "reconstruct.weight" in state:  # one conv 3x3: restoration at scale 1
        return {"out_channels": state["reconstruct.weight"].shape[0], "upscale": 1}
    layers = get_seq_len(state, "reconstruct")  # conv, act, (conv, shuffle) x 1|2, conv
    width = state["reconstruct.0.weight"].shape[0]
    shuffled = state["reconstruct.2.weight"].shape[0] // width  # factor**2
    upscale = 4 if layers == 7 else math.isqrt(shuffled)  # 7 layers: two x2 steps
    out_channels = state[f"reconstruct.{layers - 1}.weight"].shape[0]
    return {"out_channels": out_channels, "upscale": upscale, "upsampler_dim": width}


def semanir_shape_fields(state: StateDict) -> dict[str, Any]:
    """The :class:`SemanIRConfig` fields a SemanIR state dict's keys and shapes determine."""
    in_channels = state["shallow.weight"].shape[1]
    embed_dim = state["shallow.weight"].shape[0]
    stages = get_seq_len(state, "stages")
    downs = get_seq_len(state, "downs")
    widths = [embed_dim] + [state[f"downs.{i}.weight"].shape[0] for i in range(downs)]
    attention = "stages.0.layers.0.attn."
    hidden = state["stages.0.layers.0.mlp.0.weight"].shape[0]
    fields = {
        "in_channels": in_channels,
        "embed_dim": embed_dim,
        "depths": tuple(get_seq_len(state, f"stages.{i}.layers") for i in range(stages)),
        "dim_mults": tuple(width // embed_dim for width in widths),
        "architecture": "unet" if downs else "columnar",
        "mlp_ratio": hidden / embed_dim,
        "cosine_attention": attention + "logit_scale" in state,
        "position_bias": attention + "position_mlp.0.weight" in state,
        **_reconstruction(state),
    }
    if fields["position_bias"]:
        fields["position_bias_hidden"] = state[attention + "position_mlp.0.weight"].shape[0]
    heads = tuple(_heads(state, i) for i in range(stages))
    if None not in heads:
        fields["heads"] = heads
    return fields


def shipped_settings(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The :data:`SETTINGS` of the shipped named config whose shape fields are ``fields``
    (one with a key-semantic dictionary before a dense twin), or None."""
    matches = []
    for factory in CONFIGS.values():
        config = factory()
        if not isinstance(config, SemanIRConfig):
            continue
        if all(getattr(config, name) == value for name, value in fields.items()):
            matches.append(config)
    if not matches:
        return None
    config = next((c for c in matches if c.dictionary != "dense"), matches[0])
    return {name: getattr(config, name) for name in SETTINGS}


def config_from_state(state: StateDict) -> SemanIRConfig:
    """The config of a SemanIR state dict (its shapes, and its settings or a shipped config's).

    Raises:
        ValueError: no settings in the state dict and no shipped config of these shapes.
    """
    fields = semanir_shape_fields(state)
    if SETTINGS_KEY in state:
        settings = decode_settings(state[SETTINGS_KEY])
    else:
        settings = shipped_settings(fields)
    if settings is None:
        raise ValueError(
            "these SemanIR weights match no shipped config and carry no settings (window size, "
            "k, ...): write them with semanir.spandrel_arch.save_for_spandrel(model, path)"
        )
    return SemanIRConfig(**{**settings, **fields})  # the shapes' heads, when they tell them


def _semanir_tags(config: SemanIRConfig) -> list[str]:
    k = "dense" if config.dictionary == "dense" else f"k{config.resolved_inference_k}"
    return [config.architecture, f"{config.embed_dim}dim", f"w{config.window_size}", k]


class SemanIRArch(Architecture[SemanIR]):
    """SemanIR (U-net restoration or columnar super-resolution), dense twins included."""

    def __init__(self) -> None:
        super().__init__(
            id="SemanIR",
            detect=KeyCondition.has_all(
                "shallow.weight",
                "stages.0.conv.weight",
                "stages.0.layers.0.attn.qkv.weight",
                "stages.0.layers.0.attn.proj.weight",
                "stages.0.layers.0.mlp.0.weight",
                "stages.0.layers.0.norm1.weight",
                KeyCondition.has_any("reconstruct.weight", "reconstruct.0.weight"),
            ),
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[SemanIR | LumaInput]:
        config = config_from_state(state_dict)
        marks = (SETTINGS_KEY, LUMA_INPUT_KEY)
        model, weights = with_luma_input(
            SemanIR(config), {name: t for name, t in state_dict.items() if name not in marks},
            LUMA_INPUT_KEY in state_dict,
        )  # fmt: skip
        tags = _semanir_tags(config) + (["luma-input"] if isinstance(model, LumaInput) else [])
        return ImageModelDescriptor(
            model,
            weights,
            architecture=self,
            purpose="SR" if config.upscale > 1 else "Restoration",
            tags=tags,
            supports_half=SEMANIR_HALF,
            supports_bfloat16=SEMANIR_BFLOAT16,
            scale=config.upscale,
            input_channels=model.in_channels,
            output_channels=3 if isinstance(model, LumaInput) else config.out_channels,
            size_requirements=SizeRequirements(),  # the model reflect-pads to its windows
        )


def with_luma_input(
    model: nn.Module, weights: dict[str, Tensor], luma_input: bool
) -> tuple[nn.Module, dict[str, Tensor]]:
    """``model`` and its ``weights``, or, with ``luma_input``, the :class:`LumaInput` around it
    and the weights under its ``model.`` prefix (what spandrel loads into the returned one)."""
    if not luma_input:
        return model, weights
    return LumaInput(model), {f"model.{name}": tensor for name, tensor in weights.items()}


# -- DnCNN --------------------------------------------------------------------------------------


def _convolutions(state: StateDict) -> list[int]:
    """Indices of the 4-d conv weights of ``body``, in order."""
    return sorted(
        int(name.split(".")[1]) for name, tensor in state.items()
        if name.startswith("body.") and name.endswith(".weight") and tensor.ndim == 4
    )  # fmt: skip


def is_dncnn(state: StateDict) -> bool:
    """semanir's DnCNN: only ``body.*`` keys, a biased first conv, an unbiased last conv, and
    a ReLU (no parameters) after the first conv."""
    if not KeyCondition.has_all("body.0.weight", "body.0.bias")(state) or "body.1.weight" in state:
        return False
    if any(not name.startswith("body.") for name in state if name != LUMA_INPUT_KEY):
        return False
    convs = _convolutions(state)
    return len(convs) >= 2 and f"body.{convs[-1]}.bias" not in state


def dncnn_config(state: StateDict) -> DnCNNConfig:
    """The config of a DnCNN state dict, from its shapes."""
    first = state["body.0.weight"]  # (features, channels, 3, 3)
    return DnCNNConfig(
        channels=first.shape[1],
        features=first.shape[0],
        depth=len(_convolutions(state)),
        batch_norm="body.3.running_mean" in state,
    )


class SemanIRDnCNNArch(Architecture[DnCNN]):
    """semanir's DnCNN (its ``body.*`` layout; spandrel's own DnCNN reads KAIR's ``model.*``)."""

    def __init__(self) -> None:
        super().__init__(id="SemanIR-DnCNN", name="DnCNN (semanir)", detect=is_dncnn)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[DnCNN | LumaInput]:
        config = dncnn_config(state_dict)
        weights = {name: t for name, t in state_dict.items() if name != LUMA_INPUT_KEY}
        model, weights = with_luma_input(DnCNN(config), weights, LUMA_INPUT_KEY in state_dict)
        return ImageModelDescriptor(
            model,
            weights,
            architecture=self,
            purpose="Restoration",
            tags=[f"{config.features}nf", f"{config.depth}nb"],
            supports_half=DNCNN_HALF,
            supports_bfloat16=DNCNN_BFLOAT16,
            scale=1,
            input_channels=model.in_channels,
            output_channels=model.in_channels,
            size_requirements=SizeRequirements(),
        )


ARCHITECTURES = (
    ArchSupport.from_architecture(SemanIRArch()),
    ArchSupport.from_architecture(SemanIRDnCNNArch()),
)


def register_spandrel(registry: ArchRegistry | None = None) -> list[ArchSupport]:
    """Add SemanIR's and DnCNN's architectures to spandrel's ``MAIN_REGISTRY`` (or
    ``registry``), as ``spandrel_extra_arches.install()`` does; a second call adds nothing.

    Returns:
        The architectures added by this call.
    """
    target = MAIN_REGISTRY if registry is None else registry
    return target.add(*ARCHITECTURES, ignore_duplicates=True)


__all__ = [
    "ARCHITECTURES",
    "LumaInput",
    "SemanIRArch",
    "SemanIRDnCNNArch",
    "register_spandrel",
    "save_for_spandrel",
    "spandrel_state_dict",
    "write_bundled",
]
