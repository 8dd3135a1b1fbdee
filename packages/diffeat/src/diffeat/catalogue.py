"""The activation catalogue of a diffusers ``UNet2DConditionModel``: names, modules, shapes.

Names (execution order):

* ``unet-in`` (the noisy latent fed to the U-Net), ``unet-after-conv-in``, ``unet-out``;
* per resnet: ``{down|up}-level{i}-repeat{j}-res-{increment|out}`` (``increment`` = the
  branch after ``conv2``, before the residual add; ``out`` = the block output);
* per transformer (ViT) module: ``{down|up}-level{i}-repeat{j}-vit-out`` (after ``proj_out``
  and the residual), and per transformer block ``k``:
  ``...-vit-block{k}-{self-q|self-k|self-v|self-map|cross-q|cross-map|ffn-inner|out}``;
* samplers: ``down-level{i}-downsampler-out``, ``up-level{i}-upsampler-out`` (resnet samplers,
  as in DeepFloyd IF, also ``...-increment``);
* DeepFloyd IF's added-KV attention modules (no transformer blocks): ``...-attn-out``;
* mid block: ``mid-repeat{j}-res-*``, ``mid-vit-out``, ``mid-vit-block{k}-*``.

Attention maps are stored as features with ``heads * keys`` channels (channel
``head * keys + key`` is the attention of every query pixel to that key); see
:func:`attention_map_view` for the ``(B, heads, HW, keys)`` layout.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

BLOCK_KINDS = (
    "self-q",
    "self-k",
    "self-v",
    "self-map",
    "cross-q",
    "cross-map",
    "ffn-inner",
    "block-out",
)
ATTENTION_KINDS = {"self-q", "self-k", "self-v", "self-map", "cross-q", "cross-map"}
TOKEN_KINDS = {"block-out", "ffn-inner"} | ATTENTION_KINDS


@dataclass(frozen=True)
class LayerSpec:
    """One catalogue entry.

    Args:
        name: the activation name.
        kind: ``unet-in``, ``unet-after-conv-in``, ``unet-out``, ``res-increment``, ``res-out``,
            ``vit-out``, ``attn-out`` (IF), ``downsampler-out``, ``upsampler-out`` or one of
            ``BLOCK_KINDS``.
        module: dotted path of the module that produces it inside the U-Net (``""`` = the U-Net).
        stage: ``unet``, ``down``, ``mid`` or ``up``.
        level: block index inside the stage (None for ``unet``/``mid``).
        repeat: resnet/transformer index inside the block (None for samplers).
        block: transformer block index (None outside transformer blocks).
    """

    name: str
    kind: str
    module: str
    stage: str
    level: int | None = None
    repeat: int | None = None
    block: int | None = None


@dataclass(frozen=True)
class LayerInfo:
    """A catalogue entry with its feature shape for one input size.

    Args:
        spec: the catalogue entry.
        shape: ``(C, h, w)`` of the feature for a batch of one.
        heads: attention heads (attention kinds only, else None).
    """

    spec: LayerSpec
    shape: tuple[int, int, int]
    heads: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def _transformer_block_types():
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return Transformer2DModel, BasicTransformerBlock


def _transformer_specs(
    transformer: nn.Module, path: str, prefix: str, stage: str, level: int | None, repeat: int
) -> list[LayerSpec]:
    transformer_cls, block_cls = _transformer_block_types()
    if not isinstance(transformer, transformer_cls):
        raise ValueError(
            f"{path}: {type(transformer).__name__} is not supported (diffeat reads diffusers "
            "Transformer2DModel attention modules, as in SD 1.5/2.1/SDXL U-Nets)"
        )
    specs = []
    for k, block in enumerate(transformer.transformer_blocks):
        if not isinstance(block, block_cls):
            raise ValueError(f"{path}.transformer_blocks.{k}: {type(block).__name__} unsupported")
        block_path = f"{path}.transformer_blocks.{k}"
        kinds = [
            ("self-q", "attn1"),
            ("self-k", "attn1"),
            ("self-v", "attn1"),
            ("self-map", "attn1"),
        ]
        if block.attn2 is not None:
            kinds += [("cross-q", "attn2"), ("cross-map", "attn2")]
        kinds += [("ffn-inner", "ff.net.0"), ("block-out", "")]
        for kind, sub in kinds:
            suffix = "out" if kind == "block-out" else kind
            specs.append(
                LayerSpec(
                    name=f"{prefix}-vit-block{k}-{suffix}",
                    kind=kind,
                    module=f"{block_path}.{sub}" if sub else block_path,
                    stage=stage,
                    level=level,
                    repeat=repeat,
                    block=k,
                )
            )
    specs.append(LayerSpec(f"{prefix}-vit-out", "vit-out", path, stage, level, repeat))
    return specs


def _attention_specs(
    attention: nn.Module, path: str, prefix: str, stage: str, level: int | None, repeat: int
) -> list[LayerSpec]:
    """A transformer module's names, or ``{prefix}-attn-out`` for a bare ``Attention`` (the
    added-KV attention of DeepFloyd IF's ``SimpleCrossAttn`` blocks: pixels attend to the text
    tokens and to themselves in one softmax; its output includes the residual)."""
    from diffusers.models.attention_processor import Attention

    if isinstance(attention, Attention):
        return [LayerSpec(f"{prefix}-attn-out", "attn-out", path, stage, level, repeat)]
    return _transformer_specs(attention, path, prefix, stage, level, repeat)


def _sampler_specs(sampler: nn.Module, path: str, stage: str, level: int) -> list[LayerSpec]:
    """A sampler's output; a resnet sampler (IF's ``Resnet*sample`` blocks) also has an
    ``-increment`` (its ``conv2`` branch), as the U-Net's resnets."""
    kind = "downsampler" if stage == "down" else "upsampler"
    prefix = f"{stage}-level{level}-{kind}"
    specs = []
    if hasattr(sampler, "conv2") and hasattr(sampler, "time_emb_proj"):  # a ResnetBlock2D
        specs.append(LayerSpec(f"{prefix}-increment", "res-increment", f"{path}.conv2", stage,
                               level))  # fmt: skip
    return [*specs, LayerSpec(f"{prefix}-out", f"{kind}-out", path, stage, level)]


