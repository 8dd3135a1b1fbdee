"""Settings of the Pixelsmith sampler and of the cascade, with validation of user input."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal

# Sizes as in every package: S (a square) or HxW, height first (``"1536x2048"`` is 2048 px wide).
from common_kernels.runtime.files import parse_size

PATCH_SCHEDULERS = ("grid", "random")
POSTERIORS = ("sample", "mean")
HANDOVERS = ("float", "uint8")
BLENDS = ("none", "linear", "gaussian")
# full-size maps of a Pixelsmith stage per latent px and latent channel: latent, step snapshot,
# guidance latent and guidance noise (float32 each); plus the int16 step map per latent px
LATENT_MAP_BYTES_PER_CHANNEL = 4 * 4
STEP_MAP_BYTES = 2
# Activations of one UNet call and of one VAE tile's decoding, in bytes per value of
# unet_values_per_px / vae_decoder_values_per_px (float32). No config says which tensors
# diffusers keeps alive at once, so the factors are fitted: the peak RSS growth of one pass of
# the tiny model (pixelsmith.tiny; CPU, float32, OMP_NUM_THREADS=1, a fresh interpreter per
# run), least squares with a free intercept (the weights and the allocator's own). UNet: 2
# samples of 256^2 and 512^2 latent px, 3 runs each: 252 bytes per latent px of a sample, its
# 7 values per px (widths 4, 8, 16) -> 36. VAE decoder: 64^2, 128^2 and 192^2 latent px, 2 runs
# each: 8336 bytes per latent px, its 340 values per px (widths 4 x 4) -> 24.5, rounded up.
# Memory-efficient attention is assumed (torch's SDPA on CPU and CUDA): no term grows with the
# square of the tokens. A float16 UNet needs about half (SDXL's VAE decodes in float32: its
# config forces the upcast). SDXL: 560 x 36 = 20160 bytes per latent px of a UNet sample,
# 14848 x 25 = 371200 per latent px of a VAE tile.
UNET_BYTES_PER_VALUE = 36
VAE_DECODER_BYTES_PER_VALUE = 25


def check_not_empty(tensor: object, argument: str) -> Tensor:
    """``tensor`` itself, when it is a tensor with at least one element.

    Args:
        tensor: what the caller passed.
        argument: the API argument named in the messages.

    Raises:
        TypeError: not a tensor.
        InvalidArgument: an empty tensor (``prompt_embeds: empty tensor (1, 0, 2048)``).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{argument} must be a tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise InvalidArgument(argument, f"empty tensor {tuple(tensor.shape)}")
    return tensor


def require_int(
    argument: str, value: object, low: int, high: int | None = None, *, index: int | None = None
) -> int:
    """``value`` as an int in ``[low, high]`` (``high=None``: no upper bound).

    Args:
        argument: the API argument (``"num_inference_steps"``).
        value: its value (or its element ``index``).
        low: the least accepted value.
        high: the largest accepted value, or ``None``.
        index: the element of a list argument that ``value`` is (``sliders[0]``).

    Raises:
        TypeError: not an int.
        InvalidValue: out of range (``{argument} must be an int in [low, high], got ...``).
    """
    where = "" if index is None else f"[{index}]"
    accepted = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{argument}{where} must be {accepted}, got {type(value).__name__} {value!r}"
        )
    if value < low or (high is not None and value > high):
        raise InvalidValue(argument, f"{{{argument}}}{where} must be {accepted}, got {value}")
    return value


