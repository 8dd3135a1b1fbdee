"""U-Net configurations: the published SD 1.5 / SD 2.1 / SDXL ones and tiny test-sized ones.

The published values are the ``unet/config.json`` of the hub repositories (Playground v2 uses
the SDXL U-Net architecture). They let the catalogue, its shapes and the benchmarks be built
without downloading weights (on the ``meta`` device or with random weights). The tiny configs
keep the *topology* of SD 1.5 and SDXL (so every paper preset name exists) with a few channels.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from common_kernels.runtime.errors import InvalidValue, shown
from diffeat.errors import check_int_range

SEED_MAX = 2**64 - 1  # the range of torch.Generator.manual_seed: [0, 2**64 - 1]
# the model_index.json entry of a folder of random weights (``diffeat tiny-model``, ``pixelsmith
# tiny-model``): {"writer": the command, "seed": its seed}; pages say that such a model is random
RANDOM_WEIGHTS = "_random_weights"

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

SD21_UNET: dict[str, Any] = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}

# SDXL shares the rest of its values with SD 1.5 (same U-Net family)
SDXL_UNET: dict[str, Any] = {
    **SD15_UNET,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

TINY_SD15_UNET: dict[str, Any] = {
    **SD15_UNET,
    "attention_head_dim": 2,
    "block_out_channels": [8, 16, 16, 16],
    "cross_attention_dim": 16,
    "norm_num_groups": 4,
    "sample_size": 8,
}

TINY_SDXL_UNET: dict[str, Any] = {
    **SDXL_UNET,
    "addition_embed_type_num_heads": 2,
    "addition_time_embed_dim": 4,
    "attention_head_dim": [2, 2, 4],
    "block_out_channels": [8, 16, 16],
    "cross_attention_dim": 32,  # two 16-wide text encoders, concatenated
    "norm_num_groups": 4,
    "projection_class_embeddings_input_dim": 6 * 4 + 16,  # 6 time ids x 4 + pooled text (16)
    "sample_size": 16,
}

# PixArt-Sigma XL-2 1024-MS ``transformer/config.json`` (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS):
# 28 blocks of width 1152 (16 heads x 72), patch 2, T5-XXL captions (4096 wide).
PIXART_SIGMA_TRANSFORMER: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_type": "default",
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "dropout": 0.0,
    "in_channels": 4,
    "interpolation_scale": 2,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 128,
    "upcast_attention": False,
    "use_additional_conditions": False,
}

TINY_PIXART_TRANSFORMER: dict[str, Any] = {
    **PIXART_SIGMA_TRANSFORMER,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "caption_channels": 16,
    "cross_attention_dim": 16,
    "interpolation_scale": 1,
    "sample_size": 8,
}

# FLUX.1-dev ``transformer/config.json`` (black-forest-labs/FLUX.1-dev): 19 double-stream and 38
# single-stream blocks of width 3072 (24 heads x 128), 2x2-packed 16-channel latents (64 in),
# T5-XXL tokens (4096 wide), CLIP-L pooled text (768), the guidance embedding of -dev.
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

# Stable Diffusion 3.5 Medium ``transformer/config.json`` (stabilityai/stable-diffusion-3.5-medium):
# 24 joint blocks of width 1536 (24 heads x 64), the first 13 with a second (image-only)
# attention, RMS qk-norm, patch 2 on 16-channel latents, CLIP-L + CLIP-G + T5-XXL text.
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "_class_name": "SD3Transformer2DModel",
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}

# the tiny ones keep the topology (block counts, dual attention, qk-norm, packing, patch) with a
# few channels: width 16 (2 heads x 8); FLUX's rotary axes must add up to the head width
TINY_FLUX_TRANSFORMER: dict[str, Any] = {
    **FLUX_DEV_TRANSFORMER,
    "attention_head_dim": 8,
    "axes_dims_rope": [2, 2, 4],
    "in_channels": 16,  # the tiny VAE's 4 latent channels, packed 2x2
    "joint_attention_dim": 16,  # TINY_T5's width
    "num_attention_heads": 2,
    "pooled_projection_dim": 16,  # the tiny CLIP's width
}

TINY_SD3_TRANSFORMER: dict[str, Any] = {
    **SD35_MEDIUM_TRANSFORMER,
    "attention_head_dim": 8,
    "caption_projection_dim": 16,
    "in_channels": 4,
    "joint_attention_dim": 32,  # T5 width: at least the two CLIPs' 16 + 16 (padded to it)
    "num_attention_heads": 2,
    "out_channels": 4,
    "pooled_projection_dim": 32,  # the two CLIPs' pooled 16 + 16
    "pos_embed_max_size": 32,
    "sample_size": 8,
}

# PixArt-alpha XL-2 1024-MS (PixArt-alpha/PixArt-XL-2-1024-MS): PixArt-Sigma's blocks; its config
# leaves use_additional_conditions unset, so diffusers turns the micro-conditions (resolution,
# aspect ratio) on for its sample_size 128, as PixArtAlphaPipeline passes them. Its T5 prompts
# are 120 tokens (ALPHA_TOKENS).
PIXART_ALPHA_TRANSFORMER: dict[str, Any] = {
    k: v for k, v in PIXART_SIGMA_TRANSFORMER.items() if k != "use_additional_conditions"
}
TINY_PIXART_ALPHA_TRANSFORMER: dict[str, Any] = {
    **{k: v for k, v in TINY_PIXART_TRANSFORMER.items() if k != "use_additional_conditions"},
    "sample_size": 128,  # micro-conditions on, as for the 1024-MS model
    "attention_head_dim": 12,  # width 24: the size embedding splits it in thirds (1152 = 3 x 384)
    "cross_attention_dim": 24,
}
# PixArt-alpha XL-2 512x512 (PixArt-alpha/PixArt-XL-2-512x512): the same blocks at sample_size 64,
# where diffusers leaves the micro-conditions off and the position embedding's interpolation
# scale at 1 (sample_size // 64; both unset in its config).
PIXART_ALPHA_512_TRANSFORMER: dict[str, Any] = {
    **{k: v for k, v in PIXART_ALPHA_TRANSFORMER.items() if k != "interpolation_scale"},
    "sample_size": 64,
}
TINY_PIXART_ALPHA_512_TRANSFORMER: dict[str, Any] = {
    **{k: v for k, v in TINY_PIXART_ALPHA_TRANSFORMER.items() if k != "interpolation_scale"},
    "sample_size": 64,
}
ALPHA_TOKENS = 120  # PixArtAlphaPipeline's max_sequence_length

DIT_CONFIGS: dict[str, dict[str, Any]] = {
    "pixart-sigma": PIXART_SIGMA_TRANSFORMER,
    "tiny-pixart-sigma": TINY_PIXART_TRANSFORMER,
    "pixart-alpha-1024": PIXART_ALPHA_TRANSFORMER,
    "tiny-pixart-alpha": TINY_PIXART_ALPHA_TRANSFORMER,
    "pixart-alpha-512": PIXART_ALPHA_512_TRANSFORMER,
    "tiny-pixart-alpha-512": TINY_PIXART_ALPHA_512_TRANSFORMER,
    "flux-dev": FLUX_DEV_TRANSFORMER,
    "tiny-flux": TINY_FLUX_TRANSFORMER,
    "sd3.5-medium": SD35_MEDIUM_TRANSFORMER,
    "tiny-sd3": TINY_SD3_TRANSFORMER,
}

# The flow-matching schedulers of FLUX.1-dev and SD3.5 (diffeat noises at an exact sigma and
# uses neither shift; they are kept so a saved model reads like the hub's).
FLUX_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
SD3_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}

# PixArt-Sigma's scheduler (DPM-Solver++ on the linear beta schedule of DiT/PixArt training).
PIXART_SCHEDULER: dict[str, Any] = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}

TINY_T5: dict[str, Any] = {
    "vocab_size": 514,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 2,
    "num_heads": 2,
    "pad_token_id": 1,
    "eos_token_id": 1,
}

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": SD15_UNET,
    "sd21": SD21_UNET,
    "sdxl": SDXL_UNET,
    "playground-v2": SDXL_UNET,
    "tiny-sd15": TINY_SD15_UNET,
    "tiny-sdxl": TINY_SDXL_UNET,
}

# Default scheduler configurations of the hub repositories (PNDM for SD 1.5, Euler for SDXL).
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

TINY_VAE: dict[str, Any] = {
    "block_out_channels": [8, 8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}

TINY_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 16,
    "projection_dim": 16,
    "vocab_size": 514,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}

KINDS = ("sd15", "sdxl")
# what save_tiny_model writes: the U-Nets, PixArt-Sigma, FLUX.1-dev, SD3.5-Medium shapes, and
# small HunyuanDiT and DeepFloyd IF stage I models (their topology, fewer blocks and levels)
TINY_MODEL_KINDS = (*KINDS, "pixart", "pixart-alpha", "pixart-alpha-512", "flux", "sd3", "hunyuan",
                    "if")  # fmt: skip

# 4 blocks: the fewest with a long skip (block 3 takes block 0's output); 8 + 12 text tokens
TINY_HUNYUAN_TRANSFORMER: dict[str, Any] = {
    "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "patch_size": 2,
    "sample_size": 8, "hidden_size": 16, "num_layers": 4, "cross_attention_dim": 16,
    "cross_attention_dim_t5": 16, "pooled_projection_dim": 16, "text_len": 8, "text_len_t5": 12,
}  # fmt: skip
# IF-I's blocks (resnet samplers, attention over text and pixels in one softmax, T5 through
# encoder_hid_dim, noise + learned variance out) on two levels at 32 px
TINY_IF_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 6, "layers_per_block": 1,
    "block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 8,
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "cross_attention_dim": 16,
    "encoder_hid_dim": 16, "addition_embed_type": "text", "addition_embed_type_num_heads": 2,
    "resnet_time_scale_shift": "scale_shift", "resnet_skip_time_act": True,
    "time_embedding_act_fn": "gelu",
}  # fmt: skip


def unet_config(name: str) -> dict[str, Any]:
    """A deep copy of a named U-Net configuration.

    Args:
        name: one of ``UNET_CONFIGS`` (``sd15``, ``sd21``, ``sdxl``, ``playground-v2``,
            ``tiny-sd15``, ``tiny-sdxl``) or of ``DIT_CONFIGS`` (``pixart-sigma``,
            ``tiny-pixart-sigma``: transformer configs).
    """
    every = {**UNET_CONFIGS, **DIT_CONFIGS}
    if name not in every:
        raise ValueError(f"config: unknown name {name!r}; choose one of {sorted(every)}")
    return copy.deepcopy(every[name])


def tiny_tokenizer(max_length: int = 16):
    """A byte-level CLIP tokenizer with a 514-token vocabulary (no merges), built offline.

    Args:
        max_length: ``model_max_length`` (the padded prompt length).
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _seeded_tiny_vae(seed: int, **latent_scaling: float):
    """``torch.manual_seed(seed)``, then the tiny ``AutoencoderKL`` (the first random weights
    drawn) with its family's latent scaling (``scaling_factor``, ``shift_factor``)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE)
    vae.register_to_config(**latent_scaling)
    return vae


def tiny_pipeline(kind: str, seed: int = 0):
    """A randomly initialised, tiny diffusers pipeline with the topology of SD 1.5 or SDXL.

    Args:
        kind: ``"sd15"`` (one text encoder, PNDM) or ``"sdxl"`` (two text encoders, Euler,
            text-time added conditioning).
        seed: ``torch.manual_seed`` before building the random weights.

    Returns:
        A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (``save_pretrained`` it
        to get a folder that ``FeatureExtractor.from_pretrained`` and the CLI load).
    """
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {KINDS}; got {kind!r}")
    text_config = CLIPTextConfig(**TINY_TEXT_ENCODER)
    vae = _seeded_tiny_vae(seed, scaling_factor=0.18215 if kind == "sd15" else 0.13025)
    if kind == "sd15":
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text_config).eval(),
            tokenizer=tiny_tokenizer(),
            unet=UNet2DConditionModel(**TINY_SD15_UNET),
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config).eval(),
        text_encoder_2=CLIPTextModelWithProjection(text_config).eval(),
        tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(),
        unet=UNet2DConditionModel(**TINY_SDXL_UNET),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
    )


def tiny_pixart_pipeline(
    seed: int = 0, max_length: int = 24, alpha: bool = False, alpha_size: int = 1024
):
    """A randomly initialised, tiny ``PixArtSigmaPipeline`` with PixArt-Sigma's topology (28
    blocks, patch 2, AdaLN-single, 8 output channels), a 2-layer T5 encoder and the byte-level
    tokenizer of :func:`tiny_tokenizer` (padding masked like T5's).

    Args:
        seed: ``torch.manual_seed`` before building the random weights.
        max_length: the tokenizer's ``model_max_length``.
        alpha: a ``PixArtAlphaPipeline`` (PixArt-alpha's configuration) instead.
        alpha_size: the PixArt-alpha model's resolution: 1024 (the 1024-MS model, micro-conditions
            on) or 512 (the 512x512 model: off, position embedding at interpolation scale 1).
    """
    if alpha_size not in (512, 1024):
        raise ValueError(f"alpha_size must be 512 or 1024, got {alpha_size!r}")
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    vae = _seeded_tiny_vae(seed, scaling_factor=0.13025)  # PixArt-Sigma uses the SDXL VAE
    scheduler = DPMSolverMultistepScheduler.from_config(PIXART_SCHEDULER)
    alpha_configs = {1024: TINY_PIXART_ALPHA_TRANSFORMER, 512: TINY_PIXART_ALPHA_512_TRANSFORMER}
    config = alpha_configs[alpha_size] if alpha else TINY_PIXART_TRANSFORMER
    return (PixArtAlphaPipeline if alpha else PixArtSigmaPipeline)(
        tokenizer=tiny_tokenizer(max_length),
        text_encoder=T5EncoderModel(T5Config(**TINY_T5)).eval(),
        vae=vae,
        transformer=PixArtTransformer2DModel(**config),
        scheduler=scheduler,
    )


def tiny_flux_pipeline(seed: int = 0, max_length: int = 24):
    """A randomly initialised, tiny ``FluxPipeline`` with FLUX.1-dev's topology (19 double- and
    38 single-stream blocks, 2x2 packing, the guidance embedding), CLIP + T5 text encoders and
    the byte-level tokenizer of :func:`tiny_tokenizer` for both.

    Args:
        seed: ``torch.manual_seed`` before building the random weights.
        max_length: the T5 tokenizer's ``model_max_length``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    vae = _seeded_tiny_vae(seed, scaling_factor=0.3611, shift_factor=0.1159)  # FLUX's values
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER)).eval(),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=T5EncoderModel(T5Config(**TINY_T5)).eval(),
        tokenizer_2=tiny_tokenizer(max_length),
        transformer=FluxTransformer2DModel.from_config(TINY_FLUX_TRANSFORMER),
    )


