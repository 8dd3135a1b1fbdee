"""The models whose weights ship in the wheel, by name and by task.

``load_model("semanir_tiny_sr_x4")``, ``semanir restore --model semanir_tiny_sr_x4`` and
``semanir models`` read this table. Each entry's weights are the ``save_pretrained`` folder
``semanir/weights/<name>``; an entry whose folder is absent from an installation is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from common_kernels.runtime.errors import InvalidValue, literal
from semanir.tasks import COMMAND_LINE_TASKS, get_task

DEFAULT_MODEL = "semanir_tiny_denoise_gray"


@dataclass(frozen=True)
class BundledModel:
    """A model shipped with semanir.

    Args:
        name: the name to load it by.
        task: the task it restores (:data:`semanir.tasks.TASKS`, whose record names it among
            its ``bundled`` models).
        channels: "gray" or "rgb", what it takes.
        scale: output / input size (1, or the super-resolution factor).
        training: the data it was trained on.
        measured: its measured quality, as the README's results table gives it.
    """

    name: str
    task: str
    channels: str
    scale: int
    training: str
    measured: str

    @property
    def folder(self) -> Path:
        """The ``save_pretrained`` folder of its weights inside the package."""
        return Path(str(resources.files("semanir") / "weights" / self.name))

    def is_installed(self) -> bool:
        return (self.folder / "model.safetensors").is_file()


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            "semanir_tiny_denoise_gray", "denoise", "gray", 1,
            "Train400 (400 gray 180x180), blind sigma 0-55",
            "Set12 PSNR 32.41 / 30.13 / 26.94 dB at sigma 15 / 25 / 50 (BM3D 32.39 / 29.98 / "
            "26.75)",
        ),
        BundledModel(
            "semanir_tiny_jpeg_gray", "jpeg", "gray", 1,
            "Train400 + the luma of BSDS400 (800 images), blind quality 10-90, fine-tuned from "
            "semanir_tiny_denoise_gray",
            "Classic5 PSNR 29.23 / 31.52 / 32.80 / 33.65 dB at quality 10 / 20 / 30 / 40 (JPEG "
            "27.82 / 30.12 / 31.48 / 32.43)",
        ),
        BundledModel(
            "semanir_tiny_denoise_color", "denoise", "rgb", 1,
            "BSDS400 (400 colour photos), blind sigma 0-55, fine-tuned from "
            "semanir_tiny_denoise_gray",
            "Set14 colour (12 images) PSNR 32.03 / 30.25 / 27.59 dB at sigma 15 / 25 / 50, "
            "below CBM3D (33.14 / 30.92 / 27.95)",
        ),
        BundledModel(
            "semanir_tiny_sr_x4", "sr", "rgb", 4,
            "BSDS400 (400 colour photos), bicubic x4, from scratch",
            "Y-channel PSNR Set5 30.85 dB, Set14 27.78 dB (bicubic 28.43, 26.10)",
        ),
    )
}  # fmt: skip


def installed_models() -> list[BundledModel]:
    """The bundled models whose weights this installation holds, in table order."""
    return [model for model in BUNDLED_MODELS.values() if model.is_installed()]


def known_names() -> str:
    """The installed bundled names, for messages."""
    return ", ".join(model.name for model in installed_models()) or "none"


def bundled_model(name: str) -> BundledModel:
    """The installed bundled model called ``name``.

    Raises:
        KeyError: no such name, or its weights are not in this installation; the message lists
            the installed names.
    """
    model = BUNDLED_MODELS.get(name)
    if model is None or not model.is_installed():
        raise KeyError(f"unknown bundled model {name!r}; bundled models: {known_names()}")
    return model


def model_for_task(task: str, channels: str) -> BundledModel:
    """The bundled model that ``semanir restore --task TASK`` uses without ``--model``: the
    first installed one of the task's ``bundled`` models (:data:`semanir.tasks.TASKS`) that takes
    ``channels``, else its first installed one (denoising: the colour model for colour images,
    the gray one for gray images; a gray JPEG model restores a colour image's luma).

    Args:
        task: one of :data:`semanir.tasks.COMMAND_LINE_TASKS` ("denoise", "jpeg", "sr").
        channels: "gray" or "rgb", the image's.

    Raises:
        InvalidArgument: an unknown task.
        ValueError: none of the installed models does it.
    """
    record = get_task(task, among=COMMAND_LINE_TASKS)
    candidates = [
        BUNDLED_MODELS[name]
        for name in record.bundled
        if name in BUNDLED_MODELS and BUNDLED_MODELS[name].is_installed()
    ]
    if not candidates:
        raise InvalidValue(
            "task",
            f"no bundled model does {{task={task!r}}}; bundled models: "
            f"{literal(known_names())} (or pass {{model}} FOLDER_OR_HUB_ID)",
        )
    same_channels = [model for model in candidates if model.channels == channels]
    return (same_channels or candidates)[0]


def describe_installed() -> str:
    """The installed bundled models, one block each: name, task, size, data, measured PSNR."""
    blocks = []
    for model in installed_models():
        size = (model.folder / "model.safetensors").stat().st_size / 2**20
        scale = f", x{model.scale}" if model.scale > 1 else ""
        blocks.append(
            f"{model.name}\n  task {model.task} ({model.channels}{scale}), {size:.1f} MB\n"
            f"  trained on {model.training}\n  {model.measured}"
        )
    return "\n".join(blocks)