def _resnet_specs(path: str, prefix: str, stage: str, level: int | None, repeat: int):
    return [
        LayerSpec(
            f"{prefix}-res-increment", "res-increment", f"{path}.conv2", stage, level, repeat
        ),
        LayerSpec(f"{prefix}-res-out", "res-out", path, stage, level, repeat),
    ]


def _updown_specs(block: nn.Module, stage: str, level: int) -> list[LayerSpec]:
    path = f"{stage}_blocks.{level}"
    attentions = getattr(block, "attentions", None)
    attentions = list(attentions) if attentions is not None else []
    if attentions and len(attentions) != len(block.resnets):
        raise ValueError(f"{path}: {type(block).__name__} pairs resnets and attentions unevenly")
    specs = []
    for j, _resnet in enumerate(block.resnets):
        prefix = f"{stage}-level{level}-repeat{j}"
        specs += _resnet_specs(f"{path}.resnets.{j}", prefix, stage, level, j)
        if attentions:
            specs += _attention_specs(
                attentions[j], f"{path}.attentions.{j}", prefix, stage, level, j
            )
    samplers = getattr(block, "downsamplers" if stage == "down" else "upsamplers", None)
    if samplers is not None:
        if len(samplers) != 1:
            raise ValueError(f"{path}: {len(samplers)} samplers; diffeat expects one")
        sampler_path = f"{path}.{'downsamplers' if stage == 'down' else 'upsamplers'}.0"
        specs += _sampler_specs(samplers[0], sampler_path, stage, level)
    return specs


def _mid_specs(mid: nn.Module) -> list[LayerSpec]:
    attentions = list(getattr(mid, "attentions", None) or [])
    resnets = list(mid.resnets)
    if attentions and len(attentions) != len(resnets) - 1:
        raise ValueError(f"mid_block: {type(mid).__name__} is not resnet/attention interleaved")
    specs = _resnet_specs("mid_block.resnets.0", "mid-repeat0", "mid", None, 0)
    for j, attention in enumerate(attentions):
        prefix = "mid" if len(attentions) == 1 else f"mid-repeat{j}"
        specs += _attention_specs(attention, f"mid_block.attentions.{j}", prefix, "mid", None, j)
        specs += _resnet_specs(
            f"mid_block.resnets.{j + 1}", f"mid-repeat{j + 1}", "mid", None, j + 1
        )
    if not attentions:
        for j in range(1, len(resnets)):
            specs += _resnet_specs(f"mid_block.resnets.{j}", f"mid-repeat{j}", "mid", None, j)
    return specs