def tiny_sd3_pipeline(seed: int = 0, max_length: int = 24):
    """A randomly initialised, tiny ``StableDiffusion3Pipeline`` with SD3.5-Medium's topology (24
    joint blocks, the first 13 with dual attention, RMS qk-norm, patch 2), two CLIP text
    encoders with projections and a T5 (32 wide, the two CLIPs' width).

    Args:
        seed: ``torch.manual_seed`` before building the random weights.
        max_length: the T5 tokenizer's ``model_max_length``.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    vae = _seeded_tiny_vae(seed, scaling_factor=1.5305, shift_factor=0.0609)  # SD3.5's values
    text_config = CLIPTextConfig(**TINY_TEXT_ENCODER)
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel.from_config(TINY_SD3_TRANSFORMER),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(text_config).eval(),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_config).eval(),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=T5EncoderModel(T5Config(**{**TINY_T5, "d_model": 32})).eval(),
        tokenizer_3=tiny_tokenizer(max_length),
    )


def tiny_hunyuan_pipeline(seed: int = 0):
    """A randomly initialised, small ``HunyuanDiTPipeline``: HunyuanDiT's blocks on 4 of them
    (:data:`TINY_HUNYUAN_TRANSFORMER`), a 1-layer BERT (8 tokens) and a T5 (12 tokens) with the
    byte-level tokenizer of :func:`tiny_tokenizer`, and the release's v-prediction DDPM.

    Args:
        seed: ``torch.manual_seed`` before building the random weights.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    bert = BertConfig(vocab_size=514, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03,
                              prediction_type="v_prediction")  # fmt: skip
    return HunyuanDiTPipeline(
        vae=AutoencoderKL(**TINY_VAE), text_encoder=BertModel(bert).eval(),
        tokenizer=tiny_tokenizer(8), transformer=HunyuanDiT2DModel(**TINY_HUNYUAN_TRANSFORMER),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=T5EncoderModel(T5Config(**TINY_T5)).eval(),
        tokenizer_2=tiny_tokenizer(12),
    )  # fmt: skip


