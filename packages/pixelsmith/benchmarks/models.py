"""run.py's benchmark models: the tiny random SDXL-shaped pipeline and SDXL-sized random
components (SDXL's UNet and VAE architectures, 2-layer text encoders of SDXL's widths; no hub
access).

Loaded by path by ``run.py`` and ``parallel.py`` (as ``pixelsmith_bench_models``).
"""

from __future__ import annotations

from common_kernels.runtime.bench import random_weights, torch_dtype

# SDXL base 1.0's unet/config.json (stabilityai/stable-diffusion-xl-base-1.0): 2.567 B parameters
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# SDXL base 1.0's vae/config.json with force_upcast off, as madebyollin/sdxl-vae-fp16-fix (the
# VAE the official code loads): 83.65 M parameters
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# Text encoders with SDXL's widths (CLIP ViT-L/14: 768; OpenCLIP ViT-bigG/14: 1280, pooled
# projection 1280) but 2 layers instead of 12 and 32: the prompt is encoded once per cascade.
TEXT_ENCODER_CONFIGS = (
    {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
     "projection_dim": 1280},
)  # fmt: skip
TEXT_ENCODER_COMMON = {
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}


def tiny_pipeline():
    """The tiny random SDXL-shaped pipeline with SDXL's DDIM scheduler (seed 0)."""
    from pixelsmith import PixelsmithPipeline
    from pixelsmith.pipelines.pixelsmith import ddim_from_config
    from pixelsmith.tiny import tiny_components

    components = tiny_components(seed=0)
    components["scheduler"] = ddim_from_config(components["scheduler"].config)
    pipe = PixelsmithPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_module(cls, config: dict, device: str, dtype: str, seed: int):
    """``cls(**config)`` with random weights, allocated on ``device`` in ``dtype`` directly.

    Built on the meta device, then filled in place: weights ~ N(0, 1/fan_in), norm scales 1,
    biases 0, so activations stay bounded at any depth (no inf in fp16 on random weights).

    Args:
        cls: a diffusers model class without buffers (``UNet2DConditionModel``,
            ``AutoencoderKL``): ``to_empty`` would leave buffers uninitialised.
        config: its constructor arguments.
        device: ``"cpu"``, ``"cuda"`` or ``"meta"`` (shapes only: no memory, no weights).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        seed: seed of the weights (drawn on ``device``).
    """
    import torch

    with torch.device("meta"):
        module = cls(**config)
    if any(True for _ in module.buffers()):
        raise ValueError(f"{cls.__name__} has buffers, which to_empty would leave uninitialised")
    module = torch.nn.Module.to(module, torch_dtype(dtype)).eval()  # ModelMixin.to warns on casts
    return module if device == "meta" else random_weights(module, device, seed)


def sdxl_components(device: str = "cpu", dtype: str = "fp16", seed: int = 0) -> dict:
    """SDXL-sized random components for ``PixelsmithPipeline(**components)`` (no hub access).

    The UNet and the VAE have SDXL's architectures (``SDXL_UNET_CONFIG``, ``SDXL_VAE_CONFIG``);
    the two text encoders have SDXL's widths with 2 layers each (``TEXT_ENCODER_CONFIGS``) and
    share ``pixelsmith.tiny``'s byte-level tokenizer; DDIM from SDXL's scheduler config.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"meta"`` (shapes only, for parameter counts).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        seed: seed of the random weights.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pixelsmith.pipelines.pixelsmith import ddim_from_config
    from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    configs = [
        CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_ENCODER_COMMON, **widths)
        for widths in TEXT_ENCODER_CONFIGS
    ]
    with torch.random.fork_rng(devices=[]), torch.device("meta" if device == "meta" else "cpu"):
        torch.manual_seed(seed)
        encoders = [CLIPTextModel(configs[0]), CLIPTextModelWithProjection(configs[1])]
    encoders = [encoder.to(torch_dtype(dtype)) for encoder in encoders]
    if device != "meta":
        encoders = [encoder.to(device) for encoder in encoders]
    return {
        "unet": random_module(UNet2DConditionModel, SDXL_UNET_CONFIG, device, dtype, seed),
        "vae": random_module(AutoencoderKL, SDXL_VAE_CONFIG, device, dtype, seed + 1),
        "text_encoder": encoders[0].eval(),
        "text_encoder_2": encoders[1].eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": ddim_from_config(dict(SDXL_SCHEDULER_CONFIG)),
    }


def cascade_pipeline(model: str, device: str, dtype: str):
    """The benchmark's pipeline: SDXL-sized random weights (``"sdxl"``) or the tiny model."""
    import torch

    from pixelsmith import PixelsmithPipeline

    if model == "sdxl":
        pipe = PixelsmithPipeline(**sdxl_components(device, dtype), add_watermarker=False)
    else:
        pipe = tiny_pipeline()
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            torch.nn.Module.to(module, device, torch_dtype(dtype))  # ModelMixin.to warns on casts
    pipe.set_progress_bar_config(disable=True)
    return pipe
