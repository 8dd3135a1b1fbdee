"""``diffeat app``: a local Gradio page that shows what a diffusion model's activations see.

An image and activation names from the model's catalogue go in; the PCA of each activation's
features comes out as an RGB image, one per activation, labelled with its name and shape (the
``diffeat pca`` colouring: :func:`diffeat.viz.pca_rgb`, the first three principal components
clipped to their 1 % quantiles). Any backbone loads, FLUX.1 and SD3 included: the choices
are its catalogue, the first two names of its default selection (of the catalogue, for a
model no preset fits: HunyuanDiT, DeepFloyd IF) are selected, and the page
states the noise level (a flow-matching model's sigma, else the timestep).
:class:`PcaPage` holds the logic and is tested without a browser; :func:`build_app` lays out
the page. :func:`open_page` loads the model: the one given,
else the hub's SD 1.5 (:data:`HUB_MODEL`), else, with the hub out of reach and SD 1.5 not
cached, the tiny random SD 1.5-shaped model of the tests and ``diffeat tiny-model`` (the page
says which, and says when a model folder holds random weights: :func:`random_note`). The page
writes nothing; a bad input shows the API's one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common_kernels.runtime import app as runtime_app
from common_kernels.runtime.app import launch_blocks
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.hub import HubUnreachableError, check_hub
from diffeat.backbones import backbone_of_model
from diffeat.checks import read_model_configs, resolve_source
from diffeat.configs import RANDOM_WEIGHTS, tiny_pipeline
from diffeat.extraction import BaseFeatureExtractor
from diffeat.extractor import FeatureExtractor
from diffeat.plan import checked_device
from diffeat.presets import PRESETS, SD15_HUB_ID, family_of
from diffeat.schedule import is_flow_matching
from diffeat.viz import pca_rgb

HUB_MODEL = SD15_HUB_ID
APP_SIZE = PRESETS["ours-v1.5"].resolution  # 512: the paper's SD 1.5 input size
SHOWN_BY_DEFAULT = 2  # layers selected when the page opens: the first of the model's selection


class PcaPage:
    """The page's work: one loaded extractor; an image and layer names -> PCA-RGB images.

    Args:
        extractor: the loaded extractor (its ``config.image_size`` is the size images are fed
            at; None keeps each image's own, which must then fit the model).
        note: the line the page shows about the model (which one, and why).
    """

    def __init__(self, extractor: BaseFeatureExtractor, note: str = "") -> None:
        self.extractor = extractor
        self.note = note

    @property
    def choices(self) -> list[str]:
        """Every name the model records: ``vae-out`` and its catalogue, in network order."""
        return [spec.name for spec in self.extractor.activations]

    @property
    def default_layers(self) -> list[str]:
        """The names selected when the page opens (the first of the configured selection)."""
        return list(self.extractor.layers[:SHOWN_BY_DEFAULT])

    @property
    def noise(self) -> str:
        """The page's line on the noise: a flow-matching model's (FLUX, SD3) sigma, else the
        diffusion timestep."""
        plan = self.extractor.plan
        if is_flow_matching(self.extractor.scheduler):
            return (
                f"Noise level: sigma {plan.noise:g} (flow matching: x_t = (1 - sigma) x_0 + "
                "sigma eps)."
            )
        return f"Noise level: timestep {plan.timestep:g}."

    def run(
        self, image: Image.Image | None, layers: Sequence[str], prompt: str = ""
    ) -> list[tuple[Image.Image, str]]:
        """The PCA-RGB image of every requested layer, at the size the image is fed at.

        Args:
            image: the input image (any mode; converted to RGB).
            layers: activation names from :attr:`choices`, in the order shown.
            prompt: the text prompt the network is conditioned on.

        Returns:
            ``(image, "NAME: C channels at hxw")`` per layer.

        Raises:
            InvalidArgument: no image.
            ValueError: the extractor's message for bad layers (none, unknown, duplicated).
        """
        if image is None:
            raise InvalidArgument("image", "no image given: upload one")
        image = image.convert("RGB")
        features = self.extractor(image, prompt, layers=list(layers))
        size = self.extractor.config.image_size or (image.height, image.width)
        shown = []
        for name, feature in features.items():
            rgb = pca_rgb(feature.float(), size)[0]  # (H, W, 3) uint8
            channels, height, width = feature.shape[1:]
            shown.append((Image.fromarray(rgb), f"{name}: {channels} channels at {height}x{width}"))
        return shown


def random_note(model: str | Path) -> str:
    """The page's line saying that a local model folder holds random weights (its
    ``model_index.json`` has the :data:`~diffeat.configs.RANDOM_WEIGHTS` entry that ``diffeat
    tiny-model`` and ``pixelsmith tiny-model`` write); "" otherwise (hub ids included).

    Args:
        model: a hub id or folder.
    """
    try:
        entry = json.loads((Path(model) / "model_index.json").read_text()).get(RANDOM_WEIGHTS)
    except (OSError, ValueError, AttributeError):  # no folder, no JSON object: not marked
        return ""
    if not isinstance(entry, dict):
        return ""
    writer, seed = entry.get("writer"), entry.get("seed")
    by = f" (written by `{writer} --seed {seed}`)" if writer and seed is not None else ""
    return f"Its weights are random{by}, so its features are noise."


def choose_model(model: str | Path | None) -> tuple[str | Path | None, str]:
    """The model to load (None: the tiny random one) and the page's line about it.

    Args:
        model: a hub id or folder; None: :data:`HUB_MODEL` when the hub is in reach or it is
            cached, else the tiny model.
    """
    if model is not None:
        return model, " ".join(filter(None, (f"Model: `{model}`.", random_note(model))))
    try:
        check_hub(HUB_MODEL)
    except HubUnreachableError as error:
        return None, (
            f"Offline ({error}). This page runs the tiny random SD 1.5-shaped model of "
            f"`diffeat tiny-model` (its features are noise); with the hub in reach it runs "
            f"`{HUB_MODEL}`."
        )
    return HUB_MODEL, f"Model: `{HUB_MODEL}`."


def page_selection(model: str | Path) -> dict[str, str]:
    """``{"layers": "all"}`` for a model no paper preset fits (HunyuanDiT, DeepFloyd IF, other
    shapes): the page offers its catalogue all the same and selects the first two names; {}
    for the others, whose preset's first names are selected.

    Args:
        model: a hub id or folder (a fault in it is left to ``from_pretrained`` to name).
    """
    try:
        source = resolve_source(model, "model_id_or_dir")
        configs = read_model_configs(source, backbone=backbone_of_model(source))
    except (OSError, ValueError):
        return {}
    return {} if family_of(configs.unet) else {"layers": "all"}


def open_page(
    model: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    timestep: int = 50,
    dtype: torch.dtype | str = "fp32",
    device: torch.device | str | None = None,
    sigma: float | None = None,
    offload: str | None = None,
) -> PcaPage:
    """Load the page's model (see :func:`choose_model`); gradio is looked for and every
    option checked first.

    Args:
        model: a hub id or folder, or None (see :func:`choose_model`).
        image_size: the size images are resized to (default 512 x 512, SD 1.5's).
        timestep: the diffusion timestep of the features.
        dtype: the weights' dtype (``fp32``, ``fp16``, ``bf16``).
        device: where the model runs (default: cuda when available, else cpu).
        sigma: FLUX/SD3: the noise level in [0, 1] (default: ``timestep / 1000``).
        offload: ``"model"``: model CPU offload (see :class:`~diffeat.ExtractorConfig`).

    Raises:
        ImportError: without gradio: ``needs gradio: pip install 'diffeat[app]'``.
        InvalidArgument: a bad option, before any weights load.
    """
    runtime_app.import_gradio("diffeat[app]")  # before the model loads
    source, note = choose_model(model)
    options = {"image_size": image_size or APP_SIZE, "timestep": timestep, "output_device": "cpu"}
    options.update({k: v for k, v in (("sigma", sigma), ("offload", offload)) if v is not None})
    if source is not None:
        options.update(page_selection(source))
        extractor = FeatureExtractor.from_pretrained(source, dtype=dtype, device=device, **options)
    else:
        extractor = FeatureExtractor.from_pipeline(tiny_pipeline("sd15"), **options)
        extractor.to(checked_device(device))
    return PcaPage(extractor, note)


def build_app(page: PcaPage, title: str = "diffeat: PCA of diffusion features") -> Any:
    """The Gradio page of ``page`` (a ``gradio.Blocks``; serve it with ``launch_blocks``)."""
    gr = runtime_app.import_gradio("diffeat[app]")

    def show(image: Image.Image | None, layers: list[str], prompt: str):
        return page.run(image, layers or [], prompt or "")

    intro = (
        "Each selected activation's features, their first three principal components as red, "
        f"green and blue. {page.noise}"
    )
    with runtime_app.page(title, intro, page.note) as demo:
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="pil", elem_id="image")
                layers = gr.Dropdown(
                    page.choices, value=page.default_layers, multiselect=True,
                    label="activations (the model's catalogue)", elem_id="layers",
                )  # fmt: skip
                prompt = gr.Textbox(label="prompt (optional)", elem_id="prompt")
                button = gr.Button("show", variant="primary", elem_id="run")
            gallery = gr.Gallery(
                label="PCA of each activation", format="png", columns=2, elem_id="pca"
            )
        shown = runtime_app.shows_bad_input(show, (ValueError, TypeError))
        button.click(shown, [image, layers, prompt], gallery, api_name="pca")
    return demo


def launch_page(page: PcaPage, *, host: str, port: int, share: bool) -> None:
    """Serve the page of ``page`` until interrupted (what ``diffeat app`` does)."""
    launch_blocks(build_app(page), host=host, port=port, share=share)


def serve(
    *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **page_options: Any
) -> None:
    """What ``diffeat app`` does: ``port`` checked, then :func:`open_page` with
    ``page_options`` (each checked before any weights load), then the page served until
    interrupted.

    Raises:
        InvalidArgument: (``port``) not in [1, 65535], before anything loads.
    """
    runtime_app.check_port(port)
    launch_page(open_page(**page_options), host=host, port=port, share=share)