def require_attributes(module: nn.Module, attrs: Sequence[str], argument: str, reads: str) -> None:
    """Raise unless ``module`` has every attribute of ``attrs`` (what diffeat reads).

    Args:
        module: the network given.
        attrs: the attributes diffeat walks.
        argument: the argument that gave it (named in the message).
        reads: the diffusers classes diffeat reads (for the message).
    """
    for attr in attrs:
        if not hasattr(module, attr):
            raise ValueError(
                f"{argument}: {type(module).__name__} has no {attr!r}; diffeat reads diffusers "
                f"{reads}"
            )


def block_specs(stage: str, k: int, path: str, kinds: Sequence[tuple[str, str]]) -> list[LayerSpec]:
    """The entries of diffusion transformer block ``k`` (module ``path``), one per ``(kind,
    submodule)`` of ``kinds``, named ``{stage}-block{k}-{kind}``; ``block-out`` (the block's
    output, the block itself: submodule ``""``) is named ``...-out``."""
    specs = []
    for kind, sub in kinds:
        suffix = "out" if kind == "block-out" else kind
        module = f"{path}.{sub}" if sub else path
        specs.append(LayerSpec(f"{stage}-block{k}-{suffix}", kind, module, stage, block=k))
    return specs


def _encoder_specs(model: nn.Module) -> list[LayerSpec]:
    """The down blocks and mid block of a U-Net or ControlNet, named as in the U-Net."""
    specs = []
    for i, block in enumerate(model.down_blocks):
        specs += _updown_specs(block, "down", i)
    if getattr(model, "mid_block", None) is not None:
        specs += _mid_specs(model.mid_block)
    return specs


def build_catalogue(unet: nn.Module) -> list[LayerSpec]:
    """Every activation of a diffusers ``UNet2DConditionModel``, in execution order.

    Args:
        unet: the U-Net (real weights, random weights or on the ``meta`` device).

    Returns:
        The catalogue entries (SD 1.5: 197, SDXL: 612).
    """
    attrs = ("conv_in", "down_blocks", "up_blocks", "conv_out")
    require_attributes(unet, attrs, "unet", "UNet2DConditionModel U-Nets")
    specs = [
        LayerSpec("unet-in", "unet-in", "", "unet"),
        LayerSpec("unet-after-conv-in", "unet-after-conv-in", "conv_in", "unet"),
        *_encoder_specs(unet),
    ]
    for i, block in enumerate(unet.up_blocks):
        specs += _updown_specs(block, "up", i)
    specs.append(LayerSpec("unet-out", "unet-out", "conv_out", "unet"))
    return specs


CONTROL_PREFIX = "control-"


def build_control_catalogue(controlnet: nn.Module) -> list[LayerSpec]:
    """Every activation of a diffusers ``ControlNetModel``, in execution order.

    Names carry the ``control-`` prefix: ``control-after-conv-in``, ``control-cond-embedding-out``
    (the conditioning image's embedding, added to the former), the down blocks and mid block
    named as in the U-Net (``control-down-level{i}-...``, ``control-mid-...``), then the
    zero-initialised output convolutions: ``control-residual{k}`` (one per U-Net skip
    connection, before ``conditioning_scale``) and ``control-mid-residual``. Module paths are
    relative to the ControlNet.

    Args:
        controlnet: the ControlNet (real weights, random weights or on the ``meta`` device).
    """
    attrs = ("conv_in", "controlnet_cond_embedding", "down_blocks", "controlnet_down_blocks")
    require_attributes(controlnet, attrs, "controlnet", "ControlNetModel ControlNets")
    specs = [
        LayerSpec("after-conv-in", "unet-after-conv-in", "conv_in", "unet"),
        LayerSpec("cond-embedding-out", "cond-embedding-out", "controlnet_cond_embedding", "unet"),
        *_encoder_specs(controlnet),
    ]
    for k in range(len(controlnet.controlnet_down_blocks)):
        specs.append(LayerSpec(f"residual{k}", "residual", f"controlnet_down_blocks.{k}", "down"))
    specs.append(LayerSpec("mid-residual", "residual", "controlnet_mid_block", "mid"))
    return [replace(spec, name=CONTROL_PREFIX + spec.name) for spec in specs]


