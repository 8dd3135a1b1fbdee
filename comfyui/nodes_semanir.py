"""SemanIR in ComfyUI: restore (denoise, JPEG, x4 super-resolution) with the bundled models or a
SemanIR file in ``models/upscale_models``, and the degradations to try them on.

The core "Load Upscale Model" + "Upscale Image (using Model)" nodes run SemanIR files as they are
(the pack registers SemanIR with spandrel when ComfyUI loads it; ``semanir upscale-models DIR``
writes the bundled models there). This node says what those cannot: the task, the colour
handling of a gray model, the tile and its overlap, the x8 self-ensemble.
"""

from __future__ import annotations

import folder_paths
import spandrel
import torch
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.photos import Photo
from semanir import load_model
from semanir.batch import COLOUR_MODES, restore_photo
from semanir.bundled import installed_models, model_for_task
from semanir.data.degradations import QUALITY_RANGE, SIGMA_RANGE, add_gaussian_noise, jpeg_compress
from semanir.inference import check_inference_options, check_model_for_task, read_model_config
from semanir.spandrel_arch import LumaInput
from semanir.tasks import COMMAND_LINE_TASKS

from .host import Node, Progress, cached, comfy_image, device, image_list

AUTO = "auto"
UPSCALE_MODELS = "upscale_models"
# ComfyUI images are colour: a gray model restores their luma or each channel
COLOURS = tuple(mode for mode in COLOUR_MODES if mode != "gray")


def model_choices() -> list[str]:
    """``auto``, the bundled models, then the files of ComfyUI's ``models/upscale_models``."""
    bundled = [model.name for model in installed_models()]
    return [AUTO, *bundled, *folder_paths.get_filename_list(UPSCALE_MODELS)]


def resolve_model(task: str, model: str) -> str:
    """The bundled name or upscale-model file a ``model`` choice means for ``task`` (``auto``:
    the bundled model ``semanir restore --task TASK`` gives a colour image)."""
    return model_for_task(task, "rgb").name if model == AUTO else model


def is_bundled(name: str) -> bool:
    return name in {model.name for model in installed_models()}


@cached
def load_restorer(name: str, where: str) -> nn.Module:
    """A bundled model, or a spandrel file of ``models/upscale_models`` (a :class:`LumaInput`
    one unwrapped: the node applies the ``colour`` choice itself), in eval mode on ``where``."""
    if is_bundled(name):
        return load_model(name).to(where).eval()
    path = folder_paths.get_full_path_or_raise(UPSCALE_MODELS, name)
    model = spandrel.ModelLoader(device=where).load_from_file(path).model.eval()
    return model.model if isinstance(model, LumaInput) else model


class SemanIRRestore(Node):
    """Denoise, remove JPEG artefacts or upscale x4 every image of a batch with SemanIR (or
    DnCNN), as `semanir restore` does: auto picks the bundled model of the task; a gray model
    restores the luma and keeps the chroma (or restores each channel)."""

    CATEGORY, RETURN_TYPES = "image/restoration", ("IMAGE",)
    INPUTS = {
        "image": ("IMAGE",),
        "task": (list(COMMAND_LINE_TASKS), {"default": "denoise"}),
        "model": (model_choices, {"default": AUTO, "tooltip": "auto: the bundled model of the "
                  "task; or a SemanIR file in models/upscale_models"}),
        "colour": (list(COLOURS), {"default": "luma", "tooltip": "a gray model on a colour "
                   "image: restore its luma and keep its chroma, or restore R, G and B one by "
                   "one"}),
        "tile": ("INT", {"default": 0, "min": 0, "max": 16384, "tooltip": "tile side in input "
                 "px (>= the model's window, 8 for the bundled models); 0: auto (the whole "
                 "image when it fits in memory)"}),
        "tile_overlap": ("INT", {"default": 32, "min": 0, "max": 16383}),
        "ensemble": ("BOOLEAN", {"default": False, "tooltip": "average the 8 flips/rotations "
                     "(8x slower)"}),
    }  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, task: str, model: str, tile: int, tile_overlap: int) -> bool | str:
        """semanir's own checks of the task and the tiling against a bundled model's config,
        before the graph runs (a file's are made when it loads). ComfyUI leaves the check of a
        COMBO that this method takes to it."""
        choices = model_choices()
        if model not in choices:
            return f"model: {model!r} is not one of {', '.join(choices)}"
        try:
            name = resolve_model(task, model)
            if is_bundled(name):
                config = read_model_config(name)
                check_model_for_task(config, task)
                check_inference_options(
                    config, tile=tile or AUTO, tile_overlap=tile_overlap, k=None
                )
        except (InvalidArgument, ValueError) as error:
            return str(error)
        return True

    def run(
        self, image: Tensor, task: str, model: str, colour: str, tile: int, tile_overlap: int,
        ensemble: bool,
    ) -> tuple[Tensor]:  # fmt: skip
        images = image_list(image)
        net = load_restorer(resolve_model(task, model), str(device()))
        check_model_for_task({"upscale": net.upscale, "in_channels": net.in_channels}, task)
        options = dict(tile=tile or AUTO, tile_overlap=tile_overlap, ensemble=ensemble)
        progress = Progress(len(images))
        restored = []
        for pixels in images:
            restored.append(restore_photo(net, Photo(pixels), colour=colour, **options).pixels)
            progress.step()
        return (comfy_image(restored),)


class SemanIRDegrade(Node):
    """Gaussian noise of sigma (0-255 scale, seeded; clipped to [0, 1] as an image is) or a JPEG
    round trip at a quality (Pillow's libjpeg, 4:2:0 for colour): the inputs SemanIR's denoise
    and JPEG models learnt to undo (`semanir restore --add-noise`, `semanir eval`)."""

    CATEGORY, RETURN_TYPES = "image/restoration", ("IMAGE",)
    INPUTS = {
        "image": ("IMAGE",),
        "degradation": (["noise", "jpeg"], {"default": "noise"}),
        "sigma": ("FLOAT", {"default": 25.0, "min": SIGMA_RANGE[0], "max": SIGMA_RANGE[1],
                  "step": 0.5}),
        "quality": ("INT", {"default": 10, "min": QUALITY_RANGE[0], "max": QUALITY_RANGE[1]}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
    }  # fmt: skip

    def run(
        self, image: Tensor, degradation: str, sigma: float, quality: int, seed: int
    ) -> tuple[Tensor]:
        batch = torch.stack(image_list(image))  # (B, 3, H, W)
        if degradation == "jpeg":
            out = jpeg_compress(batch, quality)
        else:
            generator = torch.Generator().manual_seed(seed)
            out = add_gaussian_noise(batch, sigma, generator).clamp(0, 1)
        return (comfy_image(list(out)),)


NODES = {"SemanIRRestore": SemanIRRestore, "SemanIRDegrade": SemanIRDegrade}
NAMES = {"SemanIRRestore": "SemanIR Restore", "SemanIRDegrade": "SemanIR Degrade (noise, JPEG)"}
