"""diffeat: every diffusion U-Net activation as a discriminative feature.

Hook-based extraction on stock diffusers (SD 1.5/2.1, SDXL, Playground v2 U-Nets; PixArt-Sigma,
FLUX.1 and SD3/SD3.5 transformers) with early exit, LoRA and ControlNet,
the paper's presets, property probes, a PCA visualiser and task heads (Meng et al., NeurIPS 2024,
"Not All Diffusion Model Activations Have Been Evaluated as Discriminative Features").
"""

from diffeat.aggregation import aggregate
from diffeat.capture import ActivationRecorder, MissingActivationsError
from diffeat.catalogue import (
    LayerInfo,
    LayerSpec,
    attention_map_view,
    build_catalogue,
    expected_catalogue_size,
)
from diffeat.deepfloyd import IFFeatureExtractor
from diffeat.dit import DiTFeatureExtractor
from diffeat.ensemble import MultiModelExtractor
from diffeat.extractor import VAE_OUT, ExtractorConfig, FeatureExtractor
from diffeat.features import Features
from diffeat.generation import GeneratedFeatures, generate_with_features
from diffeat.hunyuan import HunyuanDiTFeatureExtractor, HunyuanPromptEmbeddings
from diffeat.listing import list_layers
from diffeat.mmdit import FluxFeatureExtractor, SD3FeatureExtractor
from diffeat.presets import ENSEMBLES, PRESETS, EnsembleMember, Preset
from diffeat.prompts import PromptEmbeddings
from diffeat.shapes import layer_infos

__version__ = "0.4.8"

__all__ = [
    "ENSEMBLES",
    "PRESETS",
    "VAE_OUT",
    "ActivationRecorder",
    "DiTFeatureExtractor",
    "EnsembleMember",
    "ExtractorConfig",
    "FeatureExtractor",
    "Features",
    "FluxFeatureExtractor",
    "GeneratedFeatures",
    "HunyuanDiTFeatureExtractor",
    "HunyuanPromptEmbeddings",
    "IFFeatureExtractor",
    "LayerInfo",
    "LayerSpec",
    "MissingActivationsError",
    "MultiModelExtractor",
    "Preset",
    "PromptEmbeddings",
    "SD3FeatureExtractor",
    "__version__",
    "aggregate",
    "attention_map_view",
    "build_catalogue",
    "expected_catalogue_size",
    "generate_with_features",
    "layer_infos",
    "list_layers",
]
