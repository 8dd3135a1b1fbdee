"""``itaclip app``: a local Gradio page that segments one image at a time.

An image goes in with class names (``cat, dog, sky``; ``|`` separates the names of one class)
or a dataset preset (its classes, auxiliary texts, background and settings); out come the
colour overlay with its legend and the share of the image each class covers. Every check runs
before the model works, and a bad input shows the API's one-line message in the page. The page
writes no file.

:class:`SegmentApp` holds the logic and is tested without a browser; :func:`build_app` lays out
the page; :func:`open_app` loads the model the page uses: the hub model when the hub
can provide it, else (offline) the tiny random model, saying which hub model it would use.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common_kernels.runtime.app import (
    check_port,
    import_gradio,
    launch_blocks,
    page,
    shows_bad_input,
)
from common_kernels.runtime.batch import CommandSession
from common_kernels.runtime.cli import UsageError
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.photos import read_photo
from itaclip.inputs import parse_class_option
from itaclip.io import to_rgb_tensor
from itaclip.presets import PRESETS, dataset_classes
from itaclip.viz import overlay, palette

if TYPE_CHECKING:
    from itaclip.segmenter import Segmenter

HUB_MODEL = ("ViT-B-16-quickgelu", "openai")  # open_clip ViT-B/16 with OpenAI's weights
CUSTOM = "(your classes)"
# the tiny model's settings, kept over a preset's: seconds per image on a CPU
TINY_SETTINGS = {"short_side": 224, "stride": 112}


@dataclass(frozen=True)
class ClassShare:
    """One class present in a segmentation.

    Args:
        name: its display name.
        colour: its overlay colour, ``#rrggbb``.
        share: the fraction of the image's pixels labelled with it.
    """

    name: str
    colour: str
    share: float


@dataclass(frozen=True)
class SegmentedImage:
    """What one segmentation gave.

    Args:
        overlay: the labels blended over the image with a legend, 8-bit RGB (H, W + legend, 3).
        labels: (H, W) class indices.
        shares: the classes present, largest share first.
    """

    overlay: np.ndarray
    labels: torch.Tensor
    shares: tuple[ClassShare, ...]

    def table(self) -> str:
        """The legend and shares as an HTML table (a colour swatch, the name, the share)."""
        rows = "".join(
            f'<tr><td><span style="display:inline-block;width:1em;height:1em;'
            f'background:{share.colour}"></span></td><td>{html.escape(share.name)}</td>'
            f"<td>{100 * share.share:.1f}%</td></tr>"
            for share in self.shares
        )
        return f"<table><tr><th></th><th>class</th><th>share</th></tr>{rows}</table>"


def open_app(
    model_name: str = HUB_MODEL[0],
    pretrained: str | None = HUB_MODEL[1],
    device: str | torch.device | None = None,
) -> SegmentApp:
    """The page's logic on the hub model when it can be loaded; when the hub cannot provide it
    now (offline, not cached), on the tiny random model of :mod:`itaclip.tiny` (its masks are
    noise; :data:`TINY_SETTINGS`), its note naming the hub model it would use and why not.

    Args:
        model_name, pretrained, device: as in :meth:`Segmenter.from_pretrained`.
    """
    # open_clip takes seconds to import: ``itaclip app --help`` and its parsing go without it
    import open_clip

    from itaclip.segmenter import Segmenter, check_from_pretrained
    from itaclip.tiny import TINY_CONFIG, tiny_clip

    plan = check_from_pretrained(model_name, pretrained, None, device)
    try:
        return SegmentApp(Segmenter.load(plan), f"Model: open_clip {plan.source.describe()}.")
    except HubUnreachableError as error:
        tokenizer = open_clip.SimpleTokenizer(
            context_length=TINY_CONFIG["text_cfg"]["context_length"]
        )
        tiny = Segmenter(tiny_clip(0), tokenizer, plan.config).to(plan.device)
        note = (
            f"Offline: the hub model open_clip {plan.source.describe()} cannot be loaded now "
            f"({error}). Running the tiny random model instead: its masks are noise."
        )
        return SegmentApp(tiny, note, TINY_SETTINGS)


class SegmentApp:
    """The page's logic: the classes of a call, the segmentation, the overlay and the shares.

    Args:
        segmenter: the model (any preset; a dataset preset chosen in the page applies its
            settings and classes to the call).
        note: the line the page shows about the model.
        settings: ``SegmenterConfig`` fields applied to every call, over a preset's.
    """

    def __init__(
        self, segmenter: Segmenter, note: str = "", settings: Mapping[str, Any] | None = None
    ) -> None:
        self.settings = dict(settings or {})
        self.segmenter = segmenter.with_config(**self.settings)
        self.note = note

    def segment(
        self, image: str | Path | None, classes: str = "", preset: str = CUSTOM
    ) -> SegmentedImage:
        """Segment an image file into ``classes``, or into a dataset preset's classes.

        Args:
            image: the image file.
            classes: ``"cat, dog, sky"`` (``|`` between the names of one class); used when
                ``preset`` is :data:`CUSTOM`.
            preset: a dataset preset (``itaclip.PRESETS``) or :data:`CUSTOM`.

        Raises:
            InvalidArgument: a bad input, named.
        """
        if image is None:
            raise InvalidArgument("image", "none given: upload an image to segment")
        if preset != CUSTOM and preset not in PRESETS:
            offered = ", ".join([CUSTOM, *PRESETS])
            raise InvalidArgument("preset", f"must be one of {offered}, got {preset!r}")
        if preset == CUSTOM and not classes.strip():
            raise InvalidArgument("classes", "none given: name them, e.g. cat, dog, sky")
        rgb = to_rgb_tensor(read_photo(image))  # (3, H, W)
        segmenter, call = self._call(classes, preset)
        result = segmenter(rgb, **call)
        names = result.class_names
        canvas = np.asarray(overlay(rgb, result.labels, names))
        counts = torch.bincount(result.labels.flatten(), minlength=len(names))
        colours = palette(len(names))
        shares = tuple(
            ClassShare(names[i], "#{:02x}{:02x}{:02x}".format(*colours[i]), float(share))
            for i in counts.argsort(descending=True).tolist()
            if (share := counts[i] / result.labels.numel()) > 0
        )
        return SegmentedImage(canvas, result.labels, shares)

    def _call(self, classes: str, preset: str) -> tuple[Segmenter, dict[str, Any]]:
        """The segmenter (with a preset's settings) and the classes of the call."""
        if preset == CUSTOM:
            return self.segmenter, {"classes": parse_class_option(classes)}
        segmenter = self.segmenter.with_config(**{**vars(PRESETS[preset]), **self.settings})
        data = dataset_classes(preset)
        call = {
            "classes": [list(names) for names in data.queries],
            "aux_texts": list(data.aux_texts(segmenter.config.aux)),
            "background": data.background,
        }
        return segmenter, call


def build_app(app: SegmentApp, title: str = "ITACLIP") -> Any:
    """The Gradio page of ``app`` (a ``gradio.Blocks``)."""
    gr = import_gradio("itaclip[app]")

    def segment(image, classes, preset):
        done = app.segment(image, classes or "", preset)
        return done.overlay, done.table()

    intro = (
        "Open-vocabulary segmentation: name the classes (`cat, dog, sky`; `|` between the names "
        "of one class) or pick a dataset preset."
    )
    with page(title, intro, app.note) as blocks:
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="image", type="filepath", image_mode=None, height=320, elem_id="image"
                )
                classes = gr.Textbox(label="classes", placeholder="cat, dog, sky")
                preset = gr.Dropdown([CUSTOM, *PRESETS], value=CUSTOM, label="dataset preset")
                button = gr.Button("segment", variant="primary")
            with gr.Column():
                painted = gr.Image(label="overlay", format="png", height=320, elem_id="overlay")
                shares = gr.HTML(elem_id="shares")
        button.click(
            shows_bad_input(segment), [image, classes, preset], [painted, shares],
            api_name="segment",
        )  # fmt: skip
    return blocks


def add_app_command(commands: argparse._SubParsersAction) -> None:
    """The ``itaclip app`` subcommand's options."""
    app = commands.add_parser("app", help="a local web page (pip install 'itaclip[app]')")
    app.add_argument("--model", default=HUB_MODEL[0], help="open_clip model name, hub id or "
                     "folder (default: %(default)s; offline: the tiny model)")  # fmt: skip
    app.add_argument("--pretrained", default=HUB_MODEL[1], help="(default: %(default)s)")
    app.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    app.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    app.add_argument("--port", type=int, default=7860, help="TCP port, in [1, 65535] (default: "
                     "%(default)s)")  # fmt: skip
    app.add_argument("--share", action="store_true", help="also open a public Gradio link")


def run_app(args: argparse.Namespace, session: CommandSession) -> int:
    """``itaclip app``: load the model (or the tiny one offline), serve the page."""
    try:
        import_gradio("itaclip[app]")
    except ImportError as error:
        raise UsageError(str(error)) from None
    check_port(args.port)
    app = open_app(args.model, args.pretrained, args.device)
    print(f"itaclip app: {app.note}", file=sys.stderr)
    launch_blocks(build_app(app), host=args.host, port=args.port, share=args.share)
    return 0
