"""Settings of the Pixelsmith sampler and of the cascade, with validation of user input."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument

# Sizes as in every package: S (a square) or HxW, height first (``"1536x2048"`` is 2048 px wide).
from common_kernels.runtime.files import parse_size

PATCH_SCHEDULERS = ("grid", "random")
POSTERIORS = ("sample", "mean")
HANDOVERS = ("float", "uint8")
BLENDS = ("none", "linear", "gaussian")
# how validate_cascade names its arguments in error messages (the CLI passes its flags instead)
API_NAMES = {
    "sizes": "sizes",
    "sliders": "sliders",
    "num_inference_steps": "num_inference_steps",
    "patch_size": "patch_size",
}
# full-size maps of a Pixelsmith stage per latent px and latent channel: latent, step snapshot,
# guidance latent and guidance noise (float32 each); plus the int16 step map per latent px
LATENT_MAP_BYTES_PER_CHANNEL = 4 * 4
STEP_MAP_BYTES = 2


Names = Mapping[str, str]


def named(argument: str, names: Names | None) -> str:
    """How the caller spells ``argument`` in messages (the CLI: its flag).

    Args:
        argument: the API's name (``"num_inference_steps"``).
        names: argument -> caller's name; ``None`` or a missing key keeps ``argument``.
    """
    return argument if names is None else names.get(argument, argument)


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


def setting(argument: str, value: object, names: Names | None) -> str:
    """A setting as the caller writes it: ``--scheduler grid`` (CLI) or
    ``patch_scheduler='grid'`` (API; ``value`` ``True`` for a CLI switch shows the flag alone)."""
    if names is None or argument not in names:
        return f"{argument}={value!r}"
    return names[argument] if value is True else f"{names[argument]} {value}"


def _require_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high=None``: no upper bound)."""
    accepted = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def _require_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def check_config_fields(settings: Mapping[str, Any], names: Names | None = None) -> None:
    """Each :class:`PixelsmithConfig` field in its range, all of them given.

    Args:
        settings: field -> value, every field of ``PixelsmithConfig``.
        names: how the caller spells each field in messages (the CLI: its flags).

    Raises:
        TypeError: a field of the wrong type.
        ValueError: the first field out of range; the message names it and the range.
    """

    def name(field: str) -> str:
        return named(field, names)

    patch_size = _require_int(name("patch_size"), settings["patch_size"], 1)
    _require_int(name("band"), settings["band"], 0)
    scheduler = settings["patch_scheduler"]
    if scheduler is not None:
        _require_choice(name("patch_scheduler"), scheduler, PATCH_SCHEDULERS)
    if settings["faithful"] and scheduler == "grid":
        raise ValueError(
            f"{setting('patch_scheduler', 'grid', names)} is not available with "
            f"{setting('faithful', True, names)} (the official sampler places patches at random "
            f"centres); use {setting('patch_scheduler', 'random', names)} or leave it out"
        )
    _require_int(name("patch_batch_size"), settings["patch_batch_size"], 1)
    _require_int(name("grid_min_overlap"), settings["grid_min_overlap"], 0, patch_size - 1)
    if not isinstance(settings["grid_stagger"], bool):
        raise TypeError(f"{name('grid_stagger')} must be a bool, got {settings['grid_stagger']!r}")
    _require_choice(name("guidance_posterior"), settings["guidance_posterior"], POSTERIORS)
    if settings["handover"] is not None:
        _require_choice(name("handover"), settings["handover"], HANDOVERS)
    vae_tile = _require_int(name("vae_tile"), settings["vae_tile"], 1)
    _require_int(name("vae_overlap"), settings["vae_overlap"], 0, vae_tile - 1)
    _require_choice(name("vae_blend"), settings["vae_blend"], BLENDS)
    _require_int(name("max_ram_pixels"), settings["max_ram_pixels"], 1)
    eta = settings["eta"]
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"{name('eta')} must be a float in [0, 1], got {eta!r}")


