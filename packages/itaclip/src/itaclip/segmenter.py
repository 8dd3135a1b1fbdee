"""``Segmenter``: ITACLIP on one image (resize, sliding window, variants, PAMR, labels)."""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from common_kernels import tile_grid
from itaclip.auxfile import load_aux_texts
from itaclip.engineering import combine_variant_logits, make_variants, normalize, num_variants
from itaclip.io import to_rgb_tensor
from itaclip.models import ITACLIPEncoderConfig, ITACLIPVisionEncoder
from itaclip.pamr import pamr
from itaclip.postprocess import classify_query_logits
from itaclip.presets import check_preset, dataset_classes
from itaclip.stitching import stitch_windows, window_axis_matrix
from itaclip.text import (
    ClassQueries,
    TextEmbeddingCache,
    embed_texts,
    imagenet_templates,
    mix_auxiliary,
    model_fingerprint,
    parse_classes,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_BATCH, CPU_BATCH = 20, 5  # default images per ViT pass (see SegmenterConfig.batch_size)


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` switch: ``True`` shows a bar, ``False`` hides it,
    ``None`` shows it only when stderr is a terminal (tqdm's ``disable=None``)."""
    return None if progress is None else not progress


@dataclass
class SegmenterConfig:
    """Inference settings; ``SegmenterConfig.from_preset("voc21")`` gives the official ones.

    Args:
        short_side: resize target of the image's short side (``None`` = no resize).
        max_long_side: upper bound of the resized long side.
        crop: sliding-window size.
        stride: sliding-window step, in ``[1, crop]``.
        lam: weight of the first image-engineering category (original, gray, blur).
        img_engineering: encode the five crop variants (original, gray, blur and two flips);
            ``False`` (the official switch off) encodes the original crop only, and ``lam``
            plays no part.
        alpha: weight of the auxiliary text in the query features.
        aux: auxiliary text kind of the preset's dataset, ``"definition"`` or ``"synonym"``.
        logit_scale: softmax temperature over the queries, > 0.
        prob_thd: pixels with a lower max class probability become background; in [0, 1].
        area_thd: area threshold (share of the non-background area) in [0, 1], ``None`` = off.
        pamr: run PAMR on the query logits.
        pamr_iterations: PAMR steps, an integer >= 0.
        pamr_dilations: PAMR neighbourhood dilations.
        pamr_chunk: query channels refined at a time.
        batch_size: images per ViT forward pass; ``batch_size // 5`` crops (x 5 variants) go
            through together, so multiples of 5 fill every pass. ``None``: 20 on a GPU, 5 on
            the CPU (one crop per pass: larger CPU batches spill the caches and ran 15% slower
            on ViT-B/16 here).
        faithful: reproduce the official quirks (gray/blur on normalised crops, 3x3 closing).
        precision: ``"auto"`` (fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        encoder: image-encoder settings (intermediate layers, attention backend).
    """

    short_side: int | None = 336
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 28
    lam: float = 0.75
    img_engineering: bool = True
    alpha: float = 0.15
    aux: str = "definition"
    logit_scale: float = 50.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    pamr: bool = True
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    pamr_chunk: int = 8
    batch_size: int | None = None
    faithful: bool = False
    precision: str = "auto"
    encoder: ITACLIPEncoderConfig | None = None

    def __post_init__(self) -> None:
        for name in ("crop", "stride", "batch_size", "pamr_chunk", "max_long_side"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stride > self.crop:
            raise ValueError(
                f"stride must be in [1, crop] = [1, {self.crop}] (a larger stride leaves pixels "
                f"that no window covers), got {self.stride}"
            )
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side must be >= 1 or None, got {self.short_side}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.logit_scale > 0:  # also rejects NaN
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")
        if not 0.0 <= self.prob_thd <= 1.0:
            raise ValueError(f"prob_thd must be in [0, 1], got {self.prob_thd}")
        if self.area_thd is not None and not 0.0 <= self.area_thd <= 1.0:
            raise ValueError(f"area_thd must be in [0, 1] or None, got {self.area_thd}")
        iterations = self.pamr_iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"pamr_iterations must be an integer >= 0, got {iterations!r}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(
                f"precision must be 'auto', 'fp32', 'fp16' or 'bf16', got {self.precision!r}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SegmenterConfig:
        """The official settings of dataset ``name`` (see ``itaclip.PRESETS``), then overrides."""
        preset = check_preset(name)
        fields = {
            "short_side": preset.short_side,
            "lam": preset.lam,
            "alpha": preset.alpha,
            "aux": preset.aux,
            "logit_scale": preset.logit_scale,
            "prob_thd": preset.prob_thd,
            "area_thd": preset.area_thd,
        }
        return cls(**{**fields, **overrides})


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
        model_name: str = "ViT-B-16-quickgelu",
        pretrained: str | None = "openai",
        preset: str | None = "voc21",
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Segmenter:
        """Load an open_clip model (hub tag, checkpoint file, or ``local-dir:`` folder).

        Args:
            model_name: open_clip architecture name, ``hf-hub:org/repo`` or ``local-dir:PATH``.
            pretrained: weights tag or file for built-in names (ignored with a schema).
            preset: dataset preset for settings and default classes (``None`` = defaults).
            device: where to run.
            cache_dir: text-embedding cache folder (default ``~/.cache/itaclip/text``).
            **overrides: ``SegmenterConfig`` fields replacing the preset's.
        """
        pretrained = pretrained or None
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
        config = (
            SegmenterConfig.from_preset(preset, **overrides)
            if preset
            else SegmenterConfig(**overrides)
        )
        visual_cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        if cache_dir is None:
            cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            cache_dir = cache_dir / "itaclip" / "text"
        hub_weights = model_name.startswith("hf-hub:") or (
            pretrained is not None and ":" not in model_name and not os.path.isfile(pretrained)
        )  # weights fixed by their name; otherwise the cache key is a fingerprint of the weights
        model_id = f"{model_name}|{pretrained}" if hub_weights else None
        return cls(
            model,
            tokenizer,
            config,
            preset=preset,
            model_id=model_id,
            cache_dir=cache_dir,
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
        aux_texts: Sequence[str] | None = None,
        background: int | None = None,
    ) -> tuple[ClassQueries, Tensor]:
        """Parsed classes and their (Q, C) query features (auxiliary texts mixed in).

        Args:
            classes: class names; ``"a,b"`` or ``["a", "b"]`` gives a class two queries.
            aux_texts: one auxiliary text per class, mixed with weight ``config.alpha``; the
                background's may be ``None`` (its queries keep their features anyway).
            background: background class index; its queries keep their original features.
        """
        parsed = parse_classes(classes)
        if background is not None and not 0 <= background < parsed.num_classes:
            raise ValueError(
                f"background must index a class in [0, {parsed.num_classes}), got {background}"
            )
        features = self.embed(parsed.queries)
        if aux_texts is not None:
            if len(aux_texts) != parsed.num_classes:
                raise ValueError(
                    f"aux_texts needs one text per class ({parsed.num_classes}), "
                    f"got {len(aux_texts)}"
                )
            missing = [i for i, text in enumerate(aux_texts) if text is None]
            if any(i != background for i in missing):
                raise ValueError(
                    f"aux_texts may be None only for the background class ({background}), "
                    f"got None for class(es) {[i for i in missing if i != background]}"
                )
            keep = () if background is None else (background,)
            if missing:  # the background: a zero row, never used (its queries are kept)
                given = [text for text in aux_texts if text is not None]
                aux = self.embed(given) if given else features.new_zeros(0, features.shape[1])
                aux = torch.cat(
                    [aux[:background], aux.new_zeros(1, aux.shape[1]), aux[background:]]
                )
            else:
                aux = self.embed(list(aux_texts))
            features = mix_auxiliary(
                features, aux, parsed.query_class.to(self.device), self.config.alpha, keep
            )
        return parsed, features

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
            progress: a tqdm bar over the sliding windows (``None``: only when stderr is a
                terminal; the bar is removed when the image is done).

        Returns:
            (Q, H_out, W_out) fp32 logits (PAMR-refined when ``config.pamr``).
        """
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
        grid = None
        bar = tqdm(
            total=len(tiles), desc="windows", unit="window", leave=False,
            disable=progress_disabled(progress),
        )  # fmt: skip
        for start in range(0, len(tiles), per_step):
            group = tiles[start : start + per_step]
            crops = torch.stack([resized[(slice(None), *t.slices)] for t in group])  # (n, 3, h, w)
            windows = self.crop_logits(crops, text)  # (n, Q, th, tw)
            token_h, token_w = windows.shape[-2:]
            if grid is None:  # (Q, window rows, th, window cols, tw)
                grid = windows.new_zeros(text.shape[0], len(tops), token_h, len(lefts), token_w)
            for index, window in enumerate(windows, start=start):
                row, col = divmod(index, len(lefts))  # tiles are row-major
                grid[:, row, :, col] = window
            bar.update(len(group))
        bar.close()
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

    def resolve_classes(self, classes, aux_texts, background):
        """Explicit classes, or the preset dataset's classes, aux texts and background."""
        if classes is not None:
            return classes, aux_texts, background
        if self.preset is None:
            raise ValueError("classes are required (this Segmenter has no dataset preset)")
        data = dataset_classes(self.preset)
        return list(data.queries), list(data.aux_texts(self.config.aux)), data.background

    def forward(
        self,
        image: Any,
        classes: Sequence[str | Sequence[str]] | None = None,
        aux_texts: Sequence[str | None] | None = None,
        background: int | None = None,
        *,
        aux_file: str | os.PathLike | None = None,
        check_aux_names: bool = True,
        output_size: Sequence[int] | None = None,
        return_query_logits: bool = False,
        progress: bool | None = False,
    ) -> Segmentation:
        """Segment one image.

        Args:
            image: PIL image, (H, W[, C]) array (uint8/uint16/float) or (3, H, W) float tensor.
            classes: class names (``"cat"``, ``"person,man"``); ``None`` = the preset's.
            aux_texts: one auxiliary text per class (definition or synonym), optional.
            background: index of the background class (enables the thresholds), optional.
            aux_file: auxiliary texts from a file in the official format (``name >=text``
                lines, one per non-background class, in class order; see
                ``itaclip.auxfile``); replaces ``aux_texts``.
            check_aux_names: require each ``aux_file`` line's name to be one of its class's
                names (case-insensitive).
            output_size: (H_out, W_out) of the labels, probabilities and logits
                (mmsegmentation's ``ori_shape``; see ``query_logits``); ``None`` = the input's.
            return_query_logits: also return the (Q, H_out, W_out) query logits.
            progress: a tqdm bar over the sliding windows (``None``: only when stderr is a
                terminal).

        Returns:
            ``Segmentation`` with (H, W) labels, labels before the closing and (C, H, W)
            probabilities (and the query logits when asked).
        """
        if aux_file is not None and aux_texts is not None:
            raise ValueError("pass aux_texts or aux_file, not both")
        classes, aux_texts, background = self.resolve_classes(classes, aux_texts, background)
        if aux_file is not None:
            aux_texts = load_aux_texts(aux_file, classes, background, check_aux_names)
        parsed, text = self.text_features(classes, aux_texts, background)
        logits = self.query_logits(to_rgb_tensor(image), text, output_size, progress)
        cfg = self.config
        labels, probs, before = classify_query_logits(
            logits,
            parsed.segments(),
            cfg.logit_scale,
            cfg.prob_thd,
            cfg.area_thd,
            background,
            closing=cfg.faithful,
        )
        return Segmentation(
            labels.cpu(),
            probs.cpu(),
            parsed.names,
            labels_before_closing=before.cpu().clone(),  # never aliases labels
            query_logits=logits.cpu() if return_query_logits else None,
            query_names=parsed.queries,
            query_class=parsed.query_class.clone(),
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
