"""Diffusion U-Net features with diffeat (written as safetensors, one tensor per activation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safetensors.torch import save_file

from common_kernels.runtime.files import atomic_write
from vitron.specialists.base import (
    Artifact,
    CachingSpecialist,
    CallInputs,
    Consumes,
    SpecialistOutput,
    generator,
    torch_dtype,
)
from vitron.specialists.diffusion import diffusers_bars_like_the_hub


@dataclass
class FeatureOptions:
    """Options of the ``diffeat`` adapter.

    Args:
        model: diffusers model id or folder with a U-Net and VAE.
        preset: a ``diffeat.PRESETS`` selection used when a call names no layers.
        timestep: diffusion timestep of the extraction.
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        settings: other ``diffeat.ExtractorConfig`` fields (e.g. ``{"image_size": 512}``).
    """

    model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    preset: str | None = None
    timestep: int = 50
    dtype: str = "auto"
    settings: dict[str, Any] = field(default_factory=dict)


class DiffeatFeatures(CachingSpecialist):
    """Discriminative features of an image from a diffusion U-Net's activations."""

    name = "diffeat"
    tasks = ("extract_features",)
    consumes = Consumes.TEXT | Consumes.IMAGE
    packages = ("diffeat",)
    extra = "features"
    hub_weights = "stabilityai/stable-diffusion-xl-base-1.0 (or any SD1.5 / SDXL U-Net)"
    Options = FeatureOptions

    def extractor(self, layers: tuple[str, ...] | None):
        """A cached ``diffeat.FeatureExtractor`` for ``layers`` (``None`` = the preset)."""
        if layers not in self.models:
            from diffeat import FeatureExtractor

            opts = self.options
            with diffusers_bars_like_the_hub():
                self.models[layers] = FeatureExtractor.from_pretrained(
                    opts.model,
                    layers=list(layers) if layers is not None else None,
                    preset=opts.preset if layers is None else None,
                    timestep=opts.timestep,
                    dtype=torch_dtype(opts.dtype, self.device),
                    device=self.device,
                    **opts.settings,
                )
        return self.models[layers]

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        args = inputs.args
        layers = tuple(args["layers"]) if "layers" in args else None
        extractor = self.extractor(layers)
        features = extractor(
            [args["image"]],
            prompts=args.get("text", ""),
            generator=generator(self.device, inputs.seed),
        )
        tensors = {
            name: value[0].detach().float().cpu().contiguous() for name, value in features.items()
        }
        path = inputs.file("features", ".safetensors")
        with atomic_write(path, make_parents=True) as temp:
            save_file(tensors, str(temp))
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        return SpecialistOutput(
            {"features": Artifact("features", tensors, path)},
            f"extracted {len(tensors)} feature maps: {shapes}",
        )
