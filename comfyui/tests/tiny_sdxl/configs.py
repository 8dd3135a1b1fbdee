"""A tiny SDXL that ComfyUI's own loaders take: the same layout as SDXL base (a three-level UNet
with cross-attention at the lowest level and ``text_time`` micro-conditioning on 256-wide Fourier
features, two CLIP text encoders, the second with a projection, and SDXL's VAE), far fewer
channels in the UNet and the text encoders. ComfyUI's GroupNorms have 32 groups, so the UNet's
widths are multiples of 32; its VAE is SDXL's full-size one (ComfyUI fixes its widths)."""

from __future__ import annotations

from pixelsmith.tiny import TINY_UNET_CONFIG, TINY_VAE_CONFIG

TEXT_WIDTH = 32  # each text encoder's width; the UNet's context is both, concatenated
TEXT = {"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 2, "projection_dim": TEXT_WIDTH}  # fmt: skip
TIME_FEATURES = 256  # SDXL's width per micro-conditioning number (ComfyUI's is fixed)
HEADS = 2

# pixelsmith's tiny SDXL UNet (the layout of SDXL base), at widths ComfyUI's UNet can build
UNET = {
    **TINY_UNET_CONFIG,
    "block_out_channels": (32, 32, 64),
    "attention_head_dim": (HEADS, HEADS, HEADS),  # diffusers' name for SDXL's head counts
    "cross_attention_dim": 2 * TEXT_WIDTH,
    "addition_time_embed_dim": TIME_FEATURES,
    "projection_class_embeddings_input_dim": TEXT_WIDTH + 6 * TIME_FEATURES,
    "norm_num_groups": 32,
}
# the same UNet as ComfyUI's UNetModel describes it (for its diffusers key map and detection)
COMFY_UNET = {
    "model_channels": 32,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 2],
    "transformer_depth": [0, 0, 1],
    "transformer_depth_output": [0, 0, 0, 0, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 2 * TEXT_WIDTH,
    "adm_in_channels": TEXT_WIDTH + 6 * TIME_FEATURES,
    "use_linear_in_transformer": True,
}
# pixelsmith's tiny VAE at SDXL base's widths (ComfyUI builds the VAE at those)
VAE = {**TINY_VAE_CONFIG, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
       "norm_num_groups": 32, "mid_block_add_attention": True}  # fmt: skip
