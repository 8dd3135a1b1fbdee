"""Restore images with a trained model: whole-image or tiled inference, and model loading."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from torch import Tensor, nn

from common_kernels import cpu_kernels_status, tiled_apply, value_checks
from common_kernels.runtime.errors import InvalidArgument, InvalidValue
from common_kernels.runtime.hub import check_hub, is_hub_id, local_or_hub

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, bundled_model, known_names, model_for_task
from .memory import auto_tile, available_bytes
from .models.registry import MODEL_CLASSES
from .tasks import get_task

AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Images are in [0, 1]; unclipped Gaussian noise (the DnCNN/BM3D convention) leaves that range,
# so inputs are accepted in a wider band that still rejects 0-255 values.
IMAGE_RANGE = (-1.0, 2.0)


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
    if image.numel() == 0:
        raise ValueError(
            f"image is empty: shape {tuple(image.shape)}; B, H and W must be at least 1"
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
    """Require ``window <= tile`` and ``0 <= tile_overlap < tile`` (``tile_overlap >= 0`` when
    the tile is not known yet: ``None`` or ``"auto"``, given here as ``None``)."""
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int):
        raise TypeError(f"tile_overlap must be an int, got {type(tile_overlap).__name__}")
    if tile is None:
        if tile_overlap < 0:
            raise InvalidArgument("tile_overlap", f"must be >= 0 (pixels), got {tile_overlap}")
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < window:
        raise InvalidArgument(
            "tile", f"must be an int >= the model's window size {window} (pixels), got {tile!r}"
        )
    if not 0 <= tile_overlap < tile:
        raise InvalidArgument(
            "tile_overlap",
            f"must be in [0, {{tile}} - 1] = [0, {tile - 1}] (pixels), got {tile_overlap}",
        )


def check_inference_options(
    config: dict[str, Any], *, tile: int | str | None, tile_overlap: int, k: int | None
) -> None:
    """Check restore's options against a model's config (before any image is read or model
    loaded): tile and overlap against its window, k against its window and dictionary.

    Args:
        config: the model's ``config.json`` content (:func:`read_model_config`).
        tile, tile_overlap, k: as in :func:`restore`.
    """
    window = config.get("window_size", 1)
    _check_tiling(None if tile == "auto" else tile, tile_overlap, window)
    if k is None:
        return
    if config.get("model_type", "semanir") != "semanir" or config.get("dictionary") == "dense":
        raise InvalidValue("k", "{k} applies to SemanIR models with a key-semantic dictionary only")
    tokens = window * window
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= tokens:
        raise InvalidArgument(
            "k", f"must be an int in [1, {tokens}] (a {window}x{window} window holds {tokens} "
            f"tokens), got {k!r}",
        )  # fmt: skip


def _model_config(model: nn.Module) -> dict[str, Any]:
    """The config of a loaded model as a dict (empty for models without one)."""
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


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


@functools.lru_cache(maxsize=4)
def compiled_model(model: nn.Module) -> Callable[..., Tensor]:
    """``torch.compile(model)`` (inductor), made once per model (the last four used are kept).
    Each input shape compiles once (``dynamic=False``): a folder of photos restored in tiles of
    one size compiles once, at its first tile. On the CPU, common-kernels' C++ top-k and
    attention are loaded first, and the compiled graph calls them."""
    if _model_device(model).type == "cpu":
        cpu_kernels_status()
    return torch.compile(model, dynamic=False)


def compile_for_tiles(
    model: nn.Module, tile: int, *, k: int | None = None, dtype: torch.dtype | None = None
) -> float:
    """Compile ``model`` for inputs of ``tile`` x ``tile`` pixels now (one :func:`restore` of a
    blank tile with ``compile=True``), so that a batch's timing leaves compilation out.

    Returns:
        The seconds it took (compilation, and one tile's restoration).
    """
    blank = torch.zeros(1, model.in_channels, tile, tile, device=_model_device(model))
    start = time.perf_counter()
    restore(model, blank, tile=None, k=k, dtype=dtype, compile=True)
    return time.perf_counter() - start


class AutoTileWarning(UserWarning):
    """``restore(tile="auto")`` restores in tiles because the whole image would not fit."""


def plan_tile(
    model: nn.Module,
    image_shape: tuple[int, ...],
    *,
    tile_overlap: int = 32,
    dtype: torch.dtype | None = None,
    memory_budget: int | None = None,
) -> int | None:
    """What ``tile="auto"`` does for this image: None (the whole image fits) or a tile side.

    Args:
        model: the model.
        image_shape: (B, C, H, W) of the input.
        tile_overlap: the overlap the tiles will have.
        dtype: as in :func:`restore` (half-precision autocast halves the estimate).
        memory_budget: bytes a pass may use (None: what the model's device has available).
    """
    device = _model_device(model)
    half = (dtype or (torch.float16 if device.type == "cuda" else torch.float32)) != torch.float32
    budget = available_bytes(device) if memory_budget is None else memory_budget
    batch, _, height, width = image_shape
    return auto_tile(
        _model_config(model), height, width, budget=budget, batch=batch,
        dtype_bytes=2 if half else 4, tile_overlap=tile_overlap,
    )  # fmt: skip


def restore(
    model: nn.Module,
    image: Tensor,
    *,
    tile: int | Literal["auto"] | None = "auto",
    tile_overlap: int = 32,
    k: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    ensemble: bool = False,
    memory_budget: int | None = None,
    compile: bool = False,
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
            whole image at once; ``"auto"`` (default) restores it at once when the estimated
            peak memory (:mod:`semanir.memory`) fits the device, else in the largest tiles that
            fit, with an :class:`AutoTileWarning` (the result equals an explicit ``tile``).
        tile_overlap: overlap of neighbouring tiles in input pixels, in ``[0, tile - 1]``.
        k: dictionary size per query for SemanIR models (``None``: the model's inference_k).
        dtype: compute dtype: ``None`` (fp32 on CPU, fp16 autocast on CUDA), ``torch.float32``,
            ``torch.float16`` or ``torch.bfloat16`` (autocast).
        progress: show a tqdm bar over the tiles.
        ensemble: average the model over the 8 flips/rotations of each input (tile), mapped
            back (:func:`dihedral_ensemble`): 8x the compute, usually a little more PSNR.
        memory_budget: bytes ``tile="auto"`` may plan for (None: the device's available memory).
        compile: run the model through :func:`compiled_model` (``torch.compile``): the first
            call of each input (tile) size compiles, for a minute or more; later ones are faster
            (see the package README). Outputs agree with eager ones within 1e-4 (kernels sum in
            another order, which can flip a near-tie of the dictionary).

    Returns:
        (B, C_out, H * upscale, W * upscale) images clamped to [0, 1], in ``image``'s dtype and
        on its device.
    """
    _check_image(image, model.in_channels)
    check_inference_options(_model_config(model), tile=tile, tile_overlap=tile_overlap, k=k)
    if tile == "auto":
        tile = plan_tile(model, tuple(image.shape), tile_overlap=tile_overlap, dtype=dtype,
                         memory_budget=memory_budget)  # fmt: skip
        if tile is not None:
            warnings.warn(
                f"the whole {image.shape[-2]}x{image.shape[-1]} image would not fit in memory: "
                f"restoring it in {tile} px tiles (tile={tile})",
                AutoTileWarning, stacklevel=2,
            )  # fmt: skip
    device = _model_device(model)
    autocast = _autocast(device, dtype)
    kwargs: dict[str, Any] = {} if k is None else {"k": k}
    net = compiled_model(model) if compile else model

    def forward(crops: Tensor) -> Tensor:
        with autocast, value_checks(False):  # the image was checked above, once
            return net(crops, **kwargs).float()

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
    return BUNDLED_MODELS[DEFAULT_MODEL].folder


def model_folder(name_or_path: str | Path | None) -> Path | str:
    """Where a model comes from: a bundled model's folder, a local folder, or a hub id.

    ``None`` is the bundled default; a bundled name (``semanir models`` lists them) is its
    folder; a name that looks like a path (``./``, ``/``, ``~``, or an existing folder) is that
    folder; ``owner/name`` is a hub id. Nothing here touches the network.

    Raises:
        FileNotFoundError: a path that does not exist, or bundled weights missing from the
            installation.
        ValueError: a bare name that is no bundled model (the message lists them).
    """
    if name_or_path is None:
        source = default_weights_dir()
        if not (source / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the bundled default weights are missing: expected {source}/model.safetensors "
                "and config.json; pass a folder or hub id to load_model instead"
            )
        return source
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_MODELS:
        try:
            return bundled_model(name_or_path).folder
        except KeyError as error:
            raise FileNotFoundError(error.args[0]) from None
    source = local_or_hub(name_or_path)
    if isinstance(source, Path):
        if source.is_file():
            raise ValueError(f"{source} is a file; expected a save_pretrained folder or a hub id")
        return source
    if not is_hub_id(source):
        raise ValueError(
            f"unknown model {source!r}: not a bundled model ({known_names()}), not a local "
            "folder (start a path with ./ or /), not a hub id (owner/name)"
        )
    return source


def model_file(source: Path | str, filename: str) -> Path:
    """``filename`` of a local model folder, or downloaded from a hub repository (cached)."""
    if isinstance(source, Path):
        path = source / filename
        if not path.is_file():
            raise FileNotFoundError(f"{source} holds no {filename} (written by save_pretrained)")
        return path
    check_hub(source)  # fails within seconds, saying so, when the hub is out of reach
    try:
        return Path(hf_hub_download(repo_id=source, filename=filename))
    except Exception as error:  # network, auth, missing repo: one message for all of them
        raise FileNotFoundError(
            f"{source} is not a local folder, and the hub could not provide its {filename} "
            f"({type(error).__name__}: {error})"
        ) from error


def read_model_config(name_or_path: str | Path | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model (see :func:`load_model` for the names), without its
    weights: what checks that depend on the model (window size, channels, scale) need."""
    source = model_folder(name_or_path)
    return json.loads(model_file(source, "config.json").read_text(encoding="utf-8"))


def load_model(name_or_path: str | Path | None = None, *, map_location: str = "cpu") -> nn.Module:
    """Load a saved model (SemanIR or DnCNN) in eval mode.

    Args:
        name_or_path: a bundled model's name (``semanir_tiny_sr_x4``; ``semanir models`` lists
            them), a folder written by ``save_pretrained``, a hub id ``owner/name``, or
            ``None`` for the bundled default gray denoiser (see :func:`model_folder`).
        map_location: device the weights are loaded to.

    Returns:
        The model, in eval mode, every weight loaded (strict). Its weights are normal tensors
        even when loaded under ``torch.inference_mode``, so it runs in any mode afterwards
        (inference tensors could never take part in autograd: no fine-tuning, no gradients).
    """
    source = model_folder(name_or_path)
    config = json.loads(model_file(source, "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type", "semanir")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{source}: model_type must be one of {sorted(MODEL_CLASSES)}, got {model_type!r}"
        )
    with torch.inference_mode(False):
        model = MODEL_CLASSES[model_type](config)
        state = load_file(model_file(source, "model.safetensors"), device=str(map_location))
        model.load_state_dict(state, strict=True)
    return model.eval()


class ModelChoice:
    """The model for each image: ``name`` for every image, or, when ``name`` is None, the
    bundled model of ``task`` for the image's channels (:func:`~semanir.bundled.model_for_task`;
    denoising: the colour model for colour images, the gray one for gray images). Each model is
    loaded once, on first use, and checked against the task.

    Args:
        name: a model name, folder or hub id for every image; None for the bundled choice.
        task: "denoise", "jpeg" or "sr".
        device: where models are loaded.
        per_channel: colour images go to a gray model (restored channel by channel).
        announce: called as ``announce(name, channels)`` when a bundled model is first chosen.
    """

    def __init__(
        self,
        name: str | Path | None,
        task: str,
        device: torch.device,
        *,
        per_channel: bool = False,
        announce: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name, self.task, self.device = name, task, device
        self.per_channel = per_channel
        self.announce = announce
        self.loaded: dict[str, nn.Module] = {}

    def name_for(self, gray: bool) -> str | Path:
        """The model of a gray (``gray=True``) or colour image; checks the task, loads nothing."""
        if self.name is not None:
            return self.name
        channels = "gray" if gray or self.per_channel else "rgb"
        return model_for_task(self.task, channels).name

    def model(self, name: str | Path) -> nn.Module:
        """The loaded model ``name`` (from :meth:`name_for`), on the device, in eval mode."""
        key = str(name)
        if key not in self.loaded:
            if self.name is None and self.announce is not None:
                self.announce(key, bundled_model(key).channels)
            self.loaded[key] = load_for_task(name, self.task, self.device)
        return self.loaded[key]

    def describe(self) -> str:
        """The models in use, for messages."""
        return ", ".join(self.loaded) if self.loaded else str(self.name)


def check_model_for_task(config: dict[str, Any], task: str, *, per_channel: bool = False) -> None:
    """Refuse a model whose config does not fit the task (before it loads): an upscaling model
    for denoising or JPEG, a same-size model for ``sr``, or ``per_channel`` with a model that
    does not take one channel.

    Args:
        config: the model's ``config.json`` content (:func:`read_model_config`).
        task: a task of :data:`semanir.tasks.TASKS` ("denoise", "jpeg", "sr").
        per_channel: colour images are to be restored channel by channel (``--per-channel``).
    """
    upscale = int(config.get("upscale", 1))
    if get_task(task).upscales != (upscale > 1):
        size = f"upscales x{upscale}" if upscale > 1 else "keeps the image size"
        raise InvalidValue("task", f"the model {size}, which does not fit {{task={task!r}}}")
    channels = config.get("in_channels", config.get("channels", 1))  # SemanIR / DnCNN
    if per_channel and channels != 1:
        raise InvalidValue(
            "per_channel",
            f"{{per_channel=True}} applies to gray models; this model takes {channels} channels",
        )


def load_for_task(name: str | Path | None, task: str, device: torch.device) -> nn.Module:
    """:func:`load_model` on ``device``, refused when its scale does not fit ``task``."""
    model = load_model(name).to(device).eval()
    check_model_for_task({"upscale": model.upscale, "in_channels": model.in_channels}, task)
    return model


class RestoreOptions(TypedDict, total=False):
    """The options of :func:`restore_image` that callers pass on (as in :func:`restore`)."""

    tile: int | Literal["auto"] | None
    tile_overlap: int
    k: int | None
    ensemble: bool
    progress: bool
    compile: bool


def restore_image(
    model: nn.Module,
    image: Tensor,
    *,
    tile: int | Literal["auto"] | None = "auto",
    tile_overlap: int = 32,
    k: int | None = None,
    ensemble: bool = False,
    progress: bool = False,
    compile: bool = False,
) -> Tensor:
    """Restore one (C, H, W) image on the model's device; returns it on the CPU.

    A colour image given to a gray model is restored as a batch of its three channels, put back
    together (``--per-channel``). Other arguments as in :func:`restore`.
    """
    options = dict(tile=tile, tile_overlap=tile_overlap, k=k, ensemble=ensemble, progress=progress,
                   compile=compile)  # fmt: skip
    device = _model_device(model)
    if image.shape[0] == 3 and model.in_channels == 1:
        batch = image[:, None].to(device)  # (3, 1, H, W)
        return restore(model, batch, **options)[:, 0].cpu()  # (3, H', W')
    return restore(model, image[None].to(device), **options)[0].cpu()  # (C, H', W')