def tiny_if_pipeline(seed: int = 0):
    """A randomly initialised, small DeepFloyd IF stage I ``IFPipeline`` (no VAE: pixels): IF's
    U-Net blocks on two levels (:data:`TINY_IF_UNET`, 32 px), a T5 with the byte-level
    tokenizer of :func:`tiny_tokenizer` (77 tokens, as IF's), IF's cosine DDPM with learned
    variance.

    Args:
        seed: ``torch.manual_seed`` before building the random weights.
    """
    import torch
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return IFPipeline(
        unet=UNet2DConditionModel(**TINY_IF_UNET).eval(),
        scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range"),
        tokenizer=tiny_tokenizer(77), text_encoder=T5EncoderModel(T5Config(**TINY_T5)).eval(),
        safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False,
    )  # fmt: skip


TINY_PIPELINES = {
    "pixart": tiny_pixart_pipeline,
    "pixart-alpha": functools.partial(tiny_pixart_pipeline, alpha=True),
    "pixart-alpha-512": functools.partial(tiny_pixart_pipeline, alpha=True, alpha_size=512),
    "flux": tiny_flux_pipeline, "sd3": tiny_sd3_pipeline, "hunyuan": tiny_hunyuan_pipeline,
    "if": tiny_if_pipeline,
}  # fmt: skip


