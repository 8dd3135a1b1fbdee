"""The Assistant's options, checked before any model loads: the API of ``run``, ``chat``, ``app``
and ``eval``, which the ``vitron`` command calls with its flags' names.

Every check raises ``InvalidValue`` (an ``InvalidArgument``) naming the
argument and the accepted range; the command prints it with its flags (``vitron.cli.FLAGS``),
so the API and the command print the same message. :func:`open_assistant` checks everything of
:class:`AssistantOptions`, then loads the model; :func:`parse_regions` turns box / stroke / mask
texts into regions on the given images and refuses one that is not inside its image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.batch import PYTHON_MENTIONS, ImageListing, InputImage, check_not_inputs
from common_kernels.runtime.cli import check_device
from common_kernels.runtime.cli import one_line as shared_one_line
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, argument_errors, literal
from common_kernels.runtime.files import ImageReadError, check_output_folder_name
from vitron.checks import (
    ARGUMENT_MARK,
    NamedFailure,
    check_at_least,
    check_generation,
    check_input_file,
    check_output_folder,
    check_positive,
    named_in_place,
)
from vitron.invocations import GRAMMARS
from vitron.regions import Region, RegionError, Shape, Stroke, check_inside, parse_box

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REGION_HELP = "index of the image a region is drawn on: append @K (default @0)"


class ModelLoadError(NamedFailure, RuntimeError):
    """The model cannot be loaded (a broken folder, a failed download): a failure while working,
    not a bad option; its message names the argument (:class:`~vitron.checks.NamedFailure`)."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (``common_kernels.runtime.cli.one_line``); an image that
    does
    not decode reads ``PATH is not a readable image (REASON)``."""
    if isinstance(error, ImageReadError):
        return f"{error.path} is not a readable image ({error.reason})"
    return shared_one_line(error)


@dataclass
class AssistantOptions:
    """What :func:`open_assistant` needs: the model, the specialists and the decoding.

    Args:
        model: a Vitron folder or hub id (the loader rule of :mod:`vitron.models.sources`).
        output: the folder the specialists write into (created when missing).
        dtype: ``auto`` (bfloat16 on CUDA, float16 on a GPU without it, float32 elsewhere),
            ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None: cuda when available.
        specialists: a JSON file of adapter name -> options object.
        settings: ``ADAPTER.OPTION=VALUE`` overrides of single specialist options.
        offload: keep each specialist on the CPU between its calls.
        max_new_tokens: tokens per reply, >= 1; :func:`open_assistant` refuses more than the
            model's ``max_length`` leaves after the shortest prompt (a reply stops there too).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature, a finite number > 0.
        top_p: nucleus sampling mass, in (0, 1].
        seed: seed of the sampling and of the specialists, in [0, 2**32 - 1].
        max_rounds: rounds of calls per turn, >= 1; :func:`open_assistant` refuses more rounds
            than the model's ``max_length`` can hold.
        grammar: reply grammar, ``auto``, ``json`` or ``tags``.
    """

    model: str
    output: Path
    dtype: str = "auto"
    device: str | None = None
    specialists: Path | None = None
    settings: Sequence[str] = ()
    offload: bool = True
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    max_rounds: int = 1
    grammar: str = "auto"

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        check_generation(
            self.max_new_tokens, self.temperature, self.top_p, self.seed, self.max_rounds,
        )  # fmt: skip
        if self.dtype not in ("auto", *DTYPES):
            raise InvalidValue(
                "dtype",
                f"{{dtype}} must be auto, {literal(', '.join(DTYPES))}; got {literal(self.dtype)}",
            )
        if self.grammar not in GRAMMARS:
            raise InvalidValue(
                "grammar",
                f"{{grammar}} must be {literal(', '.join(GRAMMARS))}; got {literal(self.grammar)}",
            )


def check_model_and_output(model: str, output: Path) -> Path | str:
    """The model source (loader rule) and a writable output folder whose name has no suffix;
    returns the source (a folder or a hub id)."""
    from vitron.models.sources import check_model_source

    source = check_model_source(model)
    check_output_folder(output, "output")
    with argument_errors("output"):
        check_output_folder_name(output, "output")
    return source


def saved_folder(source: Path | str, patterns: Sequence[str]) -> Path:
    """The folder holding the files ``patterns`` of a Vitron folder or hub id (a hub id
    downloads those only).

    Args:
        source: a folder or hub id (:func:`~vitron.models.sources.check_model_source`).
        patterns: file patterns inside it (``config.json``, ``tokenizer/*``).
    """
    if isinstance(source, Path):
        return source
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=source, allow_patterns=list(patterns)))


def read_model_config(model: str | Path, source: Path | str):
    """The :class:`~vitron.models.config.VitronConfig` of a Vitron folder or hub id, from its
    ``config.json`` alone (no weights, no tokenizer).

    Args:
        model: the model as given (named in messages).
        source: its folder or hub id (:func:`~vitron.models.sources.check_model_source`).

    Raises:
        ModelLoadError: the config cannot be read.
    """
    from vitron.models.config import read_config
    from vitron.models.sources import CONFIG_NAME

    try:
        return read_config(saved_folder(source, [CONFIG_NAME]) / CONFIG_NAME)
    except (OSError, ValueError, KeyError, TypeError) as err:
        message = f"cannot load {{model}} {literal(model)}: {literal(one_line(err))}"
        raise ModelLoadError("model", message) from err


def read_reply_budget(model: str, source: Path | str):
    """The :class:`~vitron.processing.ReplyBudget` of a Vitron folder or hub id, from its
    config and tokenizer alone (no weights load; a hub id downloads those two only).

    Args:
        model: the model as given (named in messages).
        source: its folder or hub id (:func:`~vitron.models.sources.check_model_source`).

    Raises:
        ModelLoadError: the config or the tokenizer cannot be read.
    """
    from vitron.models.config import read_config
    from vitron.models.sources import CONFIG_NAME, TOKENIZER_DIR
    from vitron.processing import reply_budget

    try:
        folder = saved_folder(source, [CONFIG_NAME, f"{TOKENIZER_DIR}/*"])
        from transformers import AutoTokenizer

        config = read_config(folder / CONFIG_NAME)
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder / TOKENIZER_DIR), **config.tokenizer_options
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        message = f"cannot load {{model}} {literal(model)}: {literal(one_line(err))}"
        raise ModelLoadError("model", message) from err
    return reply_budget(tokenizer, config)


def parse_settings(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["itaclip.signal_weight=0.5", ...]`` -> ``{"itaclip": {"signal_weight": 0.5}}``."""
    found: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        adapter, dot, option = key.partition(".")
        if not sep or not dot or not adapter or not option:
            raise InvalidValue(
                "settings", f"{{settings}} takes ADAPTER.OPTION=VALUE, got {literal(repr(pair))}"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # plain strings need no quotes
        found.setdefault(adapter, {})[option] = value
    return found


def read_specialists_file(path: str | Path) -> dict[str, dict]:
    """The specialists JSON file: adapter name -> options object."""
    path = check_input_file(path, "specialists")
    head = f"{{specialists}} {literal(path)}"
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        message = f"{head} is not readable JSON ({literal(one_line(err))})"
        raise InvalidValue("specialists", message) from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        message = f"{head} must hold a JSON object of adapter name -> options object"
        raise InvalidValue("specialists", message)
    return options


def build_registry(
    specialists: str | Path | None,
    settings: Sequence[str],
    device: torch.device,
    offload: bool = True,
):
    """The specialists of a JSON file and ``ADAPTER.OPTION=VALUE`` overrides (nothing loads)."""
    from vitron.specialists import SpecialistRegistry

    options = {} if specialists is None else read_specialists_file(specialists)
    for adapter, values in parse_settings(settings).items():
        options.setdefault(adapter, {}).update(values)
    try:
        return SpecialistRegistry(options, device=device, offload=offload)
    except ValueError as err:
        message = f"{{specialists}}/{{settings}}: {literal(one_line(err))}"
        raise InvalidValue("settings", message) from None


def cuda_bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU that computes bfloat16 natively (compute >= 8.0)."""
    if device.type != "cuda":
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.cuda.get_device_capability(index) >= (8, 0)


def resolve_dtype(name: str, device: torch.device, bf16_supported: bool) -> torch.dtype:
    """The weights dtype of ``name`` on ``device``: ``auto`` is bfloat16 on CUDA (float16 on a
    GPU without bfloat16) and float32 elsewhere; bfloat16 on a CUDA GPU without it is refused."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_supported else torch.float16
    if name == "bfloat16" and device.type == "cuda" and not bf16_supported:
        raise InvalidValue(
            "dtype",
            f"{{dtype}} bfloat16: {literal(device)} does not support bfloat16 "
            f"(use {{dtype}} float16 or auto)",
        )
    return DTYPES[name]


def load_model(model: str, device: torch.device, dtype: torch.dtype):
    """The Vitron model; a failure to load is a :class:`ModelLoadError` naming the argument."""
    from safetensors import SafetensorError

    from vitron.models import VitronModel

    try:
        return VitronModel.from_pretrained(model, dtype=dtype, device=device)
    except (OSError, RuntimeError, ValueError, KeyError, ImportError, SafetensorError) as err:
        message = f"cannot load {{model}} {literal(model)}: {literal(one_line(err))}"
        raise ModelLoadError("model", message) from err


def open_assistant(options: AssistantOptions, scripted_replies: Sequence[str] = ()):
    """Check every option (model source, output folder, device, dtype, specialists, and
    ``max_new_tokens`` and ``max_rounds`` against the positions the model holds, from its config
    and tokenizer), then load the model: the :class:`~vitron.assistant.Assistant` of ``options``.

    Raises:
        InvalidArgument: a bad option, named (before any load).
        ModelLoadError: the model cannot be loaded.
    """
    from vitron.assistant import Assistant
    from vitron.processing import check_reply_budget

    source = check_model_and_output(options.model, options.output)
    with argument_errors("device"):
        device = check_device(options.device, "device")
    dtype = resolve_dtype(options.dtype, device, cuda_bf16_supported(device))
    registry = build_registry(options.specialists, options.settings, device, options.offload)
    budget = read_reply_budget(options.model, source)
    check_reply_budget(options.max_new_tokens, options.max_rounds, budget, options.model)
    return Assistant(
        load_model(options.model, device, dtype), registry, options.output,
        max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
        temperature=options.temperature, top_p=options.top_p, seed=options.seed,
        max_rounds=options.max_rounds, grammar=options.grammar, scripted_replies=scripted_replies,
    )  # fmt: skip


def read_reply_file(path: str | Path | None) -> str | None:
    """The text of a scripted-reply file (None without one)."""
    if path is None:
        return None
    path = check_input_file(path, "reply_file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidValue(
            "reply_file",
            f"{{reply_file}} {literal(path)} is not UTF-8 text ({literal(err.reason)})",
        ) from None


def load_media(
    images: Sequence[str | Path] = (),
    videos: Sequence[str | Path] = (),
) -> tuple[list, list]:
    """The images and videos (GIF or frame folder) of these paths, each checked to decode."""
    from vitron.io import load_image, load_video

    found: tuple[list, list] = ([], [])
    for argument, paths, load, into in (
        ("image", images, load_image, found[0]),
        ("video", videos, load_video, found[1]),
    ):
        for path in paths:
            try:
                into.append(load(path))
            except (OSError, ValueError) as err:
                raise InvalidValue(argument, f"{{{argument}}} {literal(one_line(err))}") from None
    return found


def split_image_index(text: str, argument: str) -> tuple[str, int]:
    """``"BODY@K"`` -> ``(BODY, K)``; no ``@`` is image 0. ``argument`` is the caller's name."""
    body, sep, index = text.rpartition("@")
    if not sep:
        return text, 0
    if not index.isdigit():
        raise ValueError(f"{argument} {text}: bad image index ({REGION_HELP})")
    return body, int(index)


def region_image(images: Sequence, k: int, argument: str):
    """Image ``k`` of ``images``; a missing one is refused naming ``argument``."""
    if not 0 <= k < len(images):
        raise ValueError(f"{argument} refers to image {k}, but {len(images)} image(s) were given")
    return images[k]


def parse_stroke(body: str, width: float) -> Stroke:
    """``"x,y x,y ..."`` (or ``;``-separated) -> a ``Stroke`` of brush ``width``."""
    try:
        points = tuple(
            tuple(float(v) for v in p.split(",")) for p in body.replace(";", " ").split()
        )
    except ValueError:
        points = ((),)
    if any(len(p) != 2 for p in points):
        raise RegionError(f"expected 'x,y x,y ...' (numbers), got {body!r}")
    return Stroke(points, width)


def parse_mask(body: str, image, k: int, argument: str):
    """A mask image file -> a ``Mask`` (>= 0.5 gray) of image ``k``'s size."""
    from vitron.io import load_image, to_tensor
    from vitron.regions import Mask

    try:
        values = to_tensor(load_image(body)).mean(0)  # (H, W) in [0, 1]
    except (OSError, ValueError) as err:
        raise ValueError(f"{argument} {one_line(err)}") from None
    if tuple(values.shape) != (image.height, image.width):
        raise ValueError(
            f"{argument} {body} is {values.shape[1]}x{values.shape[0]} but image {k} is "
            f"{image.width}x{image.height}"
        )
    return Mask((values >= 0.5).double())


def parse_region(kind: str, text: str, images: Sequence, stroke_width: float, argument: str):
    """One ``box`` / ``stroke`` / ``mask`` text ``BODY[@K]`` -> a :class:`Region` inside image K.

    Args:
        kind: ``box``, ``stroke`` or ``mask``.
        text: the region as given (``x1,y1,x2,y2[@K]``, ``x,y x,y ...[@K]``, ``PATH[@K]``).
        images: the images the regions are drawn on.
        stroke_width: the brush width of a stroke, in pixels.
        argument: how the caller names the argument in messages (``--box``).
    """
    body, k = split_image_index(text, argument)
    image = region_image(images, k, argument)
    try:
        shape: Shape
        if kind == "box":
            shape = parse_box(body, image.width, image.height)
        elif kind == "stroke":
            shape = parse_stroke(body, stroke_width)
        else:
            shape = parse_mask(body, image, k, argument)
    except RegionError as err:
        raise ValueError(f"{argument} {text}: {one_line(err)}") from None
    check_inside(shape, image.width, image.height, f"{argument} {text}")
    return Region(shape, k)


def parse_regions(
    images: Sequence,
    boxes: Sequence[str] = (),
    strokes: Sequence[str] = (),
    masks: Sequence[str] = (),
    stroke_width: float = 8.0,
) -> list[Region]:
    """Boxes, strokes and masks as texts -> regions on ``images``, checked before any load.

    A box is ``x1,y1,x2,y2`` (pixels, or all four in [0, 1]), a stroke ``x,y x,y ...``, a mask
    an image file of the image's size; each may end in ``@K``, the index of its image (default
    0). A box or stroke that is not inside its image is refused: ``box 0,0,100000,100000 lies
    outside the 256x256 image``.

    Args:
        images: the loaded images, in order.
        boxes: box texts.
        strokes: stroke texts.
        masks: mask file texts.
        stroke_width: brush width of the strokes in pixels, a finite number > 0.
    """
    if strokes:
        check_positive(stroke_width, "stroke_width")
    regions = []
    for kind, texts in (("box", boxes), ("stroke", strokes), ("mask", masks)):
        for text in texts:
            try:
                regions.append(parse_region(kind, text, images, stroke_width, ARGUMENT_MARK))
            except ValueError as err:
                raise named_in_place(kind, err) from None
    return regions


@dataclass
class RegionTexts:
    """Region texts as given with the images of a request (see :func:`parse_regions`)."""

    boxes: Sequence[str] = ()
    strokes: Sequence[str] = ()
    masks: Sequence[str] = ()
    stroke_width: float = 8.0


def check_request(
    images: Sequence[str | Path],
    videos: Sequence[str | Path],
    regions: RegionTexts,
) -> tuple[list, list, list[Region]]:
    """The images, videos and regions of one request, each checked (nothing loads a model)."""
    loaded_images, loaded_videos = load_media(images, videos)
    found = parse_regions(
        loaded_images, regions.boxes, regions.strokes, regions.masks, regions.stroke_width
    )
    return loaded_images, loaded_videos, found


def check_outputs(
    output: str | Path,
    *,
    images: Sequence[str | Path] = (),
    videos: Sequence[str | Path] = (),
    masks: Sequence[str] = (),
    files: Sequence[str | Path | None] = (),
    written: Sequence[str] = (),
    in_place: bool = False,
) -> None:
    """Refuse, before any work, an output that would change an input, unless ``in_place``.

    The files of a turn's calls never replace a file (``<call id>_<output>.<ext>`` takes a new
    name when the path is taken), so two cases remain: ``output`` is the frame folder of a video
    (the outputs would join its frames), and a file written under a fixed name (``written``,
    e.g. ``turn.json``) is one of the input files.

    Args:
        output: the output folder.
        images: input image files.
        videos: input videos, GIF files or frame folders.
        masks: region mask texts, ``PATH[@K]``.
        files: other input files (a reply file, a specialists file); None entries are skipped.
        written: the names of the files written into ``output`` under fixed names.
        in_place: allow both (writes stay atomic).

    Raises:
        InvalidArgument: (``output``) naming the output and the input.
    """
    if in_place:
        return
    output = Path(output)
    for video in map(Path, videos):
        if video.is_dir() and os.path.realpath(output) == os.path.realpath(video):
            raise InvalidArgument(
                "output",
                f"{output} is the frame folder of {{video}} {video}: the outputs would join its "
                "frames; choose another output folder, or pass {in_place} to write into it",
                mentions={**PYTHON_MENTIONS, "video": "video"},
            )
    paths = [*images, *videos, *(split_image_index(m, "mask")[0] for m in masks), *files]
    given = [Path(p) for p in paths if p is not None and Path(p).is_file()]
    listing = ImageListing(tuple(InputImage(path, Path(path.name)) for path in given))
    check_not_inputs([output / name for name in written], listing, argument="output")


def check_port(port: int) -> None:
    """The app's TCP port, in [1, 65535]."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidValue("port", f"{{port}} must be in [1, 65535], got {literal(port)}")


def input_counts(images: int | None, videos: int | None, regions: Sequence[int]):
    """The :class:`~vitron.invocations.InputCounts` a reply is checked against (None: unchecked).

    Args:
        images: input images, >= 0 (None: one more than the highest region image).
        videos: input videos, >= 0 (None: unchecked).
        regions: the image index of each user-drawn region, each >= 0 and below ``images``.
    """
    from vitron.invocations import InputCounts

    for argument, count in (("images", images), ("videos", videos)):
        if count is not None:
            check_at_least(count, 0, argument)
    for k in regions:
        check_at_least(k, 0, "region")
    if images is None and videos is None and not regions:
        return None
    images = images if images is not None else max(regions, default=-1) + 1
    if any(k >= images for k in regions):
        raise InvalidValue(
            "region", f"{{region}} needs an image index below {{images}} {literal(images)}"
        )
    return InputCounts(images, videos, region_images=tuple(regions))
