"""Task heads on diffusion features: correspondence, label-scarce and semantic segmentation."""

from diffeat.heads.correspondence import (
    ConvAggregationHead,
    CorrespondenceModule,
    PCKMeter,
    collate_pairs,
    evaluate_pairs,
    image_descriptors,
    match_keypoints,
    pck,
    pck_threshold,
    sample_at,
    symmetric_keypoint_loss,
)
from diffeat.heads.label_scarce import PixelMLPEnsemble, pixel_training_set
from diffeat.heads.semseg import (
    ResidualAdapter,
    SegmentationFolderDataModule,
    SegmentationHead,
    SegmentationModule,
)

__all__ = [
    "ConvAggregationHead",
    "CorrespondenceModule",
    "PCKMeter",
    "PixelMLPEnsemble",
    "ResidualAdapter",
    "SegmentationFolderDataModule",
    "SegmentationHead",
    "SegmentationModule",
    "collate_pairs",
    "evaluate_pairs",
    "image_descriptors",
    "match_keypoints",
    "pck",
    "pck_threshold",
    "pixel_training_set",
    "sample_at",
    "symmetric_keypoint_loss",
]
