"""Write the tiny SDXL of :mod:`configs` as one ComfyUI checkpoint (``model.diffusion_model.``
UNet in ComfyUI's layout, ``conditioner.embedders.{0,1}.transformer.`` text encoders,
``first_stage_model.`` VAE in diffusers' layout, which ComfyUI converts), a LoRA on its UNet's
attention projections in ComfyUI's generic LoRA format, and for the tests' reference the same
weights as diffusers/transformers folders (``unet``, ``text_encoder``, ``text_encoder_2``) and the
LoRA by diffusers' module names (``lora.safetensors``). Seeded; run with ComfyUI's folder on
``sys.path``::

    python write_checkpoint.py CHECKPOINTS_FOLDER LORAS_FOLDER REFERENCE_FOLDER
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import comfy.utils
import torch
from configs import COMFY_UNET, TEXT, UNET, VAE
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

# the token ids of ComfyUI's CLIP tokenizer (CLIP's vocabulary)
TOKENS = {"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
          "max_position_embeddings": 77}  # fmt: skip


def fp16_exact(module: torch.nn.Module) -> torch.nn.Module:
    """Round the weights to float16 values (ComfyUI stores text encoders in float16), kept
    float32, so the reference computes with exactly the stored numbers."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter.half().float())
    return module


def comfy_text_key(key: str) -> str:
    """transformers' CLIP key as ComfyUI names it (``text_model.``; some transformers versions
    drop that prefix in ``CLIPTextModel.state_dict``)."""
    if key.startswith(("text_model.", "text_projection.")):
        return key
    return f"text_model.{key}"


LORA_RANK = 2
LORA_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


def save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(state, partial)
    os.replace(partial, path)


def lora(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank-2 up/down pairs for the attention projections, by diffusers' names (alpha = rank:
    the update is ``up @ down`` times the strength)."""
    pairs = {}
    for key, weight in weights.items():
        if ".attentions." in key and key.endswith(LORA_PROJECTIONS):
            name = key.removesuffix(".weight")
            pairs[f"{name}.lora_down.weight"] = torch.randn(LORA_RANK, weight.shape[1]) * 0.3
            pairs[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], LORA_RANK) * 0.3
    return pairs


def main(checkpoints: Path, loras: Path, reference: Path) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    encoder = fp16_exact(CLIPTextModel(CLIPTextConfig(**TEXT, **TOKENS, hidden_act="quick_gelu")))
    encoder_2 = fp16_exact(
        CLIPTextModelWithProjection(CLIPTextConfig(**TEXT, **TOKENS, hidden_act="gelu"))
    )
    vae = AutoencoderKL(**VAE)  # random, as everything here: ComfyUI's VAE nodes run it
    to_comfy = comfy.utils.unet_to_diffusers(COMFY_UNET)  # diffusers key -> ComfyUI key
    weights = unet.state_dict()
    missing = set(weights) - set(to_comfy)
    if missing:
        raise RuntimeError(f"no ComfyUI name for {sorted(missing)[:5]}")
    state = {f"model.diffusion_model.{to_comfy[k]}": v.contiguous() for k, v in weights.items()}
    for index, text in enumerate((encoder, encoder_2)):
        for key, value in text.state_dict().items():
            state[f"conditioner.embedders.{index}.transformer.{comfy_text_key(key)}"] = (
                value.half().contiguous()
            )
    for key, value in vae.state_dict().items():
        state[f"first_stage_model.{key}"] = value.half().contiguous()
    save_atomic(state, checkpoints / "tiny-sdxl.safetensors")
    pairs = lora(weights)
    comfy_pairs = {}
    for key, value in pairs.items():
        name, part = key.split(".lora_")
        comfy_name = f"diffusion_model.{to_comfy[name + '.weight'].removesuffix('.weight')}"
        comfy_pairs[f"{comfy_name}.lora_{part}"] = value
        comfy_pairs[f"{comfy_name}.alpha"] = torch.tensor(float(LORA_RANK))
    save_atomic(comfy_pairs, loras / "tiny-sdxl-lora.safetensors")
    save_atomic(pairs, reference / "lora.safetensors")
    for name, part in (("unet", unet), ("text_encoder", encoder), ("text_encoder_2", encoder_2)):
        part.save_pretrained(reference / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
