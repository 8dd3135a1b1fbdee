"""A tiny random open_clip ViT CLIP (for tests, examples and offline smoke runs).

Same structure as open_clip's ViT-B-16-quickgelu, far fewer channels: a 4-block vision tower
of width 32 with 16-pixel patches on a 224-pixel grid (the default crop, so the windows' token
grids need no position interpolation) and a 1-block text tower that keeps CLIP's 49408-token
vocabulary, so open_clip's bundled tokenizer works. Its masks are noise: it exists to run the
whole machinery without downloading CLIP weights.

    itaclip tiny-model ./tiny-clip        # or: save_tiny_model("./tiny-clip")
    itaclip segment photo.jpg --classes "cat,dog,sky" --model ./tiny-clip -o out/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

from common_kernels.runtime.cli import check_folder_writable
from common_kernels.runtime.errors import InvalidValue, argument_errors, literal
from common_kernels.runtime.files import atomic_directory, write_json

MAX_SEED = 2**64 - 1  # torch.manual_seed takes seeds in [0, 2**64)
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def check_seed(seed: int) -> None:
    """``seed`` is an integer in [0, 2**64 - 1] (what ``torch.manual_seed`` takes).

    Args:
        seed: the seed.

    Raises:
        InvalidArgument: (``seed``) another value.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        message = f"must be an integer in [0, 2**64 - 1], got {seed!r}"
        raise InvalidValue("seed", "{seed} " + literal(message))


def tiny_clip(seed: int = 0) -> nn.Module:
    """A seeded random open_clip CLIP built from ``TINY_CONFIG`` (eval mode, on the CPU).

    LayerNorm affine parameters and biases get a small random offset so that no layer is an
    exact identity at initialisation.

    Args:
        seed: torch seed of the weights, in [0, 2**64 - 1].
    """
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CONFIG)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model folder loadable offline by open_clip (``local-dir:DIR``),
    ``Segmenter.from_pretrained("local-dir:DIR")`` and ``itaclip segment --model DIR``.

    The folder holds ``open_clip_config.json`` (``{"model_cfg": TINY_CONFIG}``) and
    ``open_clip_model.safetensors``, written by ``common_kernels.runtime.files.atomic_directory``
    (a new
    folder appears complete or not at all; the files get the usual permissions).

    Args:
        directory: the folder to write (created with its parents when missing).
        seed: torch seed of the weights.

    Returns:
        The folder.

    Raises:
        InvalidArgument: (``seed``) not a seed; (``directory``) a file, or a folder that
            cannot be created or written.
    """
    directory = Path(directory)
    check_seed(seed)
    with argument_errors("directory"):
        check_folder_writable(directory, "directory")
    state = {key: value.contiguous() for key, value in tiny_clip(seed).state_dict().items()}
    with atomic_directory(directory, make_parents=True) as temp:
        save_file(state, temp / WEIGHTS_FILE)
        write_json(temp / CONFIG_FILE, {"model_cfg": TINY_CONFIG}, indent=1)
    return directory