@dataclass(frozen=True)
class PixelsmithConfig:
    """How a Pixelsmith stage is sampled, encoded and decoded (sizes in latent pixels).

    Args:
        patch_size: side of the square latent patch the UNet sees (128 = 1024 px for SDXL).
        band: width in latent px of the seam band averaged around the due region of a patch.
        patch_scheduler: ``"grid"`` (deterministic overlapping grid, the minimum number of
            patches per step, disjoint patches batched) or ``"random"`` (the paper's random
            centres); ``None`` picks ``"random"`` when ``faithful`` else ``"grid"``.
        patch_batch_size: at most this many disjoint patches per UNet call (x2 with CFG).
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
        vae_tile: VAE encode/decode tile side in latent px.
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


def make_config(names: Names | None = None, **fields: Any) -> PixelsmithConfig:
    """A :class:`PixelsmithConfig` of ``fields`` (the defaults elsewhere), checked with the
    caller's names in messages.

    Args:
        names: how the caller spells each field (the CLI: ``{"patch_size": "--patch-size"}``).
        **fields: ``PixelsmithConfig`` fields.

    Raises:
        TypeError: a field of the wrong type, or no ``PixelsmithConfig`` field.
        ValueError: a field out of range, named as ``names`` spells it.
    """
    settings = {field.name: field.default for field in dataclasses.fields(PixelsmithConfig)}
    unknown = sorted(set(fields) - set(settings))
    if unknown:
        raise TypeError(f"unknown PixelsmithConfig fields: {', '.join(unknown)}")
    settings.update(fields)
    check_config_fields(settings, names)
    return PixelsmithConfig(**settings)


def validate_cascade(
    sizes: Sequence[int | Sequence[int] | str],
    sliders: Sequence[int],
    num_inference_steps: int,
    *,
    vae_scale_factor: int,
    patch_size: int,
    names: Mapping[str, str] = API_NAMES,
) -> list[tuple[int, int]]:
    """Check the stage sizes and sliders of a cascade; return the sizes as (h, w) px.

    Args:
        sizes: stage sizes in px, the first generated by plain SDXL.
        sliders: one slider per higher stage, each an int in [1, num_inference_steps].
        num_inference_steps: denoising steps of every stage.
        vae_scale_factor: px per latent px (8 for SDXL).
        patch_size: latent patch side; higher stages must be at least this large.
        names: how ``sizes``, ``sliders``, ``num_inference_steps`` and ``patch_size`` are named
            in error messages (:data:`API_NAMES`; the CLI passes its flags).
    """
    sizes_name, sliders_name = names["sizes"], names["sliders"]
    _require_int(names["num_inference_steps"], num_inference_steps, 1)
    if isinstance(sizes, (str, int)) or len(sizes) == 0:
        raise ValueError(f"{sizes_name} must be a non-empty list of stage sizes, got {sizes!r}")
    try:
        parsed = [parse_size(s) for s in sizes]
    except ValueError as error:
        raise ValueError(f"{sizes_name}: {error}") from None
    for index, (height, width) in enumerate(parsed):
        if height < vae_scale_factor or width < vae_scale_factor:
            raise ValueError(
                f"{sizes_name}[{index}] must be >= {vae_scale_factor} px, got {height}x{width}"
            )
        if height % vae_scale_factor or width % vae_scale_factor:
            raise ValueError(
                f"{sizes_name}[{index}] must be multiples of the VAE scale factor "
                f"{vae_scale_factor}, got {height}x{width}"
            )
    for index in range(1, len(parsed)):
        (ph, pw), (h, w) = parsed[index - 1], parsed[index]
        if h < ph or w < pw or (h, w) == (ph, pw):
            raise ValueError(
                f"{sizes_name} must grow stage by stage (no side smaller than the previous "
                f"stage's and not equal to it), got {sizes_name}[{index - 1}] = {ph}x{pw} then "
                f"{sizes_name}[{index}] = {h}x{w}"
            )
        if h < patch_size * vae_scale_factor or w < patch_size * vae_scale_factor:
            raise ValueError(
                f"{sizes_name}[{index}] = {h}x{w} is smaller than one patch "
                f"({patch_size * vae_scale_factor} px = {names['patch_size']} {patch_size} "
                f"latent px); use larger sizes or a smaller {names['patch_size']}"
            )
    if isinstance(sliders, int) or len(sliders) != len(parsed) - 1:
        raise ValueError(
            f"{sliders_name} must hold one slider per stage after the first "
            f"({len(parsed) - 1} for {len(parsed)} sizes), got {sliders!r}"
        )
    for index, slider in enumerate(sliders):
        check_slider(slider, num_inference_steps, name=f"{sliders_name}[{index}]")
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


def check_slider(slider: object, num_inference_steps: int, name: str = "slider") -> int:
    """The slider must be an int in [1, num_inference_steps]."""
    return _require_int(name, slider, 1, num_inference_steps)