def require_choice(argument: str, value: object, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``, else an :class:`InvalidValue` naming them."""
    if value not in choices:
        accepted = ", ".join(map(repr, choices))
        raise InvalidValue(
            argument,
            f"{{{argument}}} must be one of {literal(accepted)}, got {literal(repr(value))}",
        )
    return value  # type: ignore[return-value]


def check_config_fields(settings: Mapping[str, Any]) -> None:
    """Each :class:`PixelsmithConfig` field in its range, all of them given.

    Args:
        settings: field -> value, every field of ``PixelsmithConfig``.

    Raises:
        TypeError: a field of the wrong type.
        InvalidValue: the first field out of range; the message names it and the range.
    """
    patch_size = require_int("patch_size", settings["patch_size"], 1)
    require_int("band", settings["band"], 0)
    scheduler = settings["patch_scheduler"]
    if scheduler is not None:
        require_choice("patch_scheduler", scheduler, PATCH_SCHEDULERS)
    if settings["faithful"] and scheduler == "grid":
        raise InvalidValue(
            "patch_scheduler",
            "{patch_scheduler='grid'} is not available with {faithful=True} (the official "
            "sampler places patches at random centres); use {patch_scheduler='random'} or leave "
            "it out",
        )
    require_int("patch_batch_size", settings["patch_batch_size"], 1)
    require_int("grid_min_overlap", settings["grid_min_overlap"], 0, patch_size - 1)
    if not isinstance(settings["grid_stagger"], bool):
        raise TypeError(f"grid_stagger must be a bool, got {settings['grid_stagger']!r}")
    require_choice("guidance_posterior", settings["guidance_posterior"], POSTERIORS)
    if settings["handover"] is not None:
        require_choice("handover", settings["handover"], HANDOVERS)
    vae_tile = require_int("vae_tile", settings["vae_tile"], 1)
    require_int("vae_overlap", settings["vae_overlap"], 0, vae_tile - 1)
    require_choice("vae_blend", settings["vae_blend"], BLENDS)
    require_int("max_ram_pixels", settings["max_ram_pixels"], 1)
    eta = settings["eta"]
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise InvalidValue("eta", f"{{eta}} must be a float in [0, 1], got {literal(repr(eta))}")


@dataclass(frozen=True)
class PixelsmithConfig:
    """How a Pixelsmith stage is sampled, encoded and decoded (sizes in latent pixels).

    Args:
        patch_size: side of the square latent patch the UNet sees (128 = 1024 px for SDXL).
        band: width in latent px of the seam band averaged around the due region of a patch.
        patch_scheduler: ``"grid"`` (deterministic overlapping grid, the minimum number of
            patches per step, disjoint patches batched) or ``"random"`` (the paper's random
            centres); ``None`` picks ``"random"`` when ``faithful`` else ``"grid"``.
        patch_batch_size: at most this many disjoint patches per UNet call (x2 with CFG);
            more than a stage's latent holds are clamped to those.
        grid_min_overlap: the grid adds patches per axis until neighbours overlap by at least
            this many latent px (0 = the minimum number of patches).
        grid_stagger: on grid axes whose neighbours overlap by less than ``band`` (e.g. 2048 px
            = 2 patches), odd steps use a half-patch-shifted grid with one more patch, so no
            seam stays in place; ``False`` keeps the minimum grid at every step (seams fixed
            on such axes).
        faithful: reproduce the official sampler (random placement with a permutation per
            patch, fusion before revert, the start latent aliasing the step-0 guidance, fp16
            guidance noise, a discarded start draw, crop coordinates (left, left), uint8
            hand-over, one patch per UNet call).
        guidance_posterior: ``"sample"`` the VAE posterior for the guidance latent (official)
            or take its ``"mean"``.
        handover: how the previous stage reaches the next one: ``"float"`` (decoded floats,
            Lanczos in float) or ``"uint8"`` (quantised like a saved image, PIL Lanczos);
            ``None`` = ``"uint8"`` when ``faithful`` else ``"float"``.
        vae_tile: VAE encode/decode tile side in latent px (clipped to the latent).
        vae_overlap: overlap of neighbouring VAE tiles in latent px, in [0, vae_tile).
        vae_blend: blending of overlapping VAE tiles (``"none"``, ``"linear"``, ``"gaussian"``).
        max_ram_pixels: decoded intermediate images above this many pixels go to a disk
            memmap instead of RAM.
        eta: DDIM eta (0 = deterministic), passed to schedulers that take it.
    """

    patch_size: int = 128
    band: int = 10
    patch_scheduler: str | None = None
    patch_batch_size: int = 4
    grid_min_overlap: int = 0
    grid_stagger: bool = True
    faithful: bool = False
    guidance_posterior: str = "sample"
    handover: str | None = None
    vae_tile: int = 128
    vae_overlap: int = 16
    vae_blend: str = "linear"
    max_ram_pixels: int = 2**27
    eta: float = 0.0

    def __post_init__(self) -> None:
        check_config_fields(vars(self))

    @property
    def scheduler_name(self) -> str:
        """The patch scheduler actually used."""
        if self.patch_scheduler is not None:
            return self.patch_scheduler
        return "random" if self.faithful else "grid"

    @property
    def handover_mode(self) -> str:
        """The stage hand-over actually used."""
        if self.handover is not None:
            return self.handover
        return "uint8" if self.faithful else "float"

    @property
    def batch_limit(self) -> int:
        """Patches per UNet call: one in faithful mode (as the official sampler)."""
        return 1 if self.faithful else self.patch_batch_size

    def replace(self, **changes: object) -> PixelsmithConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_cascade(
    sizes: Sequence[int | Sequence[int] | str],
    sliders: Sequence[int],
    num_inference_steps: int,
    *,
    vae_scale_factor: int,
    patch_size: int,
) -> list[tuple[int, int]]:
    """Check the stage sizes and sliders of a cascade; return the sizes as (h, w) px.

    Args:
        sizes: stage sizes in px, the first generated by plain SDXL.
        sliders: one slider per higher stage, each an int in [1, num_inference_steps].
        num_inference_steps: denoising steps of every stage.
        vae_scale_factor: px per latent px (8 for SDXL).
        patch_size: latent patch side; higher stages must be at least this large.

    Raises:
        InvalidValue: naming ``sizes``, ``sliders`` or ``patch_size`` and what is accepted.
    """
    require_int("num_inference_steps", num_inference_steps, 1)
    if isinstance(sizes, (str, int)) or len(sizes) == 0:
        raise InvalidValue(
            "sizes",
            f"{{sizes}} must be a non-empty list of stage sizes, got {literal(repr(sizes))}",
        )
    try:
        parsed = [parse_size(s) for s in sizes]
    except ValueError as error:
        raise InvalidValue("sizes", f"{{sizes}}: {literal(error)}") from None
    for index, (height, width) in enumerate(parsed):
        if height < vae_scale_factor or width < vae_scale_factor:
            raise InvalidValue(
                "sizes",
                f"{{sizes}}[{index}] must be >= {vae_scale_factor} px, got {height}x{width}",
            )
        if height % vae_scale_factor or width % vae_scale_factor:
            raise InvalidValue(
                "sizes",
                f"{{sizes}}[{index}] must be multiples of the VAE scale factor "
                f"{vae_scale_factor}, got {height}x{width}",
            )
    for index in range(1, len(parsed)):
        (ph, pw), (h, w) = parsed[index - 1], parsed[index]
        if h < ph or w < pw or (h, w) == (ph, pw):
            raise InvalidValue(
                "sizes",
                "{sizes} must grow stage by stage (no side smaller than the previous stage's and "
                f"not equal to it), got {{sizes}}[{index - 1}] = {ph}x{pw} then "
                f"{{sizes}}[{index}] = {h}x{w}",
            )
        if h < patch_size * vae_scale_factor or w < patch_size * vae_scale_factor:
            raise InvalidValue(
                "sizes",
                f"{{sizes}}[{index}] = {h}x{w} is smaller than one patch "
                f"({patch_size * vae_scale_factor} px = {{patch_size}} {patch_size} latent px); "
                "use larger sizes or a smaller {patch_size}",
            )
    if isinstance(sliders, int) or len(sliders) != len(parsed) - 1:
        raise InvalidValue(
            "sliders",
            "{sliders} must hold one slider per stage after the first "
            f"({len(parsed) - 1} for {len(parsed)} sizes), got {literal(repr(sliders))}",
        )
    for index, slider in enumerate(sliders):
        check_slider(slider, num_inference_steps, "sliders", index=index)
    return parsed


def latent_maps_bytes(height: int, width: int, vae_scale_factor: int = 8, channels: int = 4) -> int:
    """Bytes of the full-size latent maps of a Pixelsmith stage at ``height x width`` px.

    The part of a stage's memory that grows with its size (everything else is tiled): latent,
    step snapshot, guidance latent and guidance noise (``channels`` float32 maps each) and the
    int16 step map; 66 bytes per latent px for SDXL (4 channels, 1/8 of the px per side).

    Args:
        height: stage height in px.
        width: stage width in px.
        vae_scale_factor: px per latent px.
        channels: latent channels.
    """
    latent_px = (height // vae_scale_factor) * (width // vae_scale_factor)
    return latent_px * latent_bytes_per_px(channels)


def latent_bytes_per_px(channels: int = 4) -> int:
    """Bytes per latent px of a stage's full-size latent maps (66 for SDXL's 4 channels)."""
    return channels * LATENT_MAP_BYTES_PER_CHANNEL + STEP_MAP_BYTES


def unet_values_per_px(widths: Sequence[int]) -> float:
    """Channels per latent px of a UNet's resolution levels, each level with a quarter of the
    px of the one above (``320 + 640/4 + 1280/16 = 560`` for SDXL).

    Args:
        widths: the UNet's ``block_out_channels``.
    """
    return sum(width / 4**level for level, width in enumerate(widths))


def unet_call_bytes(samples: int, patch_size: int, widths: Sequence[int]) -> int:
    """Estimated activation bytes of one UNet call on ``samples`` square patches.

    Args:
        samples: patches in the call (twice the patches with classifier-free guidance).
        patch_size: patch side in latent px.
        widths: the UNet's ``block_out_channels``.
    """
    per_px = unet_values_per_px(widths) * UNET_BYTES_PER_VALUE
    return math.ceil(samples * patch_size**2 * per_px)


def vae_decoder_values_per_px(widths: Sequence[int]) -> int:
    """Channels per latent px of a VAE decoder's levels, which take the widths in reverse and
    each have four times the px of the one before (``512 + 512*4 + 256*16 + 128*64 = 14848``
    for SDXL).

    Args:
        widths: the VAE's ``block_out_channels``.
    """
    return sum(width * 4**level for level, width in enumerate(reversed(widths)))


def vae_tile_bytes(height: int, width: int, widths: Sequence[int]) -> int:
    """Estimated activation bytes of decoding one ``height x width`` latent px tile.

    Args:
        height: tile height in latent px.
        width: tile width in latent px.
        widths: the VAE's ``block_out_channels``.
    """
    return math.ceil(
        height * width * vae_decoder_values_per_px(widths) * VAE_DECODER_BYTES_PER_VALUE
    )


def check_slider(
    slider: object, num_inference_steps: int, argument: str = "slider", *, index: int | None = None
) -> int:
    """The slider must be an int in [1, num_inference_steps] (``argument``, element ``index``)."""
    return require_int(argument, slider, 1, num_inference_steps, index=index)
