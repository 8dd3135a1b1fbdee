"""ITACLIP in ComfyUI: text classes -> one MASK per class and the label map, training-free, on
open_clip weights from ``models/open_clip`` (a folder with ``open_clip_config.json``, as
``itaclip tiny-model`` or ``open_clip``'s hub repositories hold) or open_clip's hub cache."""

from __future__ import annotations

import torch
from torch import Tensor

from itaclip import Segmenter
from itaclip.viz import palette

from .host import OPEN_CLIP, Node, Progress, comfy_image, device, image_list

# open_clip built-in names with a weights tag, loaded from open_clip's hub cache
BUILTIN = {"ViT-B-16-quickgelu (openai)": ("ViT-B-16-quickgelu", "openai"),
           "ViT-L-14-quickgelu (openai)": ("ViT-L-14-quickgelu", "openai")}  # fmt: skip


def class_lines(classes: str) -> list[str]:
    """One class per non-empty line (``person,man``: one class, two names)."""
    return [line.strip() for line in classes.splitlines() if line.strip()]


def model_choices() -> list[str]:
    """The open_clip folders of ComfyUI's ``models/open_clip``, then the built-in CLIPs."""
    return [*OPEN_CLIP.names(), *BUILTIN]


class ITACLIPLoader(Node):
    """Load an open_clip model for ITACLIP (once: ComfyUI keeps the output while the inputs
    stay the same)."""

    CATEGORY, RETURN_TYPES = "loaders", ("ITACLIP",)
    INPUTS = {"model": (model_choices, {"tooltip": "a folder of models/open_clip, or a "
                        "built-in CLIP from open_clip's hub cache"})}  # fmt: skip

    def run(self, model: str) -> tuple[Segmenter]:
        if model in BUILTIN:
            name, tag = BUILTIN[model]
            return (Segmenter.from_pretrained(name, tag, preset=None, device=device()),)
        folder = OPEN_CLIP.path(model)
        return (Segmenter.from_pretrained(str(folder), None, preset=None, device=device()),)


class ITACLIPSegment(Node):
    """Training-free open-vocabulary segmentation (ITACLIP) of every image of a batch: one class
    per line ('person,man' gives a class two names); background names the class the
    thresholds fall back to."""

    CATEGORY, RETURN_TYPES = "mask", ("MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("masks", "label_map", "class_names")
    INPUTS = {
        "segmenter": ("ITACLIP",),
        "image": ("IMAGE",),
        "classes": ("STRING", {"multiline": True, "default": "sky\ntree\nperson,man"}),
        "background": ("STRING", {"default": "", "tooltip": "the background class (one of the "
                       "classes, by name); empty: none"}),
    }  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, classes: str) -> bool | str:
        if not class_lines(classes):
            return "classes: give at least one class, one per line"
        return True

    def run(
        self, segmenter: Segmenter, image: Tensor, classes: str, background: str
    ) -> tuple[Tensor, Tensor, str]:
        names = class_lines(classes)
        batch = torch.stack(image_list(image))  # (B, 3, H, W)
        # checked once, before any work; then each image as Segmenter.forward runs a batch
        inputs = segmenter.check_inputs(batch, names, background=background or None)
        text = segmenter.class_features(inputs.classes)
        progress = Progress(len(inputs.images))
        masks, maps = [], []
        colours = torch.from_numpy(palette(len(names))).float() / 255  # (C, 3)
        for one in inputs.images:
            result = segmenter.segment_image(one, inputs, text, False, False)
            masks.append(torch.stack([result.labels == c for c in range(len(names))]).float())
            maps.append(colours[result.labels].permute(2, 0, 1))  # (3, H, W)
            progress.step()
        return torch.cat(masks), comfy_image(maps), "\n".join(result.class_names)


NODES = {"ITACLIPLoader": ITACLIPLoader, "ITACLIPSegment": ITACLIPSegment}
NAMES = {"ITACLIPLoader": "ITACLIP Loader", "ITACLIPSegment": "ITACLIP Segment (text -> masks)"}
