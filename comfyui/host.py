"""What every node shares with ComfyUI: its IMAGE tensors, its model folders, its progress bar
and its cancel button. The only module of the pack that imports ComfyUI's own modules (besides
``__init__``), so that the nodes read as skins over the packages' APIs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class ModelFolders:
    """The model folders of one kind below ComfyUI's model folders: the subfolders of its
    ``kind`` folders (``models/diffusers``, ...) that hold a ``marker`` file.

    Args:
        kind: ComfyUI's name of the folders (``folder_paths``), e.g. ``"diffusers"``.
        marker: the file that makes a folder a model (``model_index.json``).
    """

    kind: str
    marker: str

    def names(self) -> list[str]:
        """The model folders, relative to their ``kind`` folder (what a COMBO lists), sorted."""
        found = set()
        for root in folder_paths.get_folder_paths(self.kind):
            for folder, _, files in os.walk(root, followlinks=True):
                if self.marker in files:
                    found.add(os.path.relpath(folder, root))
        return sorted(found)

    def path(self, name: str, argument: str = "model") -> Path:
        """The folder of ``name`` (one of :meth:`names`)."""
        for root in folder_paths.get_folder_paths(self.kind):
            if (Path(root) / name / self.marker).is_file():
                return Path(root) / name
        roots = ", ".join(folder_paths.get_folder_paths(self.kind))
        raise InvalidArgument(argument, f"no folder {name!r} with {self.marker} in ComfyUI's "
                              f"{self.kind} model folders ({roots})")  # fmt: skip


# open_clip folders (open_clip_config.json + weights, as `itaclip tiny-model` writes them)
OPEN_CLIP = ModelFolders("open_clip", "open_clip_config.json")
# diffusers folders; ComfyUI knows this kind already
DIFFUSERS = ModelFolders("diffusers", "model_index.json")


def register_folders() -> None:
    """Add ``models/open_clip`` to ComfyUI's model folders (``extra_model_paths.yaml`` may add
    more under the same name)."""
    if OPEN_CLIP.kind not in folder_paths.folder_names_and_paths:
        default = os.path.join(folder_paths.models_dir, OPEN_CLIP.kind)
        folder_paths.add_model_folder_path(OPEN_CLIP.kind, default)


def device() -> torch.device:
    """The device ComfyUI runs models on (``--cpu``: the CPU)."""
    return comfy.model_management.get_torch_device()


def image_list(image: Tensor, argument: str = "image") -> list[Tensor]:
    """A ComfyUI IMAGE (B, H, W, C) float in [0, 1] -> B (3, H, W) float32 RGB tensors on the
    CPU (gray repeated, alpha dropped)."""
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InvalidArgument(argument, f"must be a ComfyUI IMAGE (B, H, W, 1|3|4), got {shape}")
    rgb = image[..., :3] if image.shape[-1] != 1 else image.expand(*image.shape[:-1], 3)
    chw = rgb.detach().to("cpu", torch.float32).permute(0, 3, 1, 2)  # (B, 3, H, W)
    return list(chw.contiguous())


def comfy_image(images: list[Tensor]) -> Tensor:
    """(C, H, W) tensors of one size, C = 1 or 3 -> a ComfyUI IMAGE (B, H, W, 3) in [0, 1]."""
    rgb = [one.expand(3, *one.shape[-2:]) if one.shape[0] == 1 else one for one in images]
    return torch.stack(rgb).permute(0, 2, 3, 1).clamp(0, 1).contiguous()  # (B, H, W, 3)


class Progress:
    """ComfyUI's progress bar for a node, and its cancel button: :meth:`step` raises ComfyUI's
    interruption when the user pressed cancel, before the next piece of work starts.

    Args:
        total: steps of the whole node.
    """

    def __init__(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total)

    def step(self, *_: object) -> None:
        """One step done (any arguments are ignored: it serves as a callback)."""
        self.bar.update(1)
        comfy.model_management.throw_exception_if_processing_interrupted()

    @staticmethod
    def check() -> None:
        """Raise ComfyUI's interruption if cancel was pressed."""
        comfy.model_management.throw_exception_if_processing_interrupted()


def cached(load: Callable[..., object]) -> Callable[..., object]:
    """``load`` remembering its last result per arguments (a model stays loaded while the graph
    keeps asking for it; ComfyUI frees a node's outputs, not this)."""
    memory: dict[tuple, object] = {}

    def remembered(*args: object) -> object:
        if args not in memory:
            memory.clear()  # one model of a kind at a time
            memory[args] = load(*args)
        return memory[args]

    return remembered


class Node:
    """A node class as ComfyUI reads it: ``RETURN_TYPES``, ``CATEGORY``, ``FUNCTION`` (``run``),
    ``DESCRIPTION`` (the class's docstring, which the page shows) and ``INPUT_TYPES``, made from
    :attr:`INPUTS` (name -> ComfyUI's input spec; a callable in place of a COMBO's list is
    called each time the page asks, so the lists of model folders are current)."""

    FUNCTION = "run"
    INPUTS: ClassVar[dict[str, tuple]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.DESCRIPTION = " ".join((cls.__doc__ or "").split())

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {name: (kind() if callable(kind) else kind, *rest)
                             for name, (kind, *rest) in cls.INPUTS.items()}}  # fmt: skip
