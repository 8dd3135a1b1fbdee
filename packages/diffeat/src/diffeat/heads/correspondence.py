"""Semantic correspondence: cosine nearest neighbour, the trained 3x3 conv head, PCK@alpha.

Coordinates are pixel coordinates ``(x, y)`` of the original image with pixel centres at
integers; a feature map of size (h, w) covers the whole image, cell ``(i, j)`` centred at
``((j + 0.5) W / w - 0.5, (i + 0.5) H / h - 0.5)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from common_kernels.runtime.files import AtomicSavePretrained
from diffeat.aggregation import resize_feature
from diffeat.features import check_not_empty


def points_to_grid(points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, 2) pixel ``(x, y)`` -> ``grid_sample`` coordinates in [-1, 1] (align_corners=False)."""
    height, width = image_size
    scale = torch.tensor([width, height], dtype=torch.float32, device=points.device)
    return (points.float() + 0.5) / scale * 2 - 1


def sample_at(feature: Tensor, points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bilinear feature vectors at keypoints.

    Args:
        feature: (C, h, w) covering the whole image.
        points: (N, 2) pixel ``(x, y)``.
        image_size: the image's (H, W).

    Returns:
        (N, C).
    """
    check_not_empty(feature, "feature")
    grid = points_to_grid(points, image_size).to(feature.device)[None, None]  # (1, 1, N, 2)
    values = F.grid_sample(
        feature[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (1, C, 1, N)
    return values[0, :, 0].T  # (N, C)


def match_keypoints(
    src_feature: Tensor,
    tgt_feature: Tensor,
    src_points: Tensor,
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
    upsample: tuple[int, int] | None = None,
) -> Tensor:
    """Zero-shot (DIFT-style) cosine nearest neighbour of each source keypoint in the target.

    Args:
        src_feature: (C, h, w) source features.
        tgt_feature: (C, h', w') target features.
        src_points: (N, 2) source keypoints ``(x, y)``.
        src_size: source image (H, W).
        tgt_size: target image (H, W).
        upsample: upsample the target features (bilinear) to this size before matching
            (e.g. the image size for sub-cell precision); None matches on the feature grid.

    Returns:
        (N, 2) predicted target keypoints ``(x, y)`` (cell centres).
    """
    check_not_empty(src_feature, "src_feature")
    check_not_empty(tgt_feature, "tgt_feature")
    queries = F.normalize(sample_at(src_feature, src_points, src_size), dim=1)  # (N, C)
    target = tgt_feature[None].float()
    if upsample is not None:
        target = resize_feature(target, upsample, "bilinear")
    _, channels, height, width = target.shape
    keys = F.normalize(target[0].reshape(channels, height * width), dim=0)  # (C, h'w')
    best = (queries @ keys).argmax(1)  # (N,)
    rows, cols = best // width, best % width
    tgt_h, tgt_w = tgt_size
    x = (cols.double() + 0.5) * tgt_w / width - 0.5
    y = (rows.double() + 0.5) * tgt_h / height - 0.5
    return torch.stack([x, y], dim=1).float()


def pck_threshold(
    alpha: float,
    image_size: tuple[int, int] | None = None,
    bbox: Sequence[float] | Tensor | None = None,
) -> float:
    """``alpha * max(H, W)`` of the image, or ``alpha * max(w, h)`` of an (x1, y1, x2, y2) box."""
    if (image_size is None) == (bbox is None):
        raise ValueError("pass exactly one of image_size and bbox")
    if not alpha > 0:
        raise ValueError(f"alpha: must be positive; got {alpha}")
    if bbox is not None:
        x1, y1, x2, y2 = (float(v) for v in bbox)
        return alpha * max(x2 - x1, y2 - y1)
    return alpha * max(image_size)


def pck(pred: Tensor, gt: Tensor, threshold: float) -> Tensor:
    """Per-keypoint correctness: ``||pred - gt|| <= threshold`` -> (N,) bool."""
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(
            f"pred/gt: expected matching (N, 2); got {tuple(pred.shape)}, {tuple(gt.shape)}"
        )
    return (pred.double() - gt.double()).norm(dim=1) <= threshold


class PCKMeter:
    """Accumulates PCK@alpha by image size and by bounding box, per point and per pair.

    Args:
        alphas: thresholds (SPair: 0.1; also 0.05, 0.01 are common).
    """

    def __init__(self, alphas: Sequence[float] = (0.1,)):
        self.alphas = tuple(alphas)
        self.reset()

    def reset(self) -> None:
        self.correct = {(a, kind): 0 for a in self.alphas for kind in ("image", "bbox")}
        self.pair_scores = {(a, kind): [] for a in self.alphas for kind in ("image", "bbox")}
        self.points = {"image": 0, "bbox": 0}  # pairs without a box count only for "image"

    def update(
        self,
        pred: Tensor,
        gt: Tensor,
        image_size: tuple[int, int],
        bbox: Sequence[float] | Tensor | None = None,
    ) -> None:
        """Add one pair: predicted and true target keypoints, the target image size and box."""
        if len(gt) == 0:
            return
        self.points["image"] += len(gt)
        if bbox is not None:
            self.points["bbox"] += len(gt)
        for alpha in self.alphas:
            kinds = {"image": pck_threshold(alpha, image_size=image_size)}
            if bbox is not None:
                kinds["bbox"] = pck_threshold(alpha, bbox=bbox)
            for kind, threshold in kinds.items():
                hits = pck(pred, gt, threshold)
                self.correct[(alpha, kind)] += int(hits.sum())
                self.pair_scores[(alpha, kind)].append(float(hits.double().mean()))

    def compute(self) -> dict[str, float]:
        """``{"pck@A/image", "pck@A/bbox", "pck@A/image/per_pair", ...}`` in percent."""
        out = {}
        for (alpha, kind), correct in self.correct.items():
            scores = self.pair_scores[(alpha, kind)]
            if not scores:
                continue
            out[f"pck@{alpha:g}/{kind}"] = 100.0 * correct / self.points[kind]
            out[f"pck@{alpha:g}/{kind}/per_pair"] = 100.0 * sum(scores) / len(scores)
        return out


class ConvAggregationHead(nn.Module, AtomicSavePretrained, PyTorchModelHubMixin):
    """A 3x3 convolution that mixes concatenated, resized activations into one descriptor.

    Args:
        in_channels: channels of the concatenated features (e.g. 3840 for Ours-XL).
        out_channels: descriptor width.
        kernel_size: odd kernel size (paper: 3).
    """

    def __init__(self, in_channels: int, out_channels: int = 768, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: must be odd; got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w)."""
        return self.conv(features.to(self.conv.weight.dtype))


def symmetric_keypoint_loss(
    src_feature: Tensor,
    tgt_feature: Tensor,
    src_points: Tensor,
    tgt_points: Tensor,
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
    logit_scale: float = 1 / 0.07,
) -> Tensor:
    """CLIP-style symmetric cross-entropy between corresponding keypoint descriptors.

    Keypoint ``i`` of the source should be most similar to keypoint ``i`` of the target among
    all target keypoints of the pair, and vice versa.

    Args:
        src_feature: (C, h, w) head output for the source image.
        tgt_feature: (C, h', w') for the target image.
        src_points: (N, 2) source keypoints; tgt_points: (N, 2) their correspondences.
        src_size: source (H, W); tgt_size: target (H, W).
        logit_scale: inverse temperature (paper: 1 / 0.07).
    """
    src = F.normalize(sample_at(src_feature, src_points, src_size), dim=1)  # (N, C)
    tgt = F.normalize(sample_at(tgt_feature, tgt_points, tgt_size), dim=1)  # (N, C)
    logits = logit_scale * src @ tgt.T  # (N, N)
    labels = torch.arange(len(src), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class CorrespondenceModule(L.LightningModule):
    """Lightning training of :class:`ConvAggregationHead` on keypoint pairs.

    Batches are lists of pair dicts with ``src_features``/``tgt_features`` (C, h, w; resized,
    concatenated activations), ``src_kps``/``tgt_kps`` (N, 2) and ``src_size``/``tgt_size``
    (H, W); validation pairs may carry ``tgt_bbox``. Validation logs ``val/pck@A/image`` and
    ``val/pck@A/bbox``: select the checkpoint on the validation split and report the test split
    (the official code reported the best score seen on the evaluation split).

    Args:
        in_channels: channels of the input features.
        out_channels: descriptor width.
        lr: AdamW learning rate (paper: 5e-4).
        weight_decay: AdamW weight decay.
        logit_scale: inverse temperature of the loss (paper: 1 / 0.07).
        alphas: PCK thresholds logged in validation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 768,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        logit_scale: float = 1 / 0.07,
        alphas: Sequence[float] = (0.1,),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.head = ConvAggregationHead(in_channels, out_channels)
        self.meter = PCKMeter(alphas)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)

    def _pair_loss(self, pair: Mapping) -> Tensor:
        src = self.head(pair["src_features"][None])[0]
        tgt = self.head(pair["tgt_features"][None])[0]
        return symmetric_keypoint_loss(
            src,
            tgt,
            pair["src_kps"],
            pair["tgt_kps"],
            tuple(pair["src_size"]),
            tuple(pair["tgt_size"]),
            self.hparams.logit_scale,
        )

    def training_step(self, batch: Sequence[Mapping], batch_idx: int) -> Tensor:
        loss = torch.stack([self._pair_loss(pair) for pair in batch]).mean()
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[Mapping], batch_idx: int) -> None:
        for pair in batch:
            pred = match_keypoints(
                self.head(pair["src_features"][None])[0],
                self.head(pair["tgt_features"][None])[0],
                pair["src_kps"],
                tuple(pair["src_size"]),
                tuple(pair["tgt_size"]),
            )
            self.meter.update(
                pred.cpu(), pair["tgt_kps"].cpu(), tuple(pair["tgt_size"]), pair.get("tgt_bbox")
            )

    def on_validation_epoch_start(self) -> None:
        self.meter.reset()

    def on_validation_epoch_end(self) -> None:
        for name, value in self.meter.compute().items():
            self.log(f"val/{name}", value)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def collate_pairs(pairs: Sequence[Mapping]) -> list[Mapping]:
    """DataLoader ``collate_fn`` keeping pairs as a list (keypoint counts differ)."""
    return list(pairs)


def image_descriptors(
    extractor,
    images,
    prompts: str | Sequence[str] = "",
    size: int | tuple[int, int] = 128,
    normalize: bool = False,
) -> Tensor:
    """Extractor features resized to ``size`` and concatenated: (B, sum C, size, size).

    Args:
        extractor: a :class:`~diffeat.FeatureExtractor` (or anything returning a feature dict).
        images: as for the extractor.
        prompts: prompt(s), e.g. ``"a photo of a horse"``.
        size: descriptor grid size (paper: 128).
        normalize: L2-normalise every activation over channels before concatenating.
    """
    from diffeat.aggregation import aggregate

    return aggregate(extractor(images, prompts), size=size, normalize=normalize).float()


@torch.no_grad()
def evaluate_pairs(
    extractor,
    pairs,
    size: int | tuple[int, int] = 128,
    prompt: str = "a photo of a {category}",
    head: nn.Module | None = None,
    alphas: Sequence[float] = (0.1,),
    upsample: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """PCK of zero-shot (or head-refined) nearest-neighbour matching over keypoint pairs.

    Args:
        extractor: feature extractor.
        pairs: iterable of pair dicts (:class:`~diffeat.data.SPairDataset` items): images,
            ``src_kps``, ``tgt_kps``, sizes, ``tgt_bbox`` and ``category``.
        size: descriptor grid size.
        prompt: prompt template (``{category}`` is filled in).
        head: optional trained :class:`ConvAggregationHead`.
        alphas: PCK thresholds.
        upsample: match on target features upsampled to this size.
        progress: show a bar on a terminal, plain lines every 10 s in a log.
    """
    from common_kernels.runtime.progress import progress as progress_of

    meter = PCKMeter(alphas)
    for pair in progress_of(
        pairs, desc="diffeat correspondence", unit="pairs", disable=not progress
    ):
        text = prompt.format(category=pair.get("category", "object"))
        descriptors = image_descriptors(
            extractor, [pair["src_image"], pair["tgt_image"]], text, size
        )
        if head is not None:
            descriptors = head(descriptors)
        pred = match_keypoints(
            descriptors[0],
            descriptors[1],
            pair["src_kps"],
            tuple(pair["src_size"]),
            tuple(pair["tgt_size"]),
            upsample,
        )
        meter.update(pred.cpu(), pair["tgt_kps"], tuple(pair["tgt_size"]), pair.get("tgt_bbox"))
    return meter.compute()
