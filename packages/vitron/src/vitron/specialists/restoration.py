"""Image restoration with semanir (bundled tiny gray denoiser by default, any saved model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from vitron.io import save_image, to_pil, to_tensor
from vitron.specialists.base import Artifact, CallInputs, Consumes, Specialist, SpecialistOutput


@dataclass
class RestorationOptions:
    """Options of the ``semanir`` adapter.

    Args:
        model: a semanir ``save_pretrained`` folder or hub id (``None`` = bundled denoiser).
        tile: default tile side for tiled inference (``None`` = whole image).
        tile_overlap: overlap of neighbouring tiles.
    """

    model: str | None = None
    tile: int | None = None
    tile_overlap: int = 32


class SemanirRestorer(Specialist):
    """Denoising / restoration; gray models restore the three colour channels one by one."""

    name = "semanir"
    tasks = ("restore_image",)
    consumes = Consumes.IMAGE
    packages = ("semanir",)
    extra = "specialists"
    hub_weights = "none for the bundled gray denoiser; any semanir save_pretrained folder or hub id"
    Options = RestorationOptions

    def load(self) -> None:
        import semanir

        self.model = semanir.load_model(self.options.model, map_location=str(self.device))

    def offloadable(self) -> list[Any]:
        return [self.model]

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        import semanir

        image: Image.Image = inputs.args["image"]
        pixels = to_tensor(image)  # (3, H, W)
        channels = self.model.in_channels
        batch = pixels[:, None] if channels == 1 else pixels[None]  # (3, 1, H, W) or (1, 3, H, W)
        tile = inputs.args.get("tile", self.options.tile)
        out = semanir.restore(self.model, batch, tile=tile, tile_overlap=self.options.tile_overlap)
        restored = out[:, 0] if channels == 1 else out[0]  # (3, H', W')
        result = to_pil(restored)
        path = save_image(result, inputs.file("image", ".png"))
        change = (
            float((restored[:, : pixels.shape[1], : pixels.shape[2]] - pixels).abs().mean()) * 255
        )
        return SpecialistOutput(
            {"image": Artifact("image", result, path)},
            f"restored the {image.width}x{image.height} image to {result.width}x{result.height} "
            f"(mean change {change:.1f}/255)",
        )
