"""``pixelsmith app``: a local Gradio page that generates through the cascade, stage by stage.

A prompt and the cascade's main options go in (stage sizes, sliders, steps, guidance, seed,
a negative prompt, with the API's ranges); each stage's image is shown as soon as the stage is
finished (:func:`pixelsmith.cascade.run_cascade`'s ``on_stage`` hook, the run in a worker
thread feeding a generator), and the final image is written losslessly and atomically as a PNG
into the output folder, offered for download. :class:`CascadePage` holds the logic and is tested
without a browser; :func:`build_app` lays out the page. :func:`open_page` loads the model: the
one given, else SDXL base 1.0 with the fp16-fix VAE from the hub, else (the hub out of reach,
neither cached) the tiny random SDXL-shaped model of ``pixelsmith tiny-model``, saying which on
the page. Every input is checked by the API (:func:`pixelsmith.options.check_cascade`) before
any work: a bad one shows its one-line message in the page, and nothing is written.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime import app as runtime_app
from common_kernels.runtime.app import launch_blocks
from common_kernels.runtime.cli import check_device, check_folder_writable
from common_kernels.runtime.errors import argument_errors
from common_kernels.runtime.files import atomic_write
from common_kernels.runtime.hub import HubUnreachableError
from pixelsmith.config import PixelsmithConfig
from pixelsmith.io import collect_uint8
from pixelsmith.options import MAX_SEED, CascadeOptions, CascadePlan, check_cascade
from pixelsmith.sources import DEFAULT_MODEL, LoadPlan, check_from_pretrained

# diffusers (pixelsmith.cascade, .pipelines, .tiny) is imported where a model is built or run,
# so that serve's checks answer a bad option without it
if TYPE_CHECKING:
    from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline

Shown = list[tuple[Image.Image, str]]


@dataclass(frozen=True)
class PageDefaults:
    """The values the page opens with.

    Args:
        sizes: stage sizes in px, space-separated (``S`` or ``HxW``).
        sliders: one slider per stage after the first, space-separated.
        steps: denoising steps per stage.
        guidance: classifier-free guidance scale.
    """

    sizes: str = "1024 2048"
    sliders: str = "30"
    steps: int = 50
    guidance: float = 7.5


# the tiny model: small stages and patches (its images are noise; the machinery is real)
TINY_DEFAULTS = PageDefaults(sizes="128 256", sliders="3", steps=4)
TINY_CONFIG = PixelsmithConfig(patch_size=16, band=4, vae_tile=16, vae_overlap=4)


def split_values(text: str) -> list[int | str]:
    """Space- or comma-separated values, ints where they are ints (the API checks the rest)."""
    return [int(item) if item.isdigit() else item for item in re.split(r"[\s,]+", text.strip())
            if item]  # fmt: skip


class CascadePage:
    """The page's work: one loaded pipeline; a prompt and options -> stage images, a PNG.

    Args:
        pipe: the loaded pipeline.
        output_dir: where the final images go (an existing, writable folder).
        config: the sampler settings of every run (None: the defaults).
        defaults: the values the page opens with (None: SDXL's, :class:`PageDefaults`).
        note: the line the page shows about the model (which one, and why).
    """

    def __init__(
        self,
        pipe: PixelsmithPipeline,
        output_dir: str | Path,
        *,
        config: PixelsmithConfig | None = None,
        defaults: PageDefaults | None = None,
        note: str = "",
    ) -> None:
        self.pipe = pipe
        self.output_dir = Path(output_dir)
        self.config = config or PixelsmithConfig()
        self.defaults = defaults or PageDefaults()
        self.note = note

    @property
    def max_steps(self) -> int:
        """The most steps a stage takes: the scheduler's training timesteps."""
        from pixelsmith.cascade import pipeline_shape

        return pipeline_shape(self.pipe).train_timesteps

    def plan(self, sizes: str, sliders: str, steps: int, guidance: float, seed: int) -> CascadePlan:
        """The run checked by the API (:func:`~pixelsmith.options.check_cascade`): nothing is
        loaded or written; a bad input raises its ``InvalidValue`` (or ``TypeError``)."""
        from pixelsmith.cascade import pipeline_shape

        options = CascadeOptions(
            num_inference_steps=steps, guidance_scale=guidance, seed=seed, config=self.config,
            progress=False,
        )  # fmt: skip
        return check_cascade(
            split_values(sizes), split_values(sliders), options, shape=pipeline_shape(self.pipe),
            device=self.pipe._execution_device,
        )  # fmt: skip

    def run(
        self,
        prompt: str,
        sizes: str,
        sliders: str,
        steps: int,
        guidance: float,
        seed: int,
        negative: str = "",
    ) -> Iterator[tuple[Shown, str | None]]:
        """Generate, yielding what the page shows after every stage.

        Args:
            prompt: the prompt.
            sizes: stage sizes in px, space- or comma-separated (``"1024 2048"``, ``"HxW"``).
            sliders: one slider per stage after the first (``"30"``).
            steps: denoising steps per stage.
            guidance: classifier-free guidance scale.
            seed: seed of every random draw.
            negative: the negative prompt (empty: none).

        Yields:
            (every finished stage's image with its label, the final PNG's path once written).

        Raises:
            InvalidValue: a bad input (before anything runs or is written).
        """
        from pixelsmith.cascade import Prompts, run_cascade

        plan = self.plan(sizes, sliders, steps, guidance, seed)
        last = len(plan.sizes) - 1
        updates: queue.Queue = queue.Queue()

        def on_stage(stage: int, latents: Tensor) -> None:
            if stage < last:  # the final stage's image is what run_cascade returns
                updates.put((stage, self.decode(latents, plan.sizes[stage])))

        def work() -> None:
            try:
                prompts = Prompts(prompt, negative_prompt=negative or None)
                updates.put((last, run_cascade(self.pipe, prompts, plan, on_stage=on_stage)))
            except BaseException as error:  # handed to the page's thread
                updates.put((None, error))

        threading.Thread(target=work, name="pixelsmith-app", daemon=True).start()
        shown: Shown = []
        while True:
            stage, result = updates.get()
            if stage is None:
                raise result
            height, width = plan.sizes[stage]
            label = "final" if stage == last else f"stage {stage}"
            shown.append((result, f"{label}: {height}x{width}"))
            if stage < last:
                yield list(shown), None
            else:
                yield list(shown), str(self.save(result))
                return

    def decode(self, latents: Tensor, size: tuple[int, int]) -> Image.Image:
        """A stage's (1, C, h, w) latent as the image of ``size`` (H, W)."""
        rows = self.pipe.decoded_rows(latents, config=self.config, progress=False)
        return Image.fromarray(collect_uint8(rows, *size))

    def save(self, image: Image.Image) -> Path:
        """Write ``image`` as the next free ``pixelsmith_NNNN.png`` (PNG: lossless; renamed
        into place once complete)."""
        number = 1
        while (self.output_dir / f"pixelsmith_{number:04d}.png").exists():
            number += 1
        path = self.output_dir / f"pixelsmith_{number:04d}.png"
        with atomic_write(path) as temporary:
            image.save(temporary, format="PNG")
        return path


def choose_model(model: str | Path | None, vae: str | Path | None = "auto") -> tuple[
    LoadPlan | None, str
]:  # fmt: skip
    """The checked sources to load (None: the tiny random model) and the page's line.

    Args:
        model: an SDXL hub id or folder; None: SDXL base 1.0 (with ``vae``) when the hub is
            in reach or the models are cached, else the tiny model.
        vae: as :func:`~pixelsmith.sources.check_from_pretrained`, of the given ``model`` or of
            SDXL base 1.0 (``"auto"``: its fp16-fix VAE); checked either way.
    """
    plan = check_from_pretrained(DEFAULT_MODEL if model is None else model, vae)
    with_vae = "" if plan.vae is None else f" with the VAE `{plan.vae}`"
    if model is not None:
        return plan, " ".join(filter(None, (f"Model: `{plan.model}`{with_vae}.", plan.random_note)))
    try:
        plan.check_hub()
    except HubUnreachableError as error:
        return None, (
            f"Offline ({error}). This page runs the tiny random SDXL-shaped model of "
            f"`pixelsmith tiny-model` (its images are noise); with the hub in reach it runs "
            f"`{DEFAULT_MODEL}`{with_vae}."
        )
    return plan, f"Model: `{DEFAULT_MODEL}`{with_vae}."


def open_page(
    output_dir: str | Path,
    model: str | Path | None = None,
    vae: str | Path | None = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CascadePage:
    """Load the page's model (see :func:`choose_model`); gradio is looked for first.

    Args:
        output_dir: where the final images go (created when missing).
        model: an SDXL hub id or folder, or None (see :func:`choose_model`).
        vae: the VAE of ``model`` or of SDXL base 1.0 (``"auto"``, ``None`` or a hub id or
            folder; see :func:`choose_model`).
        device: where the model runs (None: cuda when available, else cpu).
        dtype: the weights' dtype (None: float16 on CUDA, float32 otherwise).

    Raises:
        ImportError: without gradio: ``needs gradio: pip install 'pixelsmith[app]'``.
        InvalidArgument: (``output_dir``) a folder that cannot be created or written;
            (``device``) not a device of this machine; before any weights load.
    """
    from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline, ddim_from_config
    from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_components

    runtime_app.import_gradio("pixelsmith[app]")
    with argument_errors("output_dir"):
        check_folder_writable(Path(output_dir), "output_dir")
    with argument_errors("device"):
        device = check_device(None if device is None else str(device), "device")
    plan, note = choose_model(model, vae)
    if plan is None:
        parts = {**tiny_components(), "scheduler": ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))}
        pipe = PixelsmithPipeline(**parts, add_watermarker=False)
        config, defaults = TINY_CONFIG, TINY_DEFAULTS
    else:
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        pipe = PixelsmithPipeline.from_pretrained(plan, torch_dtype=dtype)
        config, defaults = None, PageDefaults()
    pipe.set_progress_bar_config(disable=True)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return CascadePage(pipe.to(device), output_dir, config=config, defaults=defaults, note=note)


