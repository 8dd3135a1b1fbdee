"""Video generation with diffusers video pipelines (text-to-video and image-to-video)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vitron.io import save_gif
from vitron.specialists.base import (
    Artifact,
    CachingSpecialist,
    CallInputs,
    Consumes,
    SpecialistOutput,
    torch_dtype,
)
from vitron.specialists.diffusion import load_pipeline


@dataclass
class VideoOptions:
    """Options of the ``diffusers-video`` adapter.

    Args:
        model: text-to-video pipeline id or folder (any diffusers pipeline returning frames).
        image_model: image-to-video pipeline id or folder (takes ``image=``).
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        num_frames: default number of frames.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        height: output height (``None`` = the pipeline's default).
        width: output width.
        fps: frame rate of the written GIF.
    """

    model: str = "damo-vilab/text-to-video-ms-1.7b"
    image_model: str = "ali-vilab/i2vgen-xl"
    dtype: str = "auto"
    num_frames: int = 16
    num_inference_steps: int = 25
    guidance_scale: float = 9.0
    height: int | None = None
    width: int | None = None
    fps: float = 8.0


def frames_to_pil(frames) -> list[Image.Image]:
    """A pipeline's ``.frames`` (a batch of PIL-frame lists or a (B, T, H, W, 3) array in
    [0, 1]) -> the first video's frames as PIL images."""
    video = frames[0]
    if len(video) and isinstance(video[0], Image.Image):
        return list(video)
    array = np.clip(np.asarray(video, dtype=np.float32), 0, 1)  # (T, H, W, 3)
    return [Image.fromarray((f * 255).round().astype(np.uint8)) for f in array]


def clip_skip_prompt_kwargs(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the prompt encoded here when the pipeline's default ``clip_skip`` would
    reach the final layer norm through ``text_encoder.text_model``, which a transformers >= 5
    ``CLIPTextModel`` no longer has (diffusers' I2VGenXL: ``clip_skip=1`` by default, so it
    fails on every call). The states are the ones diffusers computes: the output of the block
    ``clip_skip`` before the last, through the final layer norm; the negative branch (guidance
    scale > 1) encodes the empty prompt the same way. Other pipelines: ``kwargs`` unchanged."""
    params = inspect.signature(pipe.__call__).parameters
    param = params.get("clip_skip")
    encoder = getattr(pipe, "text_encoder", None)
    if (
        param is None
        or not isinstance(param.default, int)
        or encoder is None
        or hasattr(encoder, "text_model")
        or not hasattr(encoder, "final_layer_norm")
    ):
        return kwargs
    out = dict(kwargs)
    out["prompt_embeds"] = skipped_states(pipe, out.pop("prompt"), param.default)
    guidance = params["guidance_scale"].default if "guidance_scale" in params else 1.0
    if out.get("guidance_scale", guidance) > 1:
        out["negative_prompt_embeds"] = skipped_states(pipe, "", param.default)
    return out


@torch.no_grad()
def skipped_states(pipe, text: str, clip_skip: int) -> Tensor:
    """(1, L, D) CLIP text states ``clip_skip`` blocks before the last, final-normed (padded to
    the tokenizer's maximum length, as diffusers pads)."""
    ids = pipe.tokenizer(
        text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    encoder = pipe.text_encoder
    hidden = encoder(ids.to(encoder.device), output_hidden_states=True).hidden_states
    return encoder.final_layer_norm(hidden[-(clip_skip + 1)])  # (1, L, D)


class DiffusersVideo(CachingSpecialist):
    """``generate_video`` from text and ``image_to_video`` from an image (and optional text)."""

    name = "diffusers-video"
    tasks = ("generate_video", "image_to_video")
    consumes = Consumes.TEXT | Consumes.IMAGE
    packages = ("diffusers",)
    extra = "specialists"
    hub_weights = "damo-vilab/text-to-video-ms-1.7b; image-to-video: ali-vilab/i2vgen-xl"
    Options = VideoOptions

    def pipeline(self, task: str):
        """The (cached) pipeline of a task."""
        if task not in self.models:
            model = self.options.model if task == "generate_video" else self.options.image_model
            self.models[task] = load_pipeline(
                "any", model, torch_dtype(self.options.dtype, self.device), self.device
            )
        return self.models[task]

    def call_kwargs(self, inputs: CallInputs) -> dict:
        """Keyword arguments of the pipeline call."""
        opts, args = self.options, inputs.args
        kwargs = {
            "prompt": args.get("text", ""),
            "num_frames": args.get("num_frames", opts.num_frames),
            "num_inference_steps": opts.num_inference_steps,
            "guidance_scale": opts.guidance_scale,
            "generator": self.call_generator(inputs),
            "output_type": "pil",
        }
        if opts.height is not None:
            kwargs["height"] = opts.height
        if opts.width is not None:
            kwargs["width"] = opts.width
        if inputs.task == "image_to_video":
            kwargs["image"] = args["image"]
        return kwargs

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        pipe = self.pipeline(inputs.task)
        kwargs = clip_skip_prompt_kwargs(pipe, self.call_kwargs(inputs))
        # I2VGenXL samples the image latents from the global generator: seed it too
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(inputs.call_seed)
            out = pipe(**kwargs)
        frames = frames_to_pil(out.frames)
        path = save_gif(frames, inputs.file("video", ".gif"), self.options.fps)
        what = repr(inputs.args["text"]) if inputs.args.get("text") else "the image"
        return SpecialistOutput(
            {"video": Artifact("video", frames, path)},
            f"generated a {len(frames)}-frame {frames[0].width}x{frames[0].height} video of {what}",
        )
