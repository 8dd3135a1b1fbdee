"""``semanir app``: a local Gradio page that restores one image at a time.

An image goes in with its task and model (the task's bundled model by default, any bundled
model, or a model folder or hub id given to the page); the input and the restored image appear
side by side, the PSNR against a clean reference when one is given, a progress bar over the
tiles while it works, and the restored image to download: written losslessly (PNG at the
input's bit depth, alpha, ICC profile and EXIF kept) and atomically into the output folder.
Every check runs before the model works, and a bad input shows the API's one-line message in
the page with nothing written.

:class:`RestoreApp` holds the logic and is tested without a browser; :func:`build_app` lays out
the page and wires it to the app; :func:`serve` is ``semanir app``. Offline, a hub id given to
the page is not offered and the page says why; the bundled models always are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common_kernels.runtime.app import (
    check_port,
    import_gradio,
    launch_blocks,
    page,
    shows_bad_input,
)
from common_kernels.runtime.cli import check_folder_writable
from common_kernels.runtime.errors import InvalidArgument, argument_errors, literal
from common_kernels.runtime.files import convert_channels
from common_kernels.runtime.hub import HubUnreachableError, check_hub, is_hub_id, looks_like_path
from common_kernels.runtime.photos import Photo, read_photo, write_photo
from common_kernels.runtime.progress import reporting_to
from semanir.batch import restore_photo
from semanir.bundled import BUNDLED_MODELS, installed_models, model_for_task
from semanir.inference import (
    check_inference_options,
    check_model_for_task,
    load_for_task,
    read_model_config,
)
from semanir.io import to_uint8_array
from semanir.metrics import psnr
from semanir.tasks import COMMAND_LINE_TASKS, get_task

AUTO = "auto"  # the bundled model of the task for the image's channels
DEFAULT_TILE = 128
TILE_OVERLAP = 32
# told (done, total) tiles as they finish
TileProgress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Restoration:
    """What one restore gave.

    Args:
        before: the input as the page shows it, 8-bit (H, W) or (H, W, 3).
        after: the restored image as the page shows it, 8-bit.
        path: the restored image's file (PNG at the input's bit depth).
        model: the model that restored it.
        psnr: PSNR in dB against the clean reference (None without one).
    """

    before: np.ndarray
    after: np.ndarray
    path: Path
    model: str
    psnr: float | None

    def summary(self) -> str:
        """One markdown line: the sizes, the model, the PSNR and the file."""
        (h, w), (out_h, out_w) = self.before.shape[:2], self.after.shape[:2]
        score = "" if self.psnr is None else f", PSNR {self.psnr:.2f} dB against the reference"
        return f"{w}x{h} -> {out_w}x{out_h} px with `{self.model}`{score}; written to `{self.path}`"


class RestoreApp:
    """The page's logic: checks, the models (each loaded once), restoring and writing.

    Args:
        output: the folder the restored images go to (created on the first write).
        models: model folders or hub ids offered besides the bundled models; a hub id the hub
            cannot provide now (offline, not cached) is set aside and named in :meth:`note`.
        device: where the models run (None: CUDA when present, else the CPU).
    """

    def __init__(
        self,
        output: str | Path,
        models: Sequence[str] = (),
        device: torch.device | None = None,
    ) -> None:
        self.output = Path(output)
        with argument_errors("output"):
            check_folder_writable(self.output, "output")
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.extra: list[str] = []
        self.unreachable: dict[str, str] = {}
        for name in models:
            self._offer(name)
        self.loaded: dict[str, nn.Module] = {}
        self.written = 0

    def _offer(self, name: str) -> None:
        if is_hub_id(name) and not looks_like_path(name) and name not in BUNDLED_MODELS:
            try:
                check_hub(name)
            except HubUnreachableError as error:
                self.unreachable[name] = str(error)
                return
        self.extra.append(name)

    def model_names(self, task: str) -> list[str]:
        """The page's model choices for ``task``: :data:`AUTO`, the task's bundled models,
        then the models given to the app."""
        bundled = [model.name for model in installed_models() if model.task == task]
        return [AUTO, *bundled, *self.extra]

    def note(self) -> str:
        """Which models the page offers, and which hub models it would use but cannot now."""
        names = ", ".join(f"`{model.name}`" for model in installed_models())
        lines = [f"Models: the bundled {names}" + "".join(f", `{m}`" for m in self.extra) + "."]
        for name, reason in self.unreachable.items():
            lines.append(f"Not offered: the hub model `{name}` ({reason}).")
        return "\n\n".join(lines)

    def restore(
        self,
        image: str | Path | None,
        task: str = "denoise",
        model: str = AUTO,
        reference: str | Path | None = None,
        tile: int = DEFAULT_TILE,
        on_tiles: TileProgress | None = None,
    ) -> Restoration:
        """Check everything, restore ``image`` and write the result into the output folder.

        Args:
            image: the image file.
            task: "denoise", "jpeg" or "sr".
            model: :data:`AUTO` (the task's bundled model for the image's channels), a bundled
                name, or one of the models given to the app.
            reference: a clean image of the restored image's size, for PSNR; None for none.
            tile: tile side in input pixels (0: the whole image when it fits in memory).
            on_tiles: told ``(done, total)`` as the tiles finish.

        Raises:
            InvalidArgument: a bad input (nothing is written then).
        """
        if image is None:
            raise InvalidArgument("image", "none given: upload an image to restore")
        record = get_task(task, among=COMMAND_LINE_TASKS)
        photo = read_photo(image)
        name = self._model_name(model, task, photo)
        config = read_model_config(name)
        check_model_for_task(config, task)
        options = self._tile_options(config, tile)
        scale = int(config.get("upscale", 1))
        clean = None if reference is None else self._reference(reference, photo, scale)
        restored = self._run(name, task, photo, options, on_tiles)
        self.written += 1
        path = self.output / f"{self.written:03d}_{Path(image).stem}_{task}.png"
        write_photo(path, restored)
        score = None
        if clean is not None:
            channels = "gray" if restored.channels == 1 else "rgb"
            score = float(psnr(
                restored.pixels, convert_channels(clean.pixels, channels),
                crop_border=scale if record.crop_border else 0,
                y_channel=record.y_channel and restored.channels == 3,
            ))  # fmt: skip
        before, after = to_uint8_array(photo.pixels), to_uint8_array(restored.pixels)
        return Restoration(before, after, path, str(name), score)

    def _model_name(self, model: str, task: str, photo: Photo) -> str:
        if model == AUTO:
            return model_for_task(task, "gray" if photo.channels == 1 else "rgb").name
        if model not in self.model_names(task) and model not in BUNDLED_MODELS:
            offered = ", ".join(self.model_names(task))
            raise InvalidArgument("model", literal(f"must be one of {offered}, got {model!r}"))
        return model

    @staticmethod
    def _tile_options(config: dict[str, Any], tile: int | float) -> dict[str, Any]:
        if tile != int(tile) or tile < 0:
            raise InvalidArgument(
                "tile", f"must be 0 (whole image) or a size in pixels, got {tile}"
            )
        side = "auto" if int(tile) == 0 else int(tile)
        overlap = TILE_OVERLAP if side == "auto" else min(TILE_OVERLAP, side // 4)
        check_inference_options(config, tile=side, tile_overlap=overlap, k=None)
        return {"tile": side, "tile_overlap": overlap}

    @staticmethod
    def _reference(reference: str | Path, photo: Photo, scale: int) -> Photo:
        clean = read_photo(reference)
        height, width = photo.size[0] * scale, photo.size[1] * scale
        if clean.size != (height, width):
            ref_h, ref_w = clean.size
            raise InvalidArgument(
                "reference",
                f"is {ref_w}x{ref_h} px; a clean reference has the restored image's size, "
                f"{width}x{height} px",
            )
        return clean

    def _run(
        self,
        name: str,
        task: str,
        photo: Photo,
        options: dict[str, Any],
        on_tiles: TileProgress | None,
    ) -> Photo:
        if name not in self.loaded:
            self.loaded[name] = load_for_task(name, task, self.device)

        def tiles(desc: str, done: int, total: int | None, unit: str) -> None:
            if on_tiles is not None and desc == "tiles":
                on_tiles(done, total)

        with reporting_to(tiles):
            return restore_photo(self.loaded[name], photo, **options)


def build_app(app: RestoreApp, title: str = "SemanIR") -> Any:
    """The Gradio page of ``app`` (a ``gradio.Blocks``; :func:`serve` serves it)."""
    gr = import_gradio("semanir[app]")

    tile_bar = gr.Progress()  # Gradio gives each call its own bar through this default

    def restore(image, task, model, reference, tile, progress=tile_bar):
        def on_tiles(done: int, total: int | None) -> None:
            progress((done, total), desc="restoring", unit="tiles")

        done = app.restore(image, task, model, reference, int(tile or 0), on_tiles)
        return done.before, done.after, str(done.path), done.summary()

    def models_of(task: str):
        return gr.Dropdown(choices=app.model_names(task), value=AUTO)

    intro = (
        "Restore an image: denoise, remove JPEG artefacts or upscale x4. The result is written "
        f"losslessly to `{app.output}`."
    )
    with page(title, intro, app.note()) as blocks:
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="image", type="filepath", image_mode=None, height=240, elem_id="image"
                )
                task = gr.Radio(list(COMMAND_LINE_TASKS), value="denoise", label="task")
                model = gr.Dropdown(app.model_names("denoise"), value=AUTO, label="model")
                reference = gr.Image(
                    label="clean reference (optional: PSNR)", type="filepath", image_mode=None,
                    height=240, elem_id="reference",
                )  # fmt: skip
                tile = gr.Number(DEFAULT_TILE, label="tile (px; 0: whole image)", precision=0)
                button = gr.Button("restore", variant="primary")
            with gr.Column():
                with gr.Row():
                    before = gr.Image(label="before", format="png", height=320, elem_id="before")
                    after = gr.Image(label="after", format="png", height=320, elem_id="after")
                summary = gr.Markdown(elem_id="summary")
                download = gr.File(label="restored image (PNG, full bit depth)")
        task.change(models_of, task, model)
        button.click(
            shows_bad_input(restore), [image, task, model, reference, tile],
            [before, after, download, summary], api_name="restore",
        )  # fmt: skip
    return blocks


def serve(
    output: str | Path,
    *,
    models: Sequence[str] = (),
    device: torch.device | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
) -> None:
    """``semanir app``: build the page and serve it until interrupted.

    Args:
        output: the folder of the restored images.
        models: model folders or hub ids offered besides the bundled ones.
        device: where the models run.
        host, port, share: where to serve it (:func:`common_kernels.runtime.app.launch_blocks`).
    """
    check_port(port)
    app = RestoreApp(output, models, device)
    page = build_app(app)
    launch_blocks(page, host=host, port=port, share=share, allowed_paths=[app.output])