def build_app(page: CascadePage, title: str = "Pixelsmith: cascaded SDXL") -> Any:
    """The Gradio page of ``page`` (a ``gradio.Blocks``; serve it with :func:`launch_page`)."""
    gr = runtime_app.import_gradio("pixelsmith[app]")
    defaults = page.defaults

    def generate(prompt, sizes, sliders, steps, guidance, seed, negative):
        yield from page.run(prompt, sizes, sliders, steps, guidance, seed, negative or "")

    intro = (
        "Plain SDXL at the first size, then Pixelsmith stages up to the last; each stage's image "
        "appears when it is finished."
    )
    with runtime_app.page(title, intro, page.note) as demo:
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="prompt", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt (optional)", elem_id="negative")
                sizes = gr.Textbox(
                    defaults.sizes, label="stage sizes in px (S or HxW, multiples of 8, growing)",
                    elem_id="sizes",
                )  # fmt: skip
                sliders = gr.Textbox(
                    defaults.sliders, label="sliders: one per stage after the first, each in "
                    "[1, steps]", elem_id="sliders",
                )  # fmt: skip
                with gr.Row():
                    steps = gr.Number(
                        defaults.steps, label=f"steps per stage [1, {page.max_steps}]",
                        precision=0, minimum=1, maximum=page.max_steps, elem_id="steps",
                    )  # fmt: skip
                    guidance = gr.Number(defaults.guidance, label="guidance scale")
                    seed = gr.Number(
                        0, label="seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed"
                    )
                button = gr.Button("generate", variant="primary", elem_id="run")
            with gr.Column():
                stages = gr.Gallery(
                    label="stages, as they finish", format="png", columns=2, elem_id="stages"
                )
                final = gr.File(label="final image (PNG)", elem_id="final")
        inputs = [prompt, sizes, sliders, steps, guidance, seed, negative]
        staged = runtime_app.shows_bad_input(generate, (ValueError, TypeError))
        button.click(staged, inputs, [stages, final], api_name="generate")
    return demo


def launch_page(page: CascadePage, *, host: str, port: int, share: bool) -> None:
    """Serve the page of ``page`` until interrupted (Gradio serves its output folder)."""
    blocks = build_app(page)
    launch_blocks(blocks, host=host, port=port, share=share, allowed_paths=[page.output_dir])


def serve(
    output_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    **page_options: Any,
) -> None:
    """What ``pixelsmith app`` does: ``port`` checked, then :func:`open_page` of ``output_dir``
    with ``page_options`` (each checked before any weights load), then the page served until
    interrupted.

    Raises:
        InvalidArgument: (``port``) not in [1, 65535], before anything loads.
    """
    runtime_app.check_port(port)
    launch_page(open_page(output_dir, **page_options), host=host, port=port, share=share)
