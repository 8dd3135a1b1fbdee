"""Restore images with a trained model: whole-image or tiled inference, and model loading."""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from torch import Tensor, nn

from common_kernels import tiled_apply

from .models.registry import MODEL_CLASSES

DEFAULT_WEIGHTS = "semanir_tiny_denoise_gray"
AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Images are in [0, 1]; unclipped Gaussian noise (the DnCNN/BM3D convention) leaves that range,
# so inputs are accepted in a wider band that still rejects 0-255 values.
IMAGE_RANGE = (-1.0, 2.0)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _check_image(image: object, in_channels: int) -> Tensor:
    """Require a finite floating (B, in_channels, H, W) tensor."""
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must have shape (B, C, H, W), got {tuple(image.shape)}")
    if image.shape[1] != in_channels:
        raise ValueError(
            f"image has {image.shape[1]} channels but the model takes in_channels={in_channels}"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"image must be a floating tensor with values in [0, 1], got {image.dtype} "
            "(convert uint8 images with image.float() / 255)"
        )
    lowest, highest = torch.stack(torch.aminmax(image.detach().float())).tolist()  # one sync
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise ValueError("image contains NaN or Inf values; all entries must be finite")
    if lowest < IMAGE_RANGE[0] or highest > IMAGE_RANGE[1]:
        raise ValueError(
            f"image values must be in [0, 1] (noisy inputs may reach {list(IMAGE_RANGE)}), got "
            f"[{lowest:.4g}, {highest:.4g}]; scale 8-bit values with image / 255"
        )
    return image


