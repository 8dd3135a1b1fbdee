"""Where models come from: the repository's loader rule, and a model's geometry read offline.

Every model pixelsmith loads (the SDXL pipeline, a VAE, LoRAs, a ControlNet) follows
``common_kernels.runtime.hub``: a name that looks like a path (``./``, ``../``, ``/``, ``~`` or an
existing name) is a local folder (or file, for a LoRA) and a missing one is a
``FileNotFoundError`` naming it at once; a hub id (``owner/name``) goes to the hub, and
:func:`check_source_hub` fails within 5 s with ``HubUnreachableError`` when the hub cannot be
reached and the repository is not cached, before diffusers' retries; anything else is an
unknown model (``common_kernels.runtime.hub.resolve_model_name``, the rule of every package),
refused
at once and never reported as a hub failure. pixelsmith has no names of its own.

:func:`check_source` applies the rule to an API argument, its messages naming the argument
(:class:`common_kernels.runtime.errors.InvalidValue`; a missing path is a
``common_kernels.runtime.errors.MissingPath``, ``ARGUMENT: no ... folder ...``).
:func:`check_from_pretrained` is the offline check of ``PixelsmithPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.errors import InvalidValue, shown
from common_kernels.runtime.hub import HubUnreachableError, check_hub, hub_cache_dir
from common_kernels.runtime.hub import resolve_source as resolve_source_name

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
MODEL_MARKER = "model_index.json"  # what a diffusers pipeline folder holds
CONFIG_MARKER = "config.json"  # what a diffusers model folder (VAE, ControlNet) holds
# the model_index.json entry of a folder of random weights (``pixelsmith tiny-model``,
# ``diffeat tiny-model``): {"writer": the command, "seed": its seed}
RANDOM_WEIGHTS = "_random_weights"
# the components whose weights every process of a run holds
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def check_source(
    value: str | os.PathLike,
    argument: str,
    *,
    what: str,
    marker: str | None = None,
    file_ok: bool = False,
) -> Path | str:
    """The local path or hub id that the API argument ``argument`` means, checked offline
    (nothing is loaded), its bad values refused as an
    :class:`~common_kernels.runtime.errors.InvalidValue` naming it (``{argument} ./lora.bin
    is a file; ...``).

    Args:
        value: what the caller gave.
        argument: the API argument, named in messages.
        what: the kind of local thing expected (``"model folder"``).
        marker: a file a local folder must hold (``model_index.json``), or ``None``.
        file_ok: a local file is accepted too (a LoRA ``.safetensors``).

    Raises:
        common_kernels.runtime.errors.MissingPath: ``argument: no WHAT PATH (nothing at ...)``
            (a ``FileNotFoundError``).
        InvalidArgument: an unknown model, neither a path nor a hub id
            (``common_kernels.runtime.hub.is_hub_id``), or a file, folder or hub id that cannot
            be it.
    """
    source = resolve_source_name(value, argument, what=what)
    text = os.fspath(value)
    if isinstance(source, Path):
        if source.is_file() and not file_ok:
            problem = f"{text} is a file; expected a hub id (owner/name) or a folder"
            raise InvalidValue(argument, shown(argument, problem))
        if marker is not None and source.is_dir() and not (source / marker).is_file():
            problem = f"{text}: no {marker} in the folder (not a diffusers folder)"
            raise InvalidValue(argument, shown(argument, problem))
    return source


def check_source_hub(source: Path | str, what: str) -> None:
    """Fail within 5 s when the hub id ``source`` is not cached and the hub is out of reach
    (``HF_HUB_OFFLINE``, or no connection); a local path passes.

    Args:
        source: from :func:`check_source`.
        what: the model in words (``"the VAE"``), first in the message.

    Raises:
        HubUnreachableError: ``cannot load WHAT ID: ...`` (an ``OSError``).
    """
    if isinstance(source, Path):
        return
    try:
        check_hub(source)
    except HubUnreachableError as error:
        raise HubUnreachableError(f"cannot load {what} {source}: {error}") from None


def read_config(path: Path) -> dict:
    """A diffusers JSON config, or {} when missing or unreadable (loading then says why)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def downsampling(config: Mapping, default: int) -> int:
    """``2 ** (levels - 1)`` of a diffusers UNet or VAE config, as diffusers computes it."""
    blocks = config.get("block_out_channels")
    return 2 ** (len(blocks) - 1) if isinstance(blocks, (list, tuple)) and blocks else default


def block_widths(config: Mapping, default: tuple[int, ...]) -> tuple[int, ...]:
    """The ``block_out_channels`` of a diffusers UNet or VAE config, else ``default``."""
    blocks = config.get("block_out_channels")
    if isinstance(blocks, (list, tuple)) and blocks and all(isinstance(b, int) for b in blocks):
        return tuple(blocks)
    return default


