"""Video generation with diffusers video pipelines (text-to-video and image-to-video)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitron.io import save_gif
from vitron.specialists.base import (
    Artifact,
    CallInputs,
    Consumes,
    Specialist,
    SpecialistOutput,
    generator,
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


class DiffusersVideo(Specialist):
    """``generate_video`` from text and ``image_to_video`` from an image (and optional text)."""

    name = "diffusers-video"
    tasks = ("generate_video", "image_to_video")
    consumes = Consumes.TEXT | Consumes.IMAGE
    packages = ("diffusers",)
    extra = "specialists"
    hub_weights = "damo-vilab/text-to-video-ms-1.7b; image-to-video: ali-vilab/i2vgen-xl"
    Options = VideoOptions

    def load(self) -> None:
        self.pipes: dict[str, object] = {}

    def pipeline(self, task: str):
        """The (cached) pipeline of a task."""
        if task not in self.pipes:
            model = self.options.model if task == "generate_video" else self.options.image_model
            self.pipes[task] = load_pipeline(
                "any", model, torch_dtype(self.options.dtype, self.device), self.device
            )
        return self.pipes[task]

    def call_kwargs(self, inputs: CallInputs) -> dict:
        """Keyword arguments of the pipeline call."""
        opts, args = self.options, inputs.args
        kwargs = {
            "prompt": args.get("text", ""),
            "num_frames": args.get("num_frames", opts.num_frames),
            "num_inference_steps": opts.num_inference_steps,
            "guidance_scale": opts.guidance_scale,
            "generator": generator(self.device, args.get("seed", inputs.seed)),
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
        out = self.pipeline(inputs.task)(**self.call_kwargs(inputs))
        frames = frames_to_pil(out.frames)
        path = save_gif(frames, inputs.file("video", ".gif"), self.options.fps)
        what = repr(inputs.args["text"]) if inputs.args.get("text") else "the image"
        return SpecialistOutput(
            {"video": Artifact("video", frames, path)},
            f"generated a {len(frames)}-frame {frames[0].width}x{frames[0].height} video of {what}",
        )
