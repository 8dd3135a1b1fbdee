"""common-kernels: KNN graphs, KNN-sparse attention, FFT-guided fusion and tiling.

The kernels' public API is this module's names. ``common_kernels.runtime`` holds the plumbing the
method packages share (files, errors, CLI, hub, progress, Lightning callbacks, test helpers).
"""

from common_kernels._checks import value_checks, values_checked
from common_kernels._cpu_kernels import status as cpu_kernels_status
from common_kernels.attention import (
    KNNAttention,
    can_run,
    knn_attention,
    knn_attention_packed,
    select_backend,
)
from common_kernels.dictionary import KNNDictionary
from common_kernels.fft_fusion import fft_phase_fusion
from common_kernels.fused import add_layer_norm_, bias_gelu_
from common_kernels.graph import knn_dictionary, knn_graph, knn_mask
from common_kernels.tiling import OverlapAccumulator, Tile, blend_weights, tile_grid, tiled_apply
from common_kernels.windows import window_partition, window_reverse

__version__ = "0.4.17"

__all__ = [
    "KNNAttention",
    "KNNDictionary",
    "OverlapAccumulator",
    "Tile",
    "__version__",
    "add_layer_norm_",
    "bias_gelu_",
    "blend_weights",
    "can_run",
    "cpu_kernels_status",
    "fft_phase_fusion",
    "knn_attention",
    "knn_attention_packed",
    "knn_dictionary",
    "knn_graph",
    "knn_mask",
    "select_backend",
    "tile_grid",
    "tiled_apply",
    "value_checks",
    "values_checked",
    "window_partition",
    "window_reverse",
]