def _as_list(value: Any, length: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * length


def expected_catalogue_size(config: Mapping[str, Any]) -> int:
    """The catalogue size from a U-Net config alone: ``3 + 2R + T + 8K_x + 6K_s + S``.

    ``R`` resnets, ``T`` transformer modules, ``K_x`` transformer blocks with cross-attention
    (8 names each), ``K_s`` without (6 names), ``S`` down/up samplers, plus ``unet-in``,
    ``unet-after-conv-in`` and ``unet-out``.

    Args:
        config: a ``UNet2DConditionModel`` config (dict or FrozenDict).
    """
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = len(down)
    per_block = _as_list(config.get("layers_per_block", 2), n)
    depth = _as_list(config.get("transformer_layers_per_block", 1), n)
    reverse = config.get("reverse_transformer_layers_per_block")
    up_depth = list(reverse) if reverse is not None else list(reversed(depth))
    up_layers = list(reversed(per_block))
    cross = config.get("cross_attention_dim") is not None
    block_names = 8 if cross else 6
    total = 3
    for i, kind in enumerate(down):
        total += 2 * per_block[i] + (1 if i < n - 1 else 0)
        if kind.startswith("CrossAttn"):
            total += per_block[i] * (1 + block_names * _depth_of(depth[i]))
        elif kind != "DownBlock2D":
            raise ValueError(f"down_block_types[{i}]: {kind} is not supported")
    for i, kind in enumerate(up):
        repeats = up_layers[i] + 1
        total += 2 * repeats + (1 if i < n - 1 else 0)
        if kind.startswith("CrossAttn"):
            total += repeats * (1 + block_names * _depth_of(up_depth[i]))
        elif kind != "UpBlock2D":
            raise ValueError(f"up_block_types[{i}]: {kind} is not supported")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid == "UNetMidBlock2DCrossAttn":
        total += 2 * 2 + 1 + block_names * _depth_of(depth[-1])
    elif mid is not None:
        raise ValueError(f"mid_block_type: {mid} is not supported")
    return total


def _depth_of(value: int | Sequence[int]) -> int:
    if isinstance(value, list | tuple):
        raise ValueError("per-layer transformer depths (nested lists) are not supported")
    return int(value)


# Every backbone (diffeat.backbones registers them when imported, as the package's import does),
# to say which kind of network an unknown name belongs to: the backbones build on this module, so
# it cannot import them.
NAME_OWNERS: list[Any] = []


def check_names(names: Iterable[str], catalogue: Sequence[LayerSpec]) -> list[LayerSpec]:
    """Catalogue entries for ``names`` (in the given order); unknown names raise ``ValueError``.

    Args:
        names: requested activation names (no duplicates).
        catalogue: the U-Net's catalogue (:func:`build_catalogue`).
    """
    names = list(names)
    if not names:
        raise ValueError("layers: empty; request at least one activation name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layers: duplicate names {duplicates}")
    by_name = {spec.name: spec for spec in catalogue}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        owners = [b for b in NAME_OWNERS if any(b.owns(spec.name) for spec in catalogue)]
        title = owners[0].title if owners else "U-Net"
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(by_name), n=2, cutoff=0.8)
            other = [b.title for b in NAME_OWNERS if b.owns(name) and b not in owners]
            if other:  # a name of another kind of network
                hints.append(f"{name!r} (a {other[0]} name; this model is a {title})")
                continue
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        raise ValueError(
            f"unknown activation name(s) for this {title}: {', '.join(hints)}; the catalogue has "
            f"{len(by_name)} names (diffeat.list_layers(unet) or `diffeat layers --model ...`)"
        )
    return [by_name[n] for n in names]


def attention_map_view(feature: Tensor, heads: int) -> Tensor:
    """A recorded ``*-map`` feature ``(B, heads*keys, h, w)`` as ``(B, heads, h*w, keys)``.

    Args:
        feature: the map feature returned by the extractor.
        heads: the attention's head count (``LayerInfo.heads``).
    """
    batch, channels, height, width = feature.shape
    if channels % heads:
        raise ValueError(f"heads: {heads} does not divide the map's {channels} channels")
    maps = feature.reshape(batch, heads, channels // heads, height * width)  # (B, heads, S, L)
    return maps.transpose(2, 3)  # (B, heads, L, S)