def save_tiny_model(directory: str, kind: str, seed: int = 0) -> None:
    """Write a tiny random diffusers model folder (the denoiser, vae, text encoders, tokenizers,
    scheduler); its ``model_index.json`` says that its weights are random
    (:data:`RANDOM_WEIGHTS`), which ``diffeat app`` shows.

    Args:
        directory: output folder (created; must not hold a model already).
        kind: ``"sd15"``, ``"sdxl"`` (U-Nets), ``"pixart"`` (PixArt-Sigma's transformer),
            ``"pixart-alpha"`` / ``"pixart-alpha-512"`` (PixArt-alpha's, 1024-MS or 512),
            ``"flux"`` (FLUX.1-dev's), ``"sd3"`` (SD3.5-Medium's), ``"hunyuan"`` (HunyuanDiT's
            blocks, 4 of them) or ``"if"`` (DeepFloyd IF stage I's, two levels).
        seed: seed of the random weights, in [0, 2**64 - 1].

    Raises:
        InvalidValue: a folder that holds a model, a seed out of range.
    """
    from pathlib import Path

    from common_kernels.runtime.files import atomic_directory

    check_int_range(seed, "seed", 0, SEED_MAX)
    folder = Path(directory)
    if (folder / "model_index.json").exists():
        raise InvalidValue(
            "directory", f"{shown('directory', folder)} already holds a model (model_index.json)"
        )
    with atomic_directory(folder, make_parents=True) as temp:
        build = TINY_PIPELINES.get(kind)
        pipe = build(seed) if build is not None else tiny_pipeline(kind, seed)
        # a private ("_") entry: diffusers keeps it out of the pipeline's arguments on loading
        writer = {"writer": f"diffeat tiny-model --kind {kind}", "seed": seed}
        pipe.register_to_config(**{RANDOM_WEIGHTS: writer})
        pipe.save_pretrained(temp, safe_serialization=True)