@dataclass(frozen=True)
class ModelShape:
    """What the checks need to know of a model before it is loaded (SDXL's values by default).

    Args:
        vae_scale_factor: px per latent px.
        latent_channels: channels of the VAE latent.
        unet_factor: downsampling of the UNet (patch sides are multiples of it).
        train_timesteps: the scheduler's training timesteps (the most inference steps).
        unet_widths: the UNet's ``block_out_channels`` (its activation estimate).
        vae_widths: the VAE's ``block_out_channels`` (its decoder's activation estimate).
    """

    vae_scale_factor: int = 8
    latent_channels: int = 4
    unet_factor: int = 4
    train_timesteps: int = 1000
    unet_widths: tuple[int, ...] = (320, 640, 1280)
    vae_widths: tuple[int, ...] = (128, 256, 512, 512)

    @classmethod
    def from_configs(cls, vae: Mapping, unet: Mapping, scheduler: Mapping) -> ModelShape:
        """The shape of diffusers configs; what they leave out is SDXL's.

        Args:
            vae: the VAE config.
            unet: the UNet config.
            scheduler: the scheduler config.
        """
        sdxl = cls()
        return cls(
            vae_scale_factor=downsampling(vae, sdxl.vae_scale_factor),
            latent_channels=int(vae.get("latent_channels", sdxl.latent_channels)),
            unet_factor=downsampling(unet, sdxl.unet_factor),
            train_timesteps=int(scheduler.get("num_train_timesteps", sdxl.train_timesteps)),
            unet_widths=block_widths(unet, sdxl.unet_widths),
            vae_widths=block_widths(vae, sdxl.vae_widths),
        )


@dataclass(frozen=True)
class LoadPlan:
    """The checked sources of ``PixelsmithPipeline.from_pretrained``.

    Args:
        model: the SDXL folder or hub id.
        vae: the VAE folder or hub id replacing the model's, or ``None`` (the model's own).
        shape: the model's geometry (read from local folders; SDXL's for hub ids).
        random_weights: a local folder's :data:`RANDOM_WEIGHTS` entry (what wrote its random
            weights), or ``None``.
        weight_bytes: the bytes of the weight files that loading reads (:func:`weight_bytes`),
            or ``None`` for a hub id that is not cached.
    """

    model: Path | str
    vae: Path | str | None
    shape: ModelShape
    random_weights: Mapping | None = None
    weight_bytes: int | None = None

    @property
    def random_note(self) -> str:
        """How a page says that the model's weights are random ("" when they are not)."""
        if not self.random_weights:
            return ""
        writer, seed = self.random_weights.get("writer"), self.random_weights.get("seed")
        by = f" (written by `{writer} --seed {seed}`)" if writer and seed is not None else ""
        return f"Its weights are random{by}, so its images are noise."

    def check_hub(self) -> None:
        """Fail within 5 s, saying why, when a hub id of the plan cannot be fetched."""
        check_source_hub(self.model, "the model")
        if self.vae is not None:
            check_source_hub(self.vae, "the VAE")


def check_from_pretrained(
    pretrained_model_name_or_path: str | os.PathLike = DEFAULT_MODEL,
    vae: str | os.PathLike | None = "auto",
) -> LoadPlan:
    """The sources of ``PixelsmithPipeline.from_pretrained`` checked offline, and the model's
    geometry read from local folders (nothing is loaded or downloaded).

    Args:
        pretrained_model_name_or_path: an SDXL hub id or diffusers folder.
        vae: a VAE hub id or folder; ``"auto"``: ``madebyollin/sdxl-vae-fp16-fix`` for the SDXL
            base id, the model's own otherwise; ``None``: the model's own.

    Raises:
        FileNotFoundError: a path where nothing is.
        common_kernels.runtime.errors.InvalidArgument: an unknown model (neither a path nor a hub
        id).
        ValueError: a file given as a folder, a folder that is not a diffusers folder.
    """
    model = check_source(
        pretrained_model_name_or_path,
        "pretrained_model_name_or_path",
        what="model folder",
        marker=MODEL_MARKER,
    )
    if vae is not None and os.fspath(vae) == "auto":
        vae = DEFAULT_VAE if os.fspath(pretrained_model_name_or_path) == DEFAULT_MODEL else None
    local = model if isinstance(model, Path) else None
    vae_config = read_config(local / "vae" / CONFIG_MARKER) if local else {}
    vae_source = None
    if vae is not None:
        vae_source = check_source(vae, "vae", what="VAE folder", marker=CONFIG_MARKER)
        vae_config = read_config(vae_source / CONFIG_MARKER) if isinstance(vae_source, Path) else {}
    shape = ModelShape.from_configs(
        vae_config,
        read_config(local / "unet" / CONFIG_MARKER) if local else {},
        read_config(local / "scheduler" / "scheduler_config.json") if local else {},
    )
    random = read_config(local / MODEL_MARKER).get(RANDOM_WEIGHTS) if local else None
    folders = {name: folder / name for name in WEIGHT_COMPONENTS
               if (folder := local or cached_snapshot(model)) is not None}  # fmt: skip
    if vae_source is not None:
        vae_folder = vae_source if isinstance(vae_source, Path) else cached_snapshot(vae_source)
        folders["vae"] = vae_folder  # None: not cached, the size is unknown
    size = None if not folders or None in folders.values() else weight_bytes(folders.values())
    random = random if isinstance(random, Mapping) else None
    return LoadPlan(model, vae_source, shape, random, size)


def cached_snapshot(repo_id: str) -> Path | None:
    """The newest snapshot folder of a hub id in the local cache, or None."""
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = list(snapshots.iterdir()) if snapshots.is_dir() else []
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def weight_bytes(folders: Iterable[Path]) -> int:
    """The bytes of the weight files diffusers loads from component folders by default: the
    ones without a variant (``model.safetensors``, shards ``model-00001-of-00002.safetensors``,
    not ``model.fp16.safetensors``), safetensors before ``.bin``."""
    total = 0
    for folder in folders:
        files = [p for p in folder.iterdir() if p.name.count(".") == 1] if folder.is_dir() else []
        for suffix in (".safetensors", ".bin"):
            chosen = [p for p in files if p.suffix == suffix]
            if chosen:
                total += sum(p.stat().st_size for p in chosen)  # follows the cache's links
                break
    return total
