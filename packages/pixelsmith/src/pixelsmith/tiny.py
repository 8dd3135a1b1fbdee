"""A tiny random SDXL-shaped model (for tests, benchmarks and offline smoke runs).

Same structure as SDXL base, far fewer channels: a UNet with three levels (downsampling 4,
cross-attention at the lowest level only, ``text_time`` micro-conditioning), a VAE with four
levels (scale factor 8, no mid-block attention so gigapixel decodes stay cheap), two CLIP text
encoders (the second with a projection) and byte-level CLIP tokenizers. Its images are noise:
it exists to run the whole machinery without downloading SDXL.

    pixelsmith tiny-model ./tiny-sdxl        # or: save_tiny_model("./tiny-sdxl")
    pixelsmith generate "a cat" --model ./tiny-sdxl --sizes 1024 2048 --slider 3 --steps 4 \
        -o cat.png
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelsmith.config import require_int
from pixelsmith.options import MAX_SEED
from pixelsmith.sources import RANDOM_WEIGHTS

# diffusers and transformers load when a model is built: the seed is checked without them
if TYPE_CHECKING:
    from diffusers import ControlNetModel
    from transformers import CLIPTokenizer

TEXT_WIDTH = 16
TIME_EMBED = 8
TINY_TEXT_CONFIG = {
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": TEXT_WIDTH,
    "hidden_act": "gelu",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
TINY_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (4, 8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": (1, 2, 4),
    "transformer_layers_per_block": 1,
    "cross_attention_dim": 2 * TEXT_WIDTH,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED,
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED + TEXT_WIDTH,
    "norm_num_groups": 4,
}
# an SDXL-shaped ControlNet for the tiny UNet: its encoder half, plus a condition embedding
# that downsamples by 8 (three stride-2 convolutions), as the VAE
TINY_CONTROLNET_CONFIG = {
    **{k: v for k, v in TINY_UNET_CONFIG.items() if k not in ("sample_size", "out_channels")},
    "conditioning_embedding_out_channels": (4, 4, 8, 8),
}
del TINY_CONTROLNET_CONFIG["up_block_types"]
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (4, 4, 4, 4),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
    "mid_block_add_attention": False,
}
# SDXL base's scheduler config (EulerDiscreteScheduler, as on the hub)
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def byte_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final, plus the specials."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return {token: index for index, token in enumerate(tokens)}


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer without merges (514 tokens, 77 positions)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)


def tiny_components(seed: int = 0, tokenizer: CLIPTokenizer | None = None) -> dict:
    """Seeded random components for ``PixelsmithPipeline(**components)``.

    Args:
        seed: torch seed of the weights, in [0, 2**64 - 1].
        tokenizer: CLIP tokenizer for both text encoders (default :func:`tiny_tokenizer`);
            its vocabulary size sets the encoders'. Its end-of-text token must have id 1.

    Raises:
        InvalidValue: (``seed``) out of range, before diffusers is imported.
    """
    require_int("seed", seed, 0, MAX_SEED)
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tokenizer or tiny_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), **TINY_TEXT_CONFIG)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "unet": unet.eval(),
        "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    }


def tiny_controlnet(seed: int = 0) -> ControlNetModel:
    """A seeded ControlNet for the tiny UNet. Its output layers are zero, as in every new
    ControlNet (its residuals are zero until trained); tests randomise them to see it act."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel(**TINY_CONTROLNET_CONFIG).eval()


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SDXL-shaped model folder (diffusers layout) loadable by
    ``PixelsmithPipeline.from_pretrained(directory)``; its ``model_index.json`` says that its
    weights are random (:data:`~pixelsmith.sources.RANDOM_WEIGHTS`), which pages show.

    Args:
        directory: the folder to write.
        seed: torch seed of the weights, in [0, 2**64 - 1].

    Raises:
        InvalidValue: (``seed``) out of range, before anything is built or written.
    """
    components = tiny_components(seed)
    from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline

    directory = Path(directory)
    pipe = PixelsmithPipeline(**components, add_watermarker=False)
    # a private ("_") entry of model_index.json: diffusers keeps it out of the pipeline's
    # arguments when loading
    pipe.register_to_config(**{RANDOM_WEIGHTS: {"writer": "pixelsmith tiny-model", "seed": seed}})
    pipe.save_pretrained(directory)
    return directory
