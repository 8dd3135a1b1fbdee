"""``Segmenter``: ITACLIP on an image or a batch (resize, sliding window, variants, PAMR, labels).

Every argument is checked before any model work: ``check_from_pretrained`` next to
``Segmenter.from_pretrained`` and ``Segmenter.check_inputs`` next to the call, with the messages
that ``itaclip`` prints for the same inputs: an ``InvalidArgument`` names the API's argument, and
the command line prints it with its flag (``itaclip.cli.FLAGS``).
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common_kernels import tile_grid
from common_kernels.runtime.cli import check_device, check_folder_writable, one_line
from common_kernels.runtime.errors import InvalidArgument, argument_errors
from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.progress import progress as show_progress
from itaclip.config import PRECISIONS, SegmenterConfig, make_config
from itaclip.engineering import combine_variant_logits, make_variants, normalize, num_variants
from itaclip.inputs import ClassInputs, check_classes
from itaclip.io import check_not_empty, to_rgb_images
from itaclip.memory import VisionShape, check_parts, check_windows, image_parts
from itaclip.models import ITACLIPVisionEncoder
from itaclip.outputs import save_labels, save_overlay
from itaclip.postprocess import classify_query_logits
from itaclip.presets import check_preset, dataset_classes
from itaclip.refinement import pamr
from itaclip.sources import (
    ModelLoadError,
    ModelSource,
    check_model_hub,
    resolve_model,
    vision_config,
)
from itaclip.stitching import stitch_windows, window_axis_matrix
from itaclip.text import (
    ClassQueries,
    TextEmbeddingCache,
    embed_texts,
    imagenet_templates,
    mix_auxiliary,
    model_fingerprint,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
GPU_BATCH, CPU_BATCH = 20, 5  # default images per ViT pass (see SegmenterConfig.batch_size)


def progress_hidden(progress: bool | None) -> bool:
    """``disable`` of ``common_kernels.runtime.progress`` for a ``progress`` switch: ``False``
    hides it;
    ``True`` and ``None`` show a bar on a terminal and a plain line every 10 s in a log."""
    return progress is False


@dataclass
class Segmentation:
    """Result of ``Segmenter.__call__``; (H, W) is the input size or the call's ``output_size``.

    Args:
        labels: (H, W) int64 class indices (after the thresholds and, in faithful mode, the
            3x3 closing).
        probs: (C, H, W) fp32 class probabilities (after the area threshold).
        class_names: display name of each class.
        labels_before_closing: (H, W) int64 labels after the thresholds, before the closing
            (equal to ``labels`` unless ``faithful``).
        query_logits: (Q, H, W) fp32 cosine logits of every query (PAMR-refined when PAMR is
            on), before the logit scale, softmax and thresholds; only with
            ``return_query_logits=True``, else ``None``.
        query_names: the Q queries (every name of every class, class by class).
        query_class: (Q,) int64 class index of each query.
    """

    labels: Tensor
    probs: Tensor
    class_names: tuple[str, ...]
    labels_before_closing: Tensor | None = None
    query_logits: Tensor | None = None
    query_names: tuple[str, ...] = ()
    query_class: Tensor | None = None

    def save_overlay(self, path: str | os.PathLike, image: Any) -> list[str]:
        """Write the labels blended over ``image`` (a colour per class, a legend of the classes
        present), atomically, in the format of ``path``'s suffix (PNG: what ``itaclip segment``
        writes).

        Args:
            path: the file to write.
            image: the segmented image (a ``common_kernels.runtime.photos.read_photo`` photo
                keeps its ICC profile and EXIF; a PIL image, array or tensor too), resized to the
                labels' size when ``output_size`` changed it.

        Returns:
            What the format could not hold, one note each (none for PNG).
        """
        return save_overlay(path, image, self.labels, self.class_names)

    def save_labels(self, path: str | os.PathLike) -> list[str]:
        """Write the class indices (8 bits, 16 above 256 classes), atomically, to a ``.png`` or
        ``.tif`` file.

        Returns:
            What the format could not hold (nothing for these formats).
        """
        return save_labels(path, self.labels, len(self.class_names))


@dataclass(frozen=True)
class SegmentInputs:
    """A checked ``Segmenter`` call (``Segmenter.check_inputs``).

    Args:
        images: the (3, H, W) fp32 RGB images.
        batched: whether a (B, 3, H, W) batch was given (the call returns a list).
        classes: the checked classes, auxiliary texts and background.
        output_size: (H_out, W_out) of the outputs, or ``None`` for each image's size.
    """

    images: tuple[Tensor, ...]
    batched: bool
    classes: ClassInputs
    output_size: tuple[int, int] | None


def resized_size(height: int, width: int, short_side: int | None, max_long: int):
    """(H', W') with short side ``short_side`` and long side <= ``max_long``, aspect kept."""
    if short_side is None:
        return height, width
    scale = min(short_side / min(height, width), max_long / max(height, width))
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def check_output_size(
    output_size: Sequence[int] | None, default: tuple[int, int]
) -> tuple[int, int]:
    """``(H, W)`` of the outputs: ``output_size`` checked, or ``default`` when ``None``."""
    if output_size is None:
        return default
    sizes = []
    if isinstance(output_size, Sequence) and not isinstance(output_size, str):
        for value in output_size:
            with contextlib.suppress(TypeError):
                if not isinstance(value, bool):
                    sizes.append(operator.index(value))  # ints, numpy and torch integers
    if len(sizes) != 2 or len(output_size) != 2 or min(sizes) < 1:
        raise ValueError(f"output_size must be (height, width) with ints >= 1, got {output_size!r}")
    return sizes[0], sizes[1]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/itaclip/text`` (default ``~/.cache/itaclip/text``)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "itaclip" / "text"


@dataclass(frozen=True)
class LoadPlan:
    """A checked ``Segmenter.from_pretrained`` call (``check_from_pretrained``).

    Args:
        source: what open_clip loads, and the hub repositories it asks.
        config: the inference settings.
        preset: the dataset preset (default classes), or ``None``.
        device: where the model runs.
        cache_dir: folder of the text-embedding cache.
    """

    source: ModelSource
    config: SegmenterConfig
    preset: str | None
    device: torch.device
    cache_dir: Path


def check_from_pretrained(
    model_name: str | os.PathLike = "ViT-B-16-quickgelu",
    pretrained: str | os.PathLike | None = "openai",
    preset: str | None = "voc21",
    device: str | torch.device | None = "cpu",
    cache_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> LoadPlan:
    """Every argument of ``Segmenter.from_pretrained`` checked offline, before any model work.

    Args:
        model_name: see ``Segmenter.from_pretrained`` (and ``itaclip.sources``).
        pretrained: weights tag or file of a built-in name.
        preset: dataset preset, or ``None`` for the default settings.
        device: a torch device this machine has (``None``: cuda when available, else cpu).
        cache_dir: text-embedding cache folder, writable (default ``default_cache_dir()``).
        **overrides: ``SegmenterConfig`` fields replacing the preset's.

    Raises:
        InvalidArgument: a setting out of range, an unknown model or tag, a model folder or
            weights file that does not exist, a device this machine does not have, a cache
            folder that cannot be written; each named.
    """
    config = make_config(preset, **overrides)
    source = resolve_model(model_name, pretrained)
    with argument_errors("device"):
        checked_device = check_device(None if device is None else str(device), "device")
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    with argument_errors("cache_dir"):
        check_folder_writable(folder, "cache_dir")
    return LoadPlan(source, config, preset, checked_device, folder)


def check_memory(
    config: SegmenterConfig,
    device: torch.device,
    vision: VisionShape,
    sizes: Mapping[str, tuple[int, int]],
    queries: int,
    classes: int,
    output_size: Sequence[int] | None = None,
    image_argument: str = "image",
) -> None:
    """Each image's windows and memory estimate (``itaclip.memory``) against the time bound and
    the memory of ``device``, unless ``config.allow_large``.

    Args:
        config: the settings.
        device: where the segmentation runs.
        vision: the tower's shape.
        sizes: each image in words (a path, ``image``) -> its (height, width).
        queries: queries (every name of every class).
        classes: classes.
        output_size: (H_out, W_out) of the outputs, or None for each image's size.
        image_argument: the argument that gives the images (named when an image's own size
            is what does not fit).

    Raises:
        InvalidValue: the first image that makes too many windows (``check_windows``) or does
            not fit, naming the settings of its largest part (``output_size``, ``short_side``
            and ``stride``, ``batch_size``), the estimate and the limit.
    """
    if config.allow_large:
        return
    batch = config.batch_size or (GPU_BATCH if device.type == "cuda" else CPU_BATCH)
    for name, (height, width) in sizes.items():
        resized = resized_size(height, width, config.short_side, config.max_long_side)
        output = (height, width) if output_size is None else check_output_size(output_size, (1, 1))
        what = (
            f"{{{image_argument}}} {name}" if output_size is None
            else f"{{output_size}} {output[0]}x{output[1]}"
        )  # fmt: skip
        image = f"{name} ({height}x{width} px)"
        check_windows(resized, config, image)
        parts = image_parts(resized, output, config, batch, vision, queries, classes, what)
        check_parts(parts, device, image)


def plan_vision(plan: LoadPlan) -> VisionShape | None:
    """The tower's shape of a checked plan, from its open_clip config (None: a hub repository,
    whose config comes with its weights)."""
    found = vision_config(plan.source)
    if found is None:
        return None
    mid_layers = None if plan.config.encoder is None else plan.config.encoder.mid_layers
    return VisionShape.from_config(found, mid_layers)


def check_plan_memory(
    plan: LoadPlan,
    sizes: Mapping[str, tuple[int, int]],
    classes: ClassInputs,
    output_size: Sequence[int] | None = None,
) -> None:
    """``check_memory`` for the images of a run before its model loads, with the tower's shape
    read from the model's open_clip config (a hub repository's is read after the load, by
    ``Segmenter.check_inputs``).

    Args:
        plan: from ``check_from_pretrained``.
        sizes: each image's path -> its (height, width) (``itaclip.folders.SegmentJob.size``).
        classes: the checked classes.
        output_size: (H_out, W_out) of the outputs, or None.

    Raises:
        InvalidValue: see ``check_memory`` (the images named as ``images``).
    """
    vision = plan_vision(plan)
    if vision is None:
        return
    queries = classes.queries
    check_memory(
        plan.config,
        plan.device,
        vision,
        sizes,
        len(queries.queries),
        queries.num_classes,
        output_size,
        "images",
    )


class Segmenter(nn.Module):
    """Training-free open-vocabulary segmentation with an open_clip ViT CLIP.

    Args:
        model: an open_clip CLIP with a ViT image tower (``encode_text`` and ``visual``).
        tokenizer: its open_clip tokenizer.
        config: inference settings.
        preset: dataset whose classes, auxiliary texts and background are used when a call
            gives no ``classes`` (``None`` = classes required).
        model_id: identity of the weights for the text cache (default: a fingerprint of them).
        cache_dir: folder of the on-disk text-embedding cache (``None`` = in memory only).
        mean: image normalisation mean.
        std: image normalisation std.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: SegmenterConfig | None = None,
        preset: str | None = None,
        model_id: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
    ) -> None:
        super().__init__()
        self.config = config or SegmenterConfig()
        self.clip = model.eval()
        self.encoder = ITACLIPVisionEncoder(model.visual, self.config.encoder)
        self.tokenizer = tokenizer
        if preset is not None:
            check_preset(preset)
        self.preset = preset
        self._model_id = model_id
        self.disk_cache = None if cache_dir is None else TextEmbeddingCache(cache_dir)
        self._memory_cache: dict[str, Tensor] = {}
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_pretrained(
        cls,
        model_name: str | os.PathLike = "ViT-B-16-quickgelu",
        pretrained: str | os.PathLike | None = "openai",
        preset: str | None = "voc21",
        device: str | torch.device | None = "cpu",
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Segmenter:
        """Load an open_clip model: a built-in name with a weights tag or file, a hub
        repository, or a local folder (``itaclip.sources``); every argument is checked first
        (``check_from_pretrained``), and the hub within seconds (``Segmenter.load``).

        Args:
            model_name: open_clip architecture name, ``hf-hub:owner/name`` (or ``owner/name``),
                ``local-dir:PATH`` or a folder path (``./tiny-clip``).
            pretrained: weights tag or file for built-in names (ignored otherwise; ``None`` or
                ``""``: random weights).
            preset: dataset preset for settings and default classes (``None`` = defaults).
            device: where to run (``None``: cuda when available, else cpu).
            cache_dir: text-embedding cache folder (default ``~/.cache/itaclip/text``).
            **overrides: ``SegmenterConfig`` fields replacing the preset's.
        """
        return cls.load(
            check_from_pretrained(model_name, pretrained, preset, device, cache_dir, **overrides)
        )

    @classmethod
    def load(cls, plan: LoadPlan) -> Segmenter:
        """Load the model of a checked plan; a hub repository that is not cached and cannot be
        reached fails at once, before open_clip asks for it.

        Args:
            plan: from ``check_from_pretrained``.

        Raises:
            common_kernels.runtime.hub.HubUnreachableError: ``cannot load MODEL: REPO is not in the
                local hub cache ... and HF_HUB_OFFLINE is set ...`` (an ``OSError``).
            ModelLoadError: open_clip could not build or load the model (an ``OSError``).
        """
        source = plan.source
        try:
            check_model_hub(source)
        except HubUnreachableError as error:
            raise HubUnreachableError(f"cannot load {source.describe()}: {error}") from None
        try:
            model = open_clip.create_model(
                source.name, pretrained=source.pretrained, device=plan.device
            )
            tokenizer = open_clip.get_tokenizer(source.name)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load {source.describe()}: {one_line(error)}") from error
        visual_cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        return cls(
            model,
            tokenizer,
            plan.config,
            preset=plan.preset,
            model_id=source.cache_id,
            cache_dir=plan.cache_dir,
            mean=visual_cfg.get("mean", OPENAI_MEAN),
            std=visual_cfg.get("std", OPENAI_STD),
        )

    @property
    def device(self) -> torch.device:
        return self.encoder.visual.conv1.weight.device

    @property
    def model_id(self) -> str:
        """Identity of the CLIP weights used as the text-cache key."""
        if self._model_id is None:
            self._model_id = f"sha256:{model_fingerprint(self.clip)}"
        return self._model_id

    def embed(self, texts: Sequence[str]) -> Tensor:
        """(len(texts), C) template-averaged embeddings, from the cache when possible."""
        templates = imagenet_templates()
        key = TextEmbeddingCache.key(self.model_id, texts, templates)
        if key not in self._memory_cache:

            def compute() -> Tensor:
                return embed_texts(
                    self.clip.encode_text, self.tokenizer, texts, templates, device=self.device
                )

            self._memory_cache[key] = (
                self.disk_cache.get_or_compute(self.model_id, texts, templates, compute)
                if self.disk_cache is not None
                else compute().cpu()
            )
        return self._memory_cache[key].to(self.device)

    def text_features(
        self,
        classes: Sequence[str | Sequence[str]],
        aux_texts: Sequence[str | None] | None = None,
        background: int | str | None = None,
    ) -> tuple[ClassQueries, Tensor]:
        """Parsed classes and their (Q, C) query features (auxiliary texts mixed in).

        Args:
            classes: class names; ``"a,b"`` or ``["a", "b"]`` gives a class two queries.
            aux_texts: one auxiliary text per class, mixed with weight ``config.alpha``; the
                background's may be ``None`` (its queries keep their features anyway).
            background: background class (index or name); its queries keep their features.
        """
        inputs = check_classes(classes, aux_texts, background)
        return inputs.queries, self.class_features(inputs)

    def class_features(self, inputs: ClassInputs) -> Tensor:
        """(Q, C) query features of checked classes (``itaclip.inputs.check_classes``)."""
        parsed, aux_texts, background = inputs.queries, inputs.aux_texts, inputs.background
        features = self.embed(parsed.queries)
        if aux_texts is None:
            return features
        keep = () if background is None else (background,)
        if any(text is None for text in aux_texts):  # the background's: a zero row, never used
            given = [text for text in aux_texts if text is not None]
            aux = self.embed(given) if given else features.new_zeros(0, features.shape[1])
            aux = torch.cat([aux[:background], aux.new_zeros(1, aux.shape[1]), aux[background:]])
        else:
            aux = self.embed(list(aux_texts))
        owners = parsed.query_class.to(self.device)
        return mix_auxiliary(features, aux, owners, self.config.alpha, keep)

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16/bf16 autocast on CUDA per ``config.precision``; nothing on the CPU in fp32."""
        precision = self.config.precision
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[precision])

    @property
    def batch_size(self) -> int:
        """Images per ViT pass: ``config.batch_size``, or the device's default when ``None``."""
        if self.config.batch_size is not None:
            return self.config.batch_size
        return GPU_BATCH if self.device.type == "cuda" else CPU_BATCH

    def encode_images(self, pixels: Tensor) -> Tensor:
        """(n, 3, h, w) -> (n, h', w', C) fp32 patch features, ``batch_size`` images at a time."""
        parts = []
        with self.autocast():
            for batch in pixels.split(self.batch_size):
                parts.append(self.encoder(batch).float())
        return torch.cat(parts)

    def crop_logits(self, crops: Tensor, text: Tensor) -> Tensor:
        """(n, 3, h, w) RGB crops in [0, 1] -> (n, Q, h', w') combined logits on the token grid."""
        cfg = self.config
        n, variants = crops.shape[0], num_variants(cfg.img_engineering)
        pixels = make_variants(
            crops, self.mean, self.std, cfg.faithful, cfg.img_engineering
        )  # (n*V, 3, h, w), V = 5 variants or 1 (original only)
        features = self.encode_images(pixels)  # (n*V, h', w', C)
        features = features.reshape(n, variants, *features.shape[1:])  # (n, V, h', w', C)
        return combine_variant_logits(features, text, cfg.lam)

    @torch.no_grad()
    def query_logits(
        self,
        image: Tensor,
        text: Tensor,
        output_size: Sequence[int] | None = None,
        progress: bool | None = False,
    ) -> Tensor:
        """Sliding-window logits of every query at the input (or the requested) resolution.

        Windows go through the ViT in batches; their token-grid logits are stitched, averaged
        and resized to the output size in two matrix products (``itaclip.stitching``), which
        equals the official upsample-per-window, canvas-add, divide and bilinear resize up to
        float rounding.

        Args:
            image: (3, H, W) RGB in [0, 1].
            text: (Q, C) query features.
            output_size: (H_out, W_out) of the logits (mmsegmentation's ``ori_shape``): the
                windows slide over the resized image as usual, the stitched logits are resized
                bilinearly to this size and PAMR runs at it, guided by ``image`` resized
                bilinearly to it. ``None`` = (H, W).
            progress: progress over the sliding windows (``common_kernels.runtime.progress``;
                ``True`` or ``None``: a bar on a terminal, removed when the image is done, and in
                a log a plain line every 10 s while the image takes longer).

        Returns:
            (Q, H_out, W_out) fp32 logits (PAMR-refined when ``config.pamr``).

        Raises:
            InvalidArgument: an empty ``image`` or ``text`` (``text: ...``).
        """
        check_not_empty(image.shape)
        if text.ndim != 2 or 0 in text.shape:
            raise InvalidArgument(
                "text",
                f"query features must be (Q, C) with Q, C >= 1, got shape {tuple(text.shape)} "
                "(Segmenter.text_features gives them)",
            )
        cfg = self.config
        height, width = image.shape[-2:]
        out_h, out_w = check_output_size(output_size, (height, width))
        image = image.to(self.device)
        new_h, new_w = resized_size(height, width, cfg.short_side, cfg.max_long_side)
        resized = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False
        )[0]  # (3, H', W')
        tiles = tile_grid(new_h, new_w, cfg.crop, cfg.stride)
        tops = list(dict.fromkeys(tile.top for tile in tiles))
        lefts = list(dict.fromkeys(tile.left for tile in tiles))
        per_step = max(1, self.batch_size // num_variants(cfg.img_engineering))
        grid, group = None, []
        shown = show_progress(
            tiles, desc="windows", unit="windows", disable=progress_hidden(progress), leave=False
        )  # counts a window when it joins its ViT batch: the count moves per_step at a time
        for index, tile in enumerate(shown):
            group.append(tile)
            if len(group) < per_step and index + 1 < len(tiles):
                continue
            crops = torch.stack([resized[(slice(None), *t.slices)] for t in group])  # (n, 3, h, w)
            windows = self.crop_logits(crops, text)  # (n, Q, th, tw)
            token_h, token_w = windows.shape[-2:]
            if grid is None:  # (Q, window rows, th, window cols, tw)
                grid = windows.new_zeros(text.shape[0], len(tops), token_h, len(lefts), token_w)
            for number, window in enumerate(windows, start=index + 1 - len(group)):
                row, col = divmod(number, len(lefts))  # tiles are row-major
                grid[:, row, :, col] = window
            group = []
        rows = window_axis_matrix(new_h, tops, tiles[0].height, token_h, out_h)  # (Ho, rows*th)
        cols = window_axis_matrix(new_w, lefts, tiles[0].width, token_w, out_w)  # (Wo, cols*tw)
        grid = grid.flatten(3, 4).flatten(1, 2)  # (Q, rows * th, cols * tw)
        logits = stitch_windows(grid, rows, cols)[None]  # (1, Q, Ho, Wo)
        if cfg.pamr:
            guide = image[None]  # (1, 3, H, W)
            if (out_h, out_w) != (height, width):
                guide = F.interpolate(
                    guide, size=(out_h, out_w), mode="bilinear", align_corners=False
                )
            guide = normalize(guide, self.mean, self.std)  # (1, 3, Ho, Wo)
            logits = pamr(guide, logits, cfg.pamr_iterations, cfg.pamr_dilations, cfg.pamr_chunk)
        return logits[0]

    def resolve_classes(
        self,
        classes: Sequence[str | Sequence[str]] | None,
        aux_texts: Sequence[str | None] | None,
        background: int | str | None,
        aux_file: str | os.PathLike | None = None,
    ) -> tuple[Sequence[str | Sequence[str]], Sequence[str | None] | None, int | str | None]:
        """Explicit classes, or the preset dataset's classes and background, and its auxiliary
        texts unless ``aux_texts`` or ``aux_file`` gives them."""
        if classes is not None:
            return classes, aux_texts, background
        if self.preset is None:
            raise ValueError("classes are required (this Segmenter has no dataset preset)")
        data = dataset_classes(self.preset)
        if aux_texts is None and aux_file is None:
            aux_texts = list(data.aux_texts(self.config.aux))
        return list(data.queries), aux_texts, data.background

    def check_image_size(self, image: Tensor) -> None:
        """Fail unless the resized (3, H, W) ``image`` holds at least one ViT patch."""
        height, width = image.shape[-2:]
        cfg = self.config
        new_h, new_w = resized_size(height, width, cfg.short_side, cfg.max_long_side)
        patch_h, patch_w = self.encoder.patch_size
        if min(new_h, cfg.crop) < patch_h or min(new_w, cfg.crop) < patch_w:
            raise ValueError(
                f"images must be at least one patch ({patch_h}x{patch_w} px) after the resize, "
                f"got {height}x{width} px resized to {new_h}x{new_w}"
            )

    def check_inputs(
        self,
        image: Any,
        classes: Sequence[str | Sequence[str]] | None = None,
        aux_texts: Sequence[str | None] | None = None,
        background: int | str | None = None,
        *,
        aux_file: str | os.PathLike | None = None,
        check_aux_names: bool = True,
        output_size: Sequence[int] | None = None,
    ) -> SegmentInputs:
        """Every input of a call checked, before any model work (see ``forward``).

        Args:
            image: one image or a (B, 3, H, W) batch (see ``forward``).
            classes: class names, or ``None`` for the preset's.
            aux_texts: one auxiliary text per class.
            background: background class index or name.
            aux_file: auxiliary texts from a file (``itaclip.inputs.load_aux_file``).
            check_aux_names: check the names of an official-format ``aux_file``.
            output_size: (H_out, W_out) of the outputs, or ``None``.

        Raises:
            ValueError: the first bad input (an ``InvalidArgument`` naming it where it is one
                argument); the message says what it accepts. An image whose memory estimate
                exceeds the memory available (``check_memory``) names the settings.
        """
        images, batched = to_rgb_images(image)
        for one in images:
            self.check_image_size(one)
        size = None if output_size is None else check_output_size(output_size, (1, 1))
        classes, aux_texts, background = self.resolve_classes(
            classes, aux_texts, background, aux_file
        )
        checked = check_classes(
            classes,
            aux_texts,
            background,
            aux_file=aux_file,
            check_aux_names=check_aux_names,
        )
        sizes = {
            f"image {index}" if batched else "image": tuple(one.shape[-2:])
            for index, one in enumerate(images)
        }
        vision = VisionShape.from_encoder(self.encoder)
        queries = checked.queries
        check_memory(
            self.config,
            self.device,
            vision,
            sizes,
            len(queries.queries),
            queries.num_classes,
            size,
        )
        return SegmentInputs(tuple(images), batched, checked, size)

    def forward(
        self,
        image: Any,
        classes: Sequence[str | Sequence[str]] | None = None,
        aux_texts: Sequence[str | None] | None = None,
        background: int | str | None = None,
        *,
        aux_file: str | os.PathLike | None = None,
        check_aux_names: bool = True,
        output_size: Sequence[int] | None = None,
        return_query_logits: bool = False,
        progress: bool | None = False,
    ) -> Segmentation | list[Segmentation]:
        """Segment one image, or each image of a (B, 3, H, W) batch.

        A batch's images share the text features and go through the ViT one image after the
        other, each with the windows batched as for a single call, so each result equals the
        single-image call bit for bit.

        Args:
            image: PIL image, (H, W[, C]) array (uint8/uint16/float), (3, H, W) float tensor,
                or a (B, 3, H, W) float tensor batch; floats in [0, 1].
            classes: class names (``"cat"``, ``"person,man"``); ``None`` = the preset's.
            aux_texts: one auxiliary text per class (definition or synonym), optional.
            background: the background class, a 0-based index or any of its names (enables
                the thresholds), optional.
            aux_file: auxiliary texts from a file, replacing ``aux_texts``: the JSON of
                ``itaclip aux`` (``.json``) or the official format (``name >=text`` lines, one
                per non-background class, in class order; see ``itaclip.auxfile``).
            check_aux_names: require each official-format line's name to be one of its
                class's names (case-insensitive).
            output_size: (H_out, W_out) of the labels, probabilities and logits
                (mmsegmentation's ``ori_shape``; see ``query_logits``); ``None`` = the input's.
            return_query_logits: also return the (Q, H_out, W_out) query logits.
            progress: progress over the sliding windows (and over a batch's images): ``True``
                or ``None`` show a bar on a terminal and plain lines in a log.

        Returns:
            ``Segmentation`` with (H, W) labels, labels before the closing and (C, H, W)
            probabilities (and the query logits when asked); a list of them for a batch.
        """
        inputs = self.check_inputs(
            image,
            classes,
            aux_texts,
            background,
            aux_file=aux_file,
            check_aux_names=check_aux_names,
            output_size=output_size,
        )
        text = self.class_features(inputs.classes)
        images = inputs.images
        if inputs.batched:
            images = show_progress(
                images, desc="images", unit="images", disable=progress_hidden(progress)
            )
        results = [
            self.segment_image(one, inputs, text, return_query_logits, progress) for one in images
        ]
        return results if inputs.batched else results[0]

    def segment_image(
        self,
        image: Tensor,
        inputs: SegmentInputs,
        text: Tensor,
        return_query_logits: bool,
        progress: bool | None,
    ) -> Segmentation:
        """One checked (3, H, W) image -> its ``Segmentation`` (see ``forward``)."""
        logits = self.query_logits(image, text, inputs.output_size, progress)
        cfg, queries = self.config, inputs.classes.queries
        labels, probs, before = classify_query_logits(
            logits,
            queries.segments(),
            cfg.logit_scale,
            cfg.prob_thd,
            cfg.area_thd,
            inputs.classes.background,
            closing=cfg.faithful,
        )
        return Segmentation(
            labels.cpu(),
            probs.cpu(),
            queries.names,
            labels_before_closing=before.cpu().clone(),  # never aliases labels
            query_logits=logits.cpu() if return_query_logits else None,
            query_names=queries.queries,
            query_class=queries.query_class.clone(),
        )

    def with_config(self, **changes: Any) -> Segmenter:
        """A segmenter sharing this one's model and text caches, with some settings changed."""
        other = Segmenter(
            self.clip,
            self.tokenizer,
            replace(self.config, **changes),
            preset=self.preset,
            model_id=self._model_id,
            mean=self.mean,
            std=self.std,
        )
        other.disk_cache = self.disk_cache
        other._memory_cache = self._memory_cache
        return other
