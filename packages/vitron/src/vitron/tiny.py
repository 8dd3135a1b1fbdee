"""Tiny random components built from configs: a Vitron model and every specialist it calls.

They make the whole system run end to end without downloading weights (tests, demos, this
repository's CI). Outputs are meaningless: the weights are random. ``vitron tiny-model DIR`` and
``vitron tiny-specialists DIR`` write them to folders; everything is seeded and reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.files import atomic_directory, write_json
from vitron.models.config import RegionConfig, SignalConfig, VisionConfig, VitronConfig

TINY_CONDITIONING_DIM = 16  # CLIP embed dim of the tiny itaclip model = tiny SD cross-attention
TINY_SIGNAL_TASKS = ("segment_image", "segment_video", "generate_image", "edit_image")
TINY_OPEN_CLIP = {
    "embed_dim": TINY_CONDITIONING_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_text_encoder(tokenizer, layers: int):
    """A random CLIP text encoder of the tiny conditioning width over ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TINY_CONDITIONING_DIM, intermediate_size=32,
            num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip


def byte_level_tokenizer(model_max_length: int = 4096):
    """A fast tokenizer over the 256 byte symbols (no merges): any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
    )


def tiny_config(vision_backend: str = "transformers", vocab_size: int = 264) -> VitronConfig:
    """A Vitron config with a 2-block 32-wide CLIP tower and a 2-layer 32-wide Llama."""
    if vision_backend == "transformers":
        vision = VisionConfig(
            "transformers",
            {
                "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 16,
            },
            select_layer=-2,
        )  # fmt: skip
    else:
        vision = VisionConfig("open_clip", TINY_OPEN_CLIP, select_layer=-2)
    llm = {
        "model_type": "llama", "vocab_size": vocab_size, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False,
    }  # fmt: skip
    signal = SignalConfig(
        tasks=TINY_SIGNAL_TASKS,
        specific_dim=16,
        invariant_dim=16,
        output_dims=dict.fromkeys(TINY_SIGNAL_TASKS, TINY_CONDITIONING_DIM),
        discriminator_hidden=16,
    )
    return VitronConfig(
        vision=vision, llm=llm, region=RegionConfig(hidden=32, location_frequencies=4),
        signal=signal, video_frames=2, max_length=4096, random_weights=True,
    )  # fmt: skip


def tiny_model(seed: int = 0, vision_backend: str = "transformers"):
    """A seeded random tiny :class:`~vitron.models.VitronModel` (about 0.1M parameters)."""
    from vitron.models.vitron import VitronModel

    tokenizer = byte_level_tokenizer()
    base = tiny_config(vision_backend)
    tokenizer.add_special_tokens({"additional_special_tokens": list(base.special_tokens)})
    config = tiny_config(vision_backend, vocab_size=len(tokenizer))
    ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    config.llm.update({f"{k}_token_id": v for k, v in ids.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VitronModel(config, tokenizer).eval()


def clip_tokenizer(max_length: int = 16):
    """A CLIP tokenizer over the byte symbols and their end-of-word forms (no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _sd_components(in_channels: int, seed: int) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_CONDITIONING_DIM, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    text_encoder = tiny_clip_text_encoder(tokenizer, layers=1)
    return {
        "unet": unet,
        "vae": _tiny_vae(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _tiny_scheduler(),
    }


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16,
    )  # fmt: skip


def _tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def tiny_text2image(seed: int = 0):
    """A tiny random Stable-Diffusion-shaped text-to-image pipeline (32-px images)."""
    from diffusers import StableDiffusionPipeline

    parts = _sd_components(4, seed)
    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def tiny_inpaint(seed: int = 0):
    """A tiny random Stable-Diffusion inpainting pipeline (9-channel U-Net)."""
    from diffusers import StableDiffusionInpaintPipeline

    parts = _sd_components(9, seed)
    return StableDiffusionInpaintPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


# the tiny video U-Nets' config, without their sample size
_TINY_UNET3D = dict(
    block_out_channels=(8, 16), layers_per_block=1, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=TINY_CONDITIONING_DIM, attention_head_dim=4, norm_num_groups=4,
)  # fmt: skip


def tiny_text2video(seed: int = 0):
    """A tiny random ModelScope-shaped text-to-video pipeline."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(sample_size=8, **_TINY_UNET3D)
    text_encoder = tiny_clip_text_encoder(tokenizer, layers=1)
    return TextToVideoSDPipeline(
        unet=unet, vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_tiny_scheduler(),
    )  # fmt: skip


def tiny_image2video(seed: int = 0):
    """A tiny random I2VGen-XL-shaped image-to-video pipeline (the default ``image_model``)."""
    from diffusers import I2VGenXLPipeline, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = I2VGenXLUNet(sample_size=16, **_TINY_UNET3D)
    text_encoder = tiny_clip_text_encoder(tokenizer, layers=2)  # CLIP skip reads layer -2
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, projection_dim=TINY_CONDITIONING_DIM,
            num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
        )
    )  # fmt: skip
    return I2VGenXLPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
        image_encoder=image_encoder, feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        unet=unet, scheduler=_tiny_scheduler(),
    )  # fmt: skip


def write_tiny_open_clip(folder: str | Path, seed: int = 0) -> Path:
    """A ``local-dir:`` open_clip folder (config + safetensors) of a tiny random ViT CLIP."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=TINY_OPEN_CLIP["embed_dim"],
        vision_cfg=TINY_OPEN_CLIP["vision_cfg"],
        text_cfg=TINY_OPEN_CLIP["text_cfg"],
        quick_gelu=TINY_OPEN_CLIP["quick_gelu"],
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(folder, make_parents=True) as temp:
        write_json(temp / "open_clip_config.json", {"model_cfg": TINY_OPEN_CLIP})
        save_file(state, temp / "open_clip_model.safetensors")
    return folder


def save_pipeline(pipeline, folder: Path) -> None:
    """``pipeline.save_pretrained(folder)`` through
    ``common_kernels.runtime.files.atomic_directory``
    (complete or absent; the usual permissions instead of safetensors' 0600)."""
    with atomic_directory(folder, make_parents=True) as temp:
        pipeline.save_pretrained(temp)


def write_tiny_specialists(folder: str | Path, seed: int = 0, video: bool = True) -> Path:
    """Write tiny specialists and a ``specialists.json`` pointing the adapters at them.

    Layout: ``itaclip/`` (open_clip local-dir), ``sd/`` (text-to-image), ``sd-inpaint/``,
    ``t2v/`` (text-to-video) and ``i2v/`` (image-to-video) when ``video``, ``cache/`` (itaclip
    text cache). semanir uses its bundled tiny denoiser. Returns the path of
    ``specialists.json``.
    """
    folder = Path(folder).resolve()
    write_tiny_open_clip(folder / "itaclip", seed)
    save_pipeline(tiny_text2image(seed), folder / "sd")
    save_pipeline(tiny_inpaint(seed), folder / "sd-inpaint")
    options: dict[str, dict[str, Any]] = {
        "itaclip": {
            "model": f"local-dir:{folder / 'itaclip'}",
            "pretrained": None,
            "cache_dir": str(folder / "cache"),
            "settings": {
                "short_side": None,
                "crop": 64,
                "stride": 32,
                "pamr": False,
                "batch_size": 10,
            },
            "background_classes": ["background"],
        },
        "diffusers-image": {
            "model": str(folder / "sd"),
            "num_inference_steps": 2,
            "height": 32,
            "width": 32,
        },
        "diffusers-inpaint": {
            "model": str(folder / "sd-inpaint"),
            "num_inference_steps": 2,
            "size": 32,
        },
        "semanir": {"model": None},
    }
    if video:
        save_pipeline(tiny_text2video(seed), folder / "t2v")
        save_pipeline(tiny_image2video(seed), folder / "i2v")
        options["diffusers-video"] = {
            "model": str(folder / "t2v"), "image_model": str(folder / "i2v"),
            "num_inference_steps": 2, "num_frames": 3, "height": 32, "width": 32,
        }  # fmt: skip
    return write_json(folder / "specialists.json", options)
