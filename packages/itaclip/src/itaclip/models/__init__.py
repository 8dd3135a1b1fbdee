"""Model wrappers: the ITACLIP image encoder around an open_clip ViT tower."""

from itaclip.models.itaclip_vit import (
    ITACLIPEncoderConfig,
    ITACLIPVisionEncoder,
    default_mid_layers,
    fused_attention_output,
    interpolate_pos_embed,
    self_self_attention_map,
)

__all__ = [
    "ITACLIPEncoderConfig",
    "ITACLIPVisionEncoder",
    "default_mid_layers",
    "fused_attention_output",
    "interpolate_pos_embed",
    "self_self_attention_map",
]
