"""Image generation: a diffusers text-to-image pipeline (SDXL by default), pixelsmith above it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vitron.io import save_image
from vitron.specialists.base import (
    Artifact,
    CallInputs,
    Consumes,
    SpecialistError,
    SpecialistOutput,
    torch_dtype,
)
from vitron.specialists.diffusion import (
    PipelineSpecialist,
    diffusers_bars_like_the_hub,
    encode_with_signal,
    processing_size,
)

GIANT_SIDE = 8192  # pixelsmith writes larger results to a file instead of returning an image


@dataclass
class GenerationOptions:
    """Options of the ``diffusers-image`` adapter.

    Args:
        model: diffusers text-to-image pipeline id or folder.
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        height: default output height (``None`` = the pipeline's native size).
        width: default output width.
        negative_prompt: default negative prompt.
        signal_weight: scale of the appended signal token (0 = ignore signals).
        highres_model: pixelsmith model for sizes above the native size (``None`` = ``model``).
        highres_sliders: pixelsmith slider of each cascade stage (the last one repeats).
        highres_max_ratio: largest size ratio between consecutive cascade stages.
    """

    model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    dtype: str = "auto"
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    signal_weight: float = 1.0
    highres_model: str | None = None
    highres_sliders: tuple[int, ...] = (20, 30)
    highres_max_ratio: float = 2.0


def cascade_sizes(native: int, height: int, width: int, max_ratio: float) -> list[tuple[int, int]]:
    """(height, width) of each pixelsmith stage: the native-size base with the target's aspect
    ratio, then steps of at most ``max_ratio`` up to the target (multiples of 8)."""
    if max_ratio <= 1:
        raise ValueError(f"highres_max_ratio must be > 1, got {max_ratio}")
    sizes = [processing_size(height, width, native)]
    while max(height, width) / max(sizes[-1]) > max_ratio:
        factor = max(sizes[-1]) * max_ratio / max(height, width)
        sizes.append((round(height * factor / 8) * 8, round(width * factor / 8) * 8))
    sizes.append((height, width))
    return sizes


class DiffusersImageGenerator(PipelineSpecialist):
    """Text-to-image with diffusers; sizes above the native size go through pixelsmith."""

    name = "diffusers-image"
    tasks = ("generate_image",)
    consumes = Consumes.TEXT | Consumes.SIGNAL
    packages = ("diffusers",)
    extra = "specialists"
    hub_weights = "stabilityai/stable-diffusion-xl-base-1.0 (pixelsmith: the same SDXL)"
    Options = GenerationOptions
    pipeline_kind = "text2image"

    def load(self) -> None:
        super().load()
        self.native = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        self.highres = None

    def offloadable(self) -> list[Any]:
        return super().offloadable() + ([self.highres] if self.highres is not None else [])

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        opts, args = self.options, inputs.args
        height = args.get("height", opts.height) or self.native
        width = args.get("width", opts.width) or self.native
        for name, value in (("height", height), ("width", width)):
            if value < 8 or value % 8:
                raise SpecialistError(f"{name} must be a multiple of 8 and >= 8, got {value}")
        seed = inputs.call_seed
        negative = args.get("negative", opts.negative_prompt)
        if max(height, width) > self.native:
            image = self._highres(inputs, args["text"], negative, height, width, seed)
        else:
            kwargs = encode_with_signal(
                self.pipe,
                args["text"],
                negative,
                inputs.signal,
                opts.signal_weight,
                opts.guidance_scale,
            )
            image = self.pipe(
                **kwargs,
                height=height,
                width=width,
                num_inference_steps=opts.num_inference_steps,
                guidance_scale=opts.guidance_scale,
                generator=self.call_generator(inputs),
            ).images[0]
        path = image if isinstance(image, Path) else save_image(image, inputs.file("image", ".png"))
        value = None if isinstance(image, Path) else image
        size = f"{width}x{height}"
        return SpecialistOutput(
            {"image": Artifact("image", value, path)},
            f"generated a {size} image of {args['text']!r}",
            used_signal=max(height, width) <= self.native,  # pixelsmith takes no signal
        )

    def _highres(self, inputs, prompt, negative, height, width, seed) -> Image.Image | Path:
        try:
            from pixelsmith import PixelsmithPipeline, generate_cascade
        except ImportError as err:
            raise SpecialistError(
                f"{width}x{height} exceeds the native {self.native} px; high resolution needs "
                "pixelsmith: pip install 'vitron[highres]'"
            ) from err
        if self.highres is None:
            model = self.options.highres_model or self.options.model
            dtype = torch_dtype(self.options.dtype, self.device)
            with diffusers_bars_like_the_hub():
                self.highres = PixelsmithPipeline.from_pretrained(model, torch_dtype=dtype)
            self.highres.to(self.device)
        stages = cascade_sizes(self.native, height, width, self.options.highres_max_ratio)
        sizes = [h if h == w else (h, w) for h, w in stages]  # ints for squares
        given = self.options.highres_sliders
        sliders = [given[min(i, len(given) - 1)] for i in range(len(sizes) - 1)]
        output = inputs.file("image", ".tif") if max(height, width) > GIANT_SIDE else None
        return generate_cascade(
            self.highres,
            prompt,
            sizes,
            sliders,
            num_inference_steps=self.options.num_inference_steps,
            guidance_scale=self.options.guidance_scale,
            seed=seed,
            output=output,
            negative_prompt=negative,
        )
