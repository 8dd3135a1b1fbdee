"""The paper's activation selections (all at timestep 50) and the XL-t ensemble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common_kernels.runtime.errors import InvalidArgument, literal

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # mirror of runwayml/...-v1-5
SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
PLAYGROUND_V2_HUB_ID = "playgroundai/playground-v2-1024px-aesthetic"
PIXART_SIGMA_HUB_ID = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
FLUX_DEV_HUB_ID = "black-forest-labs/FLUX.1-dev"
SD35_MEDIUM_HUB_ID = "stabilityai/stable-diffusion-3.5-medium"


@dataclass(frozen=True)
class Preset:
    """A named activation selection.

    Args:
        name: preset name (``ours-v1.5``, ``ours-xl``, ``legacy-v1.5``, ``legacy-xl``).
        layers: activation names, in the paper's order.
        family: model family the names belong to (``sd15``, ``sdxl``, ``pixart``, ``flux``,
            ``sd3``).
        resolution: the input size the paper used (square, pixels).
        channels: total channels of the selection on the real model.
        hub_id: a hub repository whose weights give real features.
        description: one line.
    """

    name: str
    layers: tuple[str, ...]
    family: str
    resolution: int
    channels: int
    hub_id: str
    description: str


PRESETS: dict[str, Preset] = {
    "ours-v1.5": Preset(
        "ours-v1.5",
        (
            "up-level1-repeat1-vit-block0-cross-q",
            "up-level1-repeat2-res-out",
            "up-level2-repeat1-vit-block0-cross-q",
            "up-level3-repeat0-vit-block0-self-k",
        ),
        "sd15",
        512,
        3520,
        SD15_HUB_ID,
        "the paper's SD 1.5 selection (cross-attention queries, a resnet output, a self key)",
    ),
    "ours-xl": Preset(
        "ours-xl",
        (
            "up-level0-repeat0-vit-block7-out",
            "up-level0-repeat0-vit-block5-out",
            "up-level1-repeat0-vit-block0-cross-q",
            "up-level1-repeat0-vit-block0-out",
        ),
        "sdxl",
        1024,
        3840,
        SDXL_HUB_ID,
        "the paper's SDXL selection (never reaches the last up block or conv_out)",
    ),
    "legacy-v1.5": Preset(
        "legacy-v1.5",
        (
            "up-level0-upsampler-out",
            "up-level1-upsampler-out",
            "up-level2-upsampler-out",
            "up-level3-repeat2-vit-out",
        ),
        "sd15",
        512,
        3520,
        SD15_HUB_ID,
        "the usual up-block outputs of earlier work, SD 1.5",
    ),
    "legacy-xl": Preset(
        "legacy-xl",
        ("up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-repeat2-res-out"),
        "sdxl",
        1024,
        2240,
        SDXL_HUB_ID,
        "the usual up-block outputs of earlier work, SDXL",
    ),
    # diffeat's own choice, not the paper's (the paper evaluates no DiT selection): block
    # outputs at 1/2, 2/3 and 3/4 of PixArt-Sigma's 28 blocks and the cross-attention queries
    # of the middle one; not evaluated on any task here (no weights on these machines).
    "diffeat-pixart-sigma": Preset(
        "diffeat-pixart-sigma",
        ("dit-block13-out", "dit-block18-cross-q", "dit-block18-out", "dit-block20-out"),
        "pixart",
        1024,
        4 * 1152,
        PIXART_SIGMA_HUB_ID,
        "diffeat's PixArt-Sigma selection (NOT the paper's; unevaluated): mid-depth blocks",
    ),
    # diffeat's own choices for the joint transformers, by the same rule (NOT the paper's, not the
    # official code's, which names no FLUX selection; unevaluated: no weights here): block
    # outputs at about 1/2, 2/3 and 3/4 of the depth and the queries of the middle one. FLUX.1
    # has 19 double + 38 single blocks (57), so these are single-stream blocks 9, 19 and 24;
    # early exit then skips the last 13 single blocks.
    "diffeat-flux": Preset(
        "diffeat-flux",
        ("flux-single9-out", "flux-single19-q", "flux-single19-out", "flux-single24-out"),
        "flux",
        1024,
        4 * 3072,
        FLUX_DEV_HUB_ID,
        "diffeat's FLUX.1 selection (NOT the paper's; unevaluated): mid-depth single blocks",
    ),
    "diffeat-sd3": Preset(
        "diffeat-sd3",
        ("sd3-block12-out", "sd3-block16-q", "sd3-block16-out", "sd3-block18-out"),
        "sd3",
        1024,
        4 * 1536,
        SD35_MEDIUM_HUB_ID,
        "diffeat's SD3(.5)-Medium selection (NOT the paper's; unevaluated): mid-depth blocks",
    ),
}


@dataclass(frozen=True)
class EnsembleMember:
    """One model of a multi-model ensemble.

    Args:
        key: prefix of this member's feature names (``key/activation``).
        model: hub id or local folder.
        preset: the selection used on that model.
    """

    key: str
    model: str
    preset: str


ENSEMBLES: dict[str, tuple[EnsembleMember, ...]] = {
    # Ours-XL-t: SDXL + SD 1.5 + Playground v2. The paper picks the members per task; this
    # default takes all three with the published selections (Playground v2 has the SDXL U-Net,
    # so it uses the Ours-XL names). Pass your own members to MultiModelExtractor to change it.
    "ours-xl-t": (
        EnsembleMember("sdxl", SDXL_HUB_ID, "ours-xl"),
        EnsembleMember("sd15", SD15_HUB_ID, "ours-v1.5"),
        EnsembleMember("playground-v2", PLAYGROUND_V2_HUB_ID, "ours-xl"),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; unknown names raise with the list of choices."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


ALL = "all"


def selection_names() -> list[str]:
    """The strings accepted wherever layers are given: ``"all"`` and the preset names."""
    return [ALL, *sorted(PRESETS)]


def layer_selection(layers: Sequence[str] | str, argument: str = "layers") -> tuple[str, ...]:
    """``layers`` as a tuple of names; strings name a selection.

    ``"all"`` becomes ``("all",)`` (expanded against a catalogue by its user); a preset name
    becomes the preset's names. Any other string raises, naming ``argument`` and the accepted
    strings.

    Args:
        layers: a list of activation names, ``"all"`` or a preset name.
        argument: the argument name used in error messages.
    """
    if isinstance(layers, str):
        if layers == ALL:
            return (ALL,)
        if layers in PRESETS:
            return PRESETS[layers].layers
        raise InvalidArgument(
            argument,
            f"a string must be one of {selection_names()}; got {literal(repr(layers))} (pass "
            "activation names as a list)",
        )
    return tuple(layers)


def family_of(config: Mapping[str, Any]) -> str | None:
    """``sdxl`` for text-time conditioned 3-level U-Nets, ``sd15`` for 4-level SD U-Nets,
    ``pixart`` for 28-block PixArt transformers (``caption_channels`` and AdaLN-single),
    ``flux`` for FLUX.1 transformers (19 + 38 blocks), ``sd3`` for 24-block SD3 transformers
    (SD3-Medium, SD3.5-Medium)."""
    if "num_single_layers" in config:  # FLUX.1 (dev, schnell): 19 double + 38 single blocks
        shape = (config.get("num_layers"), config.get("num_single_layers"))
        return "flux" if shape == (19, 38) else None
    if "pos_embed_max_size" in config and "joint_attention_dim" in config:
        return "sd3" if config.get("num_layers") == 24 else None  # SD3 / SD3.5 Medium
    if "down_block_types" not in config:
        pixart = config.get("norm_type") == "ada_norm_single" and "caption_channels" in config
        return "pixart" if pixart and config.get("num_layers") == 28 else None
    levels = len(config["down_block_types"])
    if config.get("addition_embed_type") == "text_time" and levels == 3:
        return "sdxl"
    if config.get("addition_embed_type") is None and levels == 4:
        return "sd15"
    return None


def default_preset(config: Mapping[str, Any]) -> str:
    """The paper's own selection for a U-Net's family (``ours-xl`` or ``ours-v1.5``).

    SD 2.x U-Nets share SD 1.5's topology, so they get the ``ours-v1.5`` names; the paper
    evaluated no SD 2.x selection.
    """
    family = family_of(config)
    if family is None:
        raise ValueError(
            "layers: this model is neither SD 1.x/2.x-, SDXL-, PixArt-Sigma-, FLUX.1- nor "
            "SD3-Medium-shaped, so no preset applies; pass layers=[...] (see "
            "diffeat.list_layers(unet))"
        )
    return {"sdxl": "ours-xl", "sd15": "ours-v1.5", "pixart": "diffeat-pixart-sigma",
            "flux": "diffeat-flux", "sd3": "diffeat-sd3"}[family]  # fmt: skip
