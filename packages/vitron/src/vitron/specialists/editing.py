"""Image editing: a diffusers inpainting pipeline repaints a mask (from a call or from itaclip).

The mask comes from, in order: the ``mask`` argument (e.g. ``$seg.mask``), segmenting the
``target`` text with the registry's segmenter, or the ``region``; a region given together with
a mask or target restricts it. The image is resized so its long side is ``size`` (multiples of
8), inpainted, resized back, and composited: pixels outside the (dilated) mask are the input's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vitron.io import save_image, to_pil, to_tensor
from vitron.regions import region_mask_at
from vitron.specialists.base import (
    Artifact,
    CallInputs,
    Consumes,
    SpecialistError,
    SpecialistOutput,
)
from vitron.specialists.diffusion import PipelineSpecialist, encode_with_signal, processing_size


@dataclass
class EditingOptions:
    """Options of the ``diffusers-inpaint`` adapter.

    Args:
        model: diffusers inpainting pipeline id or folder.
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        strength: how much of the masked area is re-noised (0-1].
        size: long side the image is processed at (a multiple of 8).
        mask_dilation: pixels the mask grows by before inpainting (0 = exact mask).
        composite: keep the input's pixels outside the mask exactly.
        negative_prompt: negative prompt.
        signal_weight: scale of the appended signal token (0 = ignore signals).
    """

    model: str = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    dtype: str = "auto"
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    strength: float = 0.99
    size: int = 1024
    mask_dilation: int = 0
    composite: bool = True
    negative_prompt: str | None = None
    signal_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 8:
            raise ValueError(f"size must be a multiple of 8 and >= 8, got {self.size}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0, got {self.mask_dilation}")


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """(H, W) bool mask grown by ``pixels`` (square structuring element)."""
    if pixels == 0:
        return mask
    grown = F.max_pool2d(mask.float()[None, None], 2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0] > 0


class DiffusersInpainter(PipelineSpecialist):
    """Mask-based image editing with a diffusers inpainting pipeline."""

    name = "diffusers-inpaint"
    tasks = ("edit_image",)
    consumes = Consumes.TEXT | Consumes.IMAGE | Consumes.MASK | Consumes.REGION | Consumes.SIGNAL
    packages = ("diffusers",)
    extra = "specialists"
    hub_weights = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (masks: itaclip)"
    Options = EditingOptions
    pipeline_kind = "inpaint"

    def edit_mask(self, inputs: CallInputs) -> Tensor:
        """(H, W) bool mask of the pixels to repaint."""
        args = inputs.args
        image: Image.Image = args["image"]
        size = (image.height, image.width)
        region = args.get("region")
        region_mask = None if region is None else region_mask_at(region, *size)
        if "mask" in args:
            mask = args["mask"].bool()
            if tuple(mask.shape) != size:
                mask = F.interpolate(mask.float()[None, None], size=size, mode="nearest")[0, 0] > 0
        elif "target" in args:
            if self.registry is None:
                raise SpecialistError("segmenting a target needs the registry's segmenter")
            with self.registry.specialist("segment_image").active() as segmenter:
                mask = segmenter.segment(image, args["target"], None, None)[0]
        elif region_mask is not None:
            return region_mask
        else:
            raise SpecialistError(
                "edit_image needs the part to repaint: a mask (e.g. $seg.mask), a target to "
                "segment, or a region"
            )
        if region_mask is not None:
            mask = mask & region_mask
        if not bool(mask.any()):
            raise SpecialistError("the mask to repaint is empty; nothing to edit")
        return mask

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        opts, args = self.options, inputs.args
        image: Image.Image = args["image"]
        mask = dilate(self.edit_mask(inputs), opts.mask_dilation)
        height, width = processing_size(image.height, image.width, opts.size)
        kwargs = encode_with_signal(
            self.pipe,
            args["text"],
            opts.negative_prompt,
            inputs.signal,
            opts.signal_weight,
            opts.guidance_scale,
        )
        result = self.pipe(
            **kwargs,
            image=image.resize((width, height), Image.BICUBIC),
            mask_image=Image.fromarray(mask.numpy().astype("uint8") * 255).resize(
                (width, height), Image.NEAREST
            ),
            height=height,
            width=width,
            strength=opts.strength,
            num_inference_steps=opts.num_inference_steps,
            guidance_scale=opts.guidance_scale,
            generator=self.call_generator(inputs),
        ).images[0]
        edited = to_tensor(result.resize((image.width, image.height), Image.BICUBIC))  # (3, H, W)
        if opts.composite:
            keep = (~mask).float()[None]  # (1, H, W)
            edited = to_tensor(image) * keep + edited * (1 - keep)
        output = to_pil(edited)
        path = save_image(output, inputs.file("image", ".png"))
        share = 100.0 * float(mask.float().mean())
        return SpecialistOutput(
            {"image": Artifact("image", output, path)},
            f"repainted {share:.1f}% of the image as {args['text']!r}",
        )