def _check_tiling(tile: int | None, tile_overlap: int, window: int) -> None:
    """Require ``window <= tile`` and ``0 <= tile_overlap < tile``."""
    if tile is None:
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < window:
        raise ValueError(
            f"tile must be an int >= the model's window size {window} (or None for whole-image "
            f"inference), got {tile!r}"
        )
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int):
        raise TypeError(f"tile_overlap must be an int, got {type(tile_overlap).__name__}")
    if not 0 <= tile_overlap < tile:
        raise ValueError(
            f"tile_overlap must be in [0, tile - 1] = [0, {tile - 1}], got {tile_overlap}"
        )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """fp32 (no autocast) on the CPU by default, fp16 autocast on CUDA by default."""
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(
            f"dtype must be torch.float32, torch.float16, torch.bfloat16 or None, got {dtype}"
        )
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _model_window(model: nn.Module) -> int:
    """Window side of a SemanIR-style model; 1 for models without windows."""
    return getattr(getattr(model, "config", None), "window_size", 1)


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (the CPU for parameter-free models)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def dihedral_ensemble(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The mean of ``fn`` over the 8 flips/rotations of ``x``, each mapped back.

    The x8 geometric self-ensemble of restoration papers ("+" models): variant k rotates
    k % 4 quarter turns, then mirrors left-right when k >= 4; its output is mirrored back,
    then rotated back.

    Args:
        fn: maps (B, C, h, w) to (B, C', h * s, w * s) for a fixed scale s.
        x: (B, C, H, W) input.
    """
    total = None
    for k in range(8):
        variant = torch.rot90(x, k % 4, dims=(-2, -1))
        variant = variant.flip(-1) if k >= 4 else variant
        out = fn(variant)
        out = out.flip(-1) if k >= 4 else out
        out = torch.rot90(out, -(k % 4), dims=(-2, -1))
        total = out if total is None else total + out
    return total / 8


def restore(
    model: nn.Module,
    image: Tensor,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    k: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    ensemble: bool = False,
) -> Tensor:
    """Restore (or upscale) images, optionally tile by tile with linear blending.

    The model runs in eval mode under ``torch.inference_mode`` and is put back in its previous
    mode afterwards.

    Args:
        model: a :class:`~semanir.models.SemanIR`, :class:`~semanir.models.DnCNN` or any module
            with ``in_channels`` and ``upscale`` attributes mapping (B, C, h, w) to
            (B, C_out, h * upscale, w * upscale).
        image: (B, in_channels, H, W) floating images with values in [0, 1].
        tile: tile side in input pixels (>= the model's window size); ``None`` restores the
            whole image at once.
        tile_overlap: overlap of neighbouring tiles in input pixels, in ``[0, tile - 1]``.
        k: dictionary size per query for SemanIR models (``None``: the model's inference_k).
        dtype: compute dtype: ``None`` (fp32 on CPU, fp16 autocast on CUDA), ``torch.float32``,
            ``torch.float16`` or ``torch.bfloat16`` (autocast).
        progress: show a tqdm bar over the tiles.
        ensemble: average the model over the 8 flips/rotations of each input (tile), mapped
            back (:func:`dihedral_ensemble`): 8x the compute, usually a little more PSNR.

    Returns:
        (B, C_out, H * upscale, W * upscale) images clamped to [0, 1], in ``image``'s dtype and
        on its device.
    """
    _check_image(image, model.in_channels)
    _check_tiling(tile, tile_overlap, _model_window(model))
    device = _model_device(model)
    autocast = _autocast(device, dtype)
    kwargs: dict[str, Any] = {} if k is None else {"k": k}

    def forward(crops: Tensor) -> Tensor:
        with autocast:
            return model(crops, **kwargs).float()

    def run(crops: Tensor) -> Tensor:
        return dihedral_ensemble(forward, crops) if ensemble else forward(crops)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = image.to(device=device, dtype=torch.float32)
            if tile is None:
                out = run(x)
            else:
                out = tiled_apply(
                    run,
                    x,
                    tile=tile,
                    stride=tile - tile_overlap,
                    scale=model.upscale,
                    blend="linear",
                    progress=progress,
                )
    finally:
        model.train(was_training)
    return out.clamp(0.0, 1.0).to(device=image.device, dtype=image.dtype)


def default_weights_dir() -> Path:
    """Folder of the bundled default weights (``semanir/weights/semanir_tiny_denoise_gray``)."""
    return Path(str(resources.files("semanir") / "weights" / DEFAULT_WEIGHTS))


def _read_config(source: str) -> dict[str, Any]:
    """config.json of a local model folder or a hub repository."""
    if Path(source).is_dir():
        config_file = Path(source) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{source} holds no config.json (written by save_pretrained)")
    elif Path(source).exists():
        raise ValueError(f"{source} is a file; expected a save_pretrained folder or a hub id")
    elif not HUB_ID.match(source):
        raise FileNotFoundError(
            f"no model folder {source} (and it is not a hub id of the form owner/name)"
        )
    else:
        try:
            config_file = Path(hf_hub_download(repo_id=source, filename="config.json"))
        except Exception as error:  # network, auth, missing repo: one message for all of them
            raise FileNotFoundError(
                f"{source} is not a local folder, and the hub could not provide it "
                f"({type(error).__name__}: {error})"
            ) from error
    return json.loads(config_file.read_text(encoding="utf-8"))


def load_model(name_or_path: str | Path | None = None, *, map_location: str = "cpu") -> nn.Module:
    """Load a saved model (SemanIR or DnCNN) in eval mode.

    Args:
        name_or_path: a folder written by ``save_pretrained``, a hub id, or ``None`` for the
            bundled default weights (:func:`default_weights_dir`).
        map_location: device the weights are loaded to.

    Returns:
        The model, in eval mode, every weight loaded (strict).
    """
    if name_or_path is None:
        source = default_weights_dir()
        if not (source / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the bundled default weights are missing: expected {source}/model.safetensors "
                "and config.json; pass a folder or hub id to load_model instead"
            )
        name_or_path = source
    source = str(name_or_path)
    model_type = _read_config(source).get("model_type", "semanir")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{source}: model_type must be one of {sorted(MODEL_CLASSES)}, got {model_type!r}"
        )
    model_class = MODEL_CLASSES[model_type]
    return model_class.from_pretrained(source, map_location=map_location, strict=True)
