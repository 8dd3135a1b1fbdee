"""Restore photo files: the API behind ``semanir restore``.

:func:`plan_restore` makes every check of a batch before any model loads: the folder walk
(``recursive``), where each result goes, that no result replaces an input (unless
``in_place``), the model of each photo and the options against its config, which results exist
already (``skip_existing``), and every input decoded completely (a bad file stops the batch,
naming it, or with ``keep_going`` is set aside). :func:`run_restore` then restores the photos one
by one and writes each atomically, as a :func:`restore_photo` of the photo it read.

:func:`restore_photo` keeps what makes the photo: a colour photo through a gray model is
restored on its BT.601 luma and keeps its chroma (upscaled with the image for SR), unless
``colour="per-channel"`` (R, G and B restored one by one) or ``colour="gray"`` (the restored
luma alone); a gray photo through a colour model stays gray; alpha is carried through (resized
for SR); bit depth, ICC profile and EXIF go to the result (:mod:`common_kernels.runtime.photos`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from common_kernels.runtime.batch import (
    ImageListing,
    InputImage,
    Skipped,
    check_not_inputs,
    find_images,
    output_paths,
    survey,
)
from common_kernels.runtime.errors import InvalidArgument, InvalidValue
from common_kernels.runtime.files import convert_channels
from common_kernels.runtime.photos import Photo, read_photo, write_photo
from common_kernels.runtime.shards import (
    Ledger,
    Shard,
    ShardCheck,
    check_shards,
    checked_shard,
)
from semanir.bundled import model_for_task
from semanir.data.datasets import index_generator
from semanir.data.degradations import add_gaussian_noise, bicubic_resize, check_sigma
from semanir.inference import (
    ModelChoice,
    RestoreOptions,
    check_inference_options,
    check_model_for_task,
    compile_for_tiles,
    plan_tile,
    read_model_config,
    restore_image,
)
from semanir.io import check_writable
from semanir.memory import available_bytes, check_restore_memory
from semanir.metrics import psnr
from semanir.tasks import COMMAND_LINE_TASKS, SIGMA, Task, get_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

Colour = Literal["luma", "per-channel", "gray"]
COLOUR_MODES = ("luma", "per-channel", "gray")
NOISY_SUFFIX = "_noisy"
# compile=True restores every photo in tiles of one size (compiled once); photos smaller than a
# tile are restored whole (compiled for their size)
COMPILE_TILE = 256


def restore_photo(
    model: nn.Module,
    photo: Photo,
    *,
    colour: Colour = "luma",
    **options: Unpack[RestoreOptions],
) -> Photo:
    """Restore one photo, keeping its colour, alpha, bit depth and metadata.

    Args:
        model: a gray (``in_channels=1``) or colour model.
        photo: what :func:`~common_kernels.runtime.photos.read_photo` read.
        colour: for a colour photo through a gray model: ``"luma"`` restores the BT.601 luma
            and keeps the chroma, ``"per-channel"`` restores R, G and B one by one, ``"gray"``
            gives the restored luma alone (for a colour model: its output's luma).
        **options: :func:`~semanir.inference.restore_image`'s ``tile``, ``tile_overlap``, ``k``,
            ``ensemble``, ``progress`` and ``compile``, as in :func:`semanir.restore`.

    Returns:
        The restored photo: gray in, gray out; colour in, colour out (gray with
        ``colour="gray"``); alpha resized with the image.
    """
    if colour not in COLOUR_MODES:
        raise InvalidArgument("colour", f"must be one of {', '.join(COLOUR_MODES)}, got {colour!r}")
    pixels, scale = photo.pixels, int(getattr(model, "upscale", 1))
    colour_through_gray = model.in_channels == 1 and photo.channels == 3
    if colour_through_gray and colour != "per-channel":
        luma = convert_channels(pixels, "gray")  # (1, H, W)
        restored = restore_image(model, luma, **options)  # (1, H', W')
        chroma = _resize(pixels - luma, scale)  # (3, H', W'): R-Y, G-Y, B-Y
        out = restored if colour == "gray" else (restored + chroma).clamp(0, 1)
    else:  # per-channel: restore_image restores R, G and B as a batch of three
        image = pixels if colour_through_gray else convert_channels(
            pixels, "gray" if model.in_channels == 1 else "rgb"
        )  # fmt: skip
        out = restore_image(model, image, **options)  # (C, H', W')
        if photo.channels == 1 or colour == "gray":
            out = convert_channels(out, "gray")
    alpha = None if photo.alpha is None else _resize(photo.alpha, scale).clamp(0, 1)
    icc = photo.icc_profile if out.shape[0] == photo.channels else None  # gray asked for
    return photo.replace(pixels=out.contiguous(), alpha=alpha, icc_profile=icc)


def _resize(image: Tensor, scale: int) -> Tensor:
    """``image`` (C, H, W) upscaled ``scale`` times (bicubic), or as it is for scale 1."""
    return image if scale == 1 else bicubic_resize(image[None], scale)[0]


@dataclass(frozen=True)
class RestoreJob:
    """One photo of a batch.

    Args:
        source: the input file.
        target: where its result goes.
        model: the model that restores it (a bundled name, a folder or a hub id).
    """

    source: Path
    target: Path
    model: str | Path


@dataclass
class RestorePlan:
    """A checked batch (:func:`plan_restore`).

    Args:
        jobs: the photos to restore, in order.
        listing: what the folder walk found (``left_out`` counts subfolder images left out).
        existing: inputs whose results exist already (``skip_existing``), not restored again.
        unreadable: inputs set aside (``keep_going``), with the reason.
        models: loads each model once, on first use.
        options: the restore options every photo gets.
        noise_sigma: the level of the demo's added noise (None: no noise added).
        keys: each input's place in the batch (``sub/a.png``), what a ledger records.
        shard: the shard of the batch this plan is (None: all of it).
    """

    jobs: list[RestoreJob]
    listing: ImageListing
    existing: list[Path]
    unreadable: list[Skipped]
    models: ModelChoice
    options: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float | None = None
    keys: dict[Path, str] = field(default_factory=dict)
    shard: Shard | None = None


def plan_restore(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    task: str = "denoise",
    model: str | Path | None = None,
    device: torch.device | str = "cpu",
    colour: Colour = "luma",
    recursive: bool = False,
    in_place: bool = False,
    skip_existing: bool = False,
    keep_going: bool = False,
    add_noise: float | bool | None = None,
    sigma: float | None = None,
    save_noisy: bool = False,
    tile: int | Literal["auto"] | None = "auto",
    tile_overlap: int = 32,
    k: int | None = None,
    ensemble: bool = False,
    compile: bool = False,
    memory_budget: int | None = None,
    shard: Shard | str | None = None,
    on_unreadable: Callable[[Skipped], None] | None = None,
    on_model: Callable[[str, str], None] | None = None,
) -> RestorePlan:
    """Check a batch completely, before any model loads.

    Args:
        inputs: image files and folders.
        output: an image file (one input) or a folder (results keep their names, and with
            ``recursive`` their subfolders).
        task: "denoise", "jpeg" or "sr".
        model: a bundled name, a folder or a hub id for every photo; None: the bundled model
            of ``task`` for each photo (denoise: the colour model for colour photos).
        device: where the models will run.
        colour: colour photos through a gray model (see :func:`restore_photo`).
        recursive: walk subfolders, mirroring them under ``output``.
        in_place: results may replace their inputs (atomically).
        skip_existing: leave out inputs whose result exists (resume a batch).
        keep_going: set unreadable inputs aside instead of stopping.
        add_noise: a demo (``task="denoise"``): treat the inputs as clean and add Gaussian
            noise of this level (0-255 scale) before restoring, to measure PSNR; True: of
            the level ``sigma``; None or False: no noise.
        sigma: the level ``add_noise=True`` adds, in [0, 255].
        save_noisy: the noisy inputs of a demo are written too (``NAME_noisy.EXT``).
        tile, tile_overlap, k, ensemble: as in :func:`semanir.restore`.
        compile: run the models through ``torch.compile``, in tiles of one size (``tile``,
            or :data:`COMPILE_TILE` for ``"auto"``/None) so that each model compiles once.
        memory_budget: bytes a photo's restore may take (None: what ``device`` has
            available); each photo's estimate (:func:`~semanir.memory.check_restore_memory`)
            must fit, before any model loads.
        shard: ``"I/N"`` (or a :class:`~common_kernels.runtime.shards.Shard`): plan only
            block ``I`` of the ``N`` blocks of the batch's inputs in listing order; results
            that exist are left out (``skip_existing`` implied: a finished result is never
            redone). Needs an output folder; not with ``in_place`` or ``add_noise``.
        on_unreadable: told about each input set aside.
        on_model: told ``(name, "gray" | "rgb")`` when a bundled model is first loaded.

    Raises:
        InvalidArgument: a bad argument, named; ``ValueError`` for options a model refuses.
        common_kernels.runtime.files.ImageReadError: an input that does not decode (``keep_going``
        off).
    """
    record = get_task(task, among=COMMAND_LINE_TASKS)
    noise_sigma = _noise_level(record, add_noise, sigma)
    if colour not in COLOUR_MODES:
        raise InvalidArgument("colour", f"must be one of {', '.join(COLOUR_MODES)}, got {colour!r}")
    if in_place and skip_existing:
        raise InvalidArgument(
            "skip_existing",
            "cannot resume an {in_place} batch: every result exists already (it is its input)",
            mentions={"in_place": "in_place=True"},
        )
    shard = checked_shard(shard, output, in_place)
    if shard is not None and noise_sigma is not None:
        raise InvalidValue("shard", "{shard} runs a batch, not the {add_noise} demo")
    skip_existing = skip_existing or shard is not None  # a finished result is never redone
    listing, pairs = batch_targets(inputs, output, recursive=recursive, in_place=in_place,
                                   save_noisy=save_noisy, shard=shard)  # fmt: skip
    models = ModelChoice(
        model, task, torch.device(device), per_channel=colour != "luma", announce=on_model
    )
    configs = check_models(model, task, colour, tile=tile, tile_overlap=tile_overlap, k=k)
    keys = {image.path: str(image.relative) for image, _ in pairs}
    pairs = [(image.path, target) for image, target in pairs]
    existing = [source for source, target in pairs if skip_existing and target.is_file()]
    pending = [(source, target) for source, target in pairs if source not in existing]
    decoded = survey(
        [source for source, _ in pending], lambda path: _channels_and_size(read_photo(path)),
        keep_going=keep_going, on_unreadable=on_unreadable,
    )  # fmt: skip
    jobs = [
        RestoreJob(source, target, models.name_for(gray=decoded.readable[source][0] == 1))
        for source, target in pending
        if source in decoded.readable
    ]
    options = dict(tile=tile_for_compile(tile, compile), tile_overlap=tile_overlap, k=k,
                   ensemble=ensemble, compile=compile)  # fmt: skip
    device = torch.device(device)
    budget = available_bytes(device) if memory_budget is None else memory_budget
    for job in jobs:
        config = configs[str(job.model)]
        channels, (height, width) = decoded.readable[job.source]
        gray_model = config.get("in_channels", config.get("channels", 1)) == 1  # SemanIR / DnCNN
        per_channel = channels == 3 and gray_model and colour == "per-channel"
        check_restore_memory(
            config, job.source.name, height, width, tile=options["tile"],
            tile_overlap=tile_overlap, budget=budget, batch=3 if per_channel else 1,
            dtype_bytes=2 if device.type == "cuda" else 4,
        )  # fmt: skip
    return RestorePlan(jobs, listing, existing, decoded.unreadable, models, options, noise_sigma,
                       keys, shard)  # fmt: skip


def batch_targets(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    shard: Shard | None = None,
    recursive: bool = False,
    in_place: bool = False,
    save_noisy: bool = False,
) -> tuple[ImageListing, list[tuple[InputImage, Path]]]:
    """The batch's inputs and where each result goes, checked (no result replaces an input
    unless ``in_place``, two inputs never share a result, the results are writable); with
    ``shard``, the shard's block of them (chosen among all the inputs, so that the shards'
    blocks tile the batch)."""
    listing = find_images(inputs, recursive=recursive, exclude=[output])
    targets = output_paths(listing, output, in_place=in_place)
    if save_noisy:
        check_not_inputs([_noisy_path(target) for target in targets], listing)
    check_writable(targets)
    pairs = list(zip(listing.images, targets, strict=True))
    return listing, pairs if shard is None else shard.select(pairs)


def check_models(
    model: str | Path | None, task: str, colour: Colour, **options: Any
) -> dict[str, dict]:
    """The config of every model the batch may use, each checked against the task and the
    inference options (``tile``, ``tile_overlap``, ``k``), before any image is decoded."""
    configs = {}
    for name in _candidate_models(model, task, colour):
        configs[str(name)] = config = read_model_config(name)
        check_model_for_task(config, task, per_channel=colour == "per-channel")
        check_inference_options(config, **options)
    return configs


def check_restore_shards(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                         output: str | os.PathLike, count: int, *,
                         recursive: bool = False) -> ShardCheck:  # fmt: skip
    """Whether ``count`` shards of a batch (``plan_restore(shard="I/N")`` runs, or a Ray run)
    wrote every input's result exactly once: the results on disk and the runs' ledgers in
    ``OUTPUT/.shards/``, against the batch listed again. Loads no model.

    Args:
        inputs, output, recursive: the batch, as the shards were given it.
        count: N, the shards the batch was split into (1 for a Ray run).
    """
    _, pairs = batch_targets(inputs, output, recursive=recursive)
    keys = [str(image.relative) for image, _ in pairs]
    return check_shards(Path(output), keys, [[target] for _, target in pairs], count)


def _noise_level(task: Task, add_noise: float | bool | None, sigma: float | None) -> float | None:
    """The level of the demo's added noise (:func:`plan_restore`'s ``add_noise`` and
    ``sigma``), checked; None when no noise is added."""
    if add_noise is None or add_noise is False:
        if sigma is not None:
            raise InvalidValue(
                "sigma", "{sigma} sets the level of {add_noise=True} and does nothing without it "
                "(the models are blind: they take no noise level)",
            )  # fmt: skip
        return None
    if task.level is not SIGMA:  # the demo adds Gaussian noise
        raise InvalidValue("add_noise", "{add_noise} applies to {task='denoise'} only")
    if add_noise is not True:
        return check_sigma(add_noise, "add_noise")
    if sigma is None:
        raise InvalidValue("add_noise", "{add_noise=True} without a level needs {sigma}")
    return check_sigma(sigma, "sigma")


def tile_for_compile(
    tile: int | Literal["auto"] | None, compile: bool
) -> int | Literal["auto"] | None:
    """The tile option a run uses: with ``compile``, tiles of one size (``tile``, or
    :data:`COMPILE_TILE` for ``"auto"``/None) so that each model compiles once; else ``tile``."""
    return COMPILE_TILE if compile and tile in ("auto", None) else tile


def _candidate_models(model: str | Path | None, task: str, colour: Colour) -> list[str | Path]:
    """The models a batch may use: ``model``, or the bundled ones of ``task`` it may pick."""
    if model is not None:
        return [model]
    channels = ("gray",) if colour != "luma" else ("gray", "rgb")
    return list(dict.fromkeys(model_for_task(task, c).name for c in channels))


def _channels_and_size(photo: Photo) -> tuple[int, tuple[int, int]]:
    """A decoded photo's channels and (height, width)."""
    return photo.channels, photo.size


def _noisy_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}{NOISY_SUFFIX}{target.suffix}")


@dataclass
class Restored:
    """What :func:`run_restore` did for one photo.

    Args:
        job: the photo.
        tile: the tile size ``tile="auto"`` chose for it (None: restored whole).
        notes: what the output format could not hold, one line each.
        psnr_noisy, psnr_restored: with added noise: PSNR in dB of the noisy and the restored
            photo against the clean input.
    """

    job: RestoreJob
    tile: int | None
    notes: list[str]
    psnr_noisy: float | None = None
    psnr_restored: float | None = None


def run_restore(
    plan: RestorePlan,
    *,
    colour: Colour = "luma",
    seed: int = 0,
    save_noisy: bool = False,
    progress: bool = False,
    on_start: Callable[[RestoreJob, Photo, int | None], None] | None = None,
    on_compiled: Callable[[str, int, float], None] | None = None,
    ledger: Ledger | None = None,
) -> Iterator[Restored]:
    """Restore the photos of ``plan`` one by one, writing each result atomically.

    Args:
        plan: from :func:`plan_restore`.
        colour: as given to :func:`plan_restore`.
        seed: the seed of the demo's noise (``plan.noise_sigma``): photo ``i`` gets the
            generator of ``(seed, i)``.
        save_noisy: also write each noisy input as ``NAME_noisy.EXT`` beside its result.
        progress: a bar over the tiles of tiled photos.
        on_start: told ``(job, photo, tile)`` before each photo is restored (``tile``: the
            tile size it gets, None for the whole photo).
        on_compiled: with ``compile``: told ``(model, tile, seconds)`` when a model was
            compiled for its tile size, before its first photo (compilation timed apart).
        ledger: records each written result, and the inputs the plan left out as finished
            or refused (a sharded run's record, :func:`check_restore_shards`).

    Yields:
        One :class:`Restored` per photo, after its result is written.
    """
    noise_sigma = plan.noise_sigma
    compiled: set[str] = set()
    if ledger is not None:
        for source in plan.existing:
            ledger.record(plan.keys[source], "finished")
        for item in plan.unreadable:
            ledger.record(plan.keys[item.path], "refused", item.reason)
    for index, job in enumerate(plan.jobs):
        model = plan.models.model(job.model)
        if plan.options.get("compile") and str(job.model) not in compiled:
            compiled.add(str(job.model))
            seconds = compile_for_tiles(model, plan.options["tile"], k=plan.options["k"])
            if on_compiled is not None:
                on_compiled(str(job.model), plan.options["tile"], seconds)
        photo = read_photo(job.source)
        tile = photo_tile(model, photo, colour, plan.options)
        if on_start is not None:
            on_start(job, photo, tile)
        options = {**plan.options, "tile": tile, "progress": progress and tile is not None}
        if noise_sigma is None:
            restored = restore_photo(model, photo, colour=colour, **options)
            notes = write_photo(job.target, restored)
            if ledger is not None:
                ledger.record(plan.keys[job.source], "written")
            yield Restored(job, tile, notes)
            continue
        clean = photo.pixels
        noisy = photo.replace(
            pixels=add_gaussian_noise(clean, noise_sigma, index_generator(seed, index))
        )
        restored = restore_photo(model, noisy, colour=colour, **options)
        notes = write_photo(job.target, restored)
        if save_noisy:
            write_photo(_noisy_path(job.target), noisy.replace(pixels=noisy.pixels.clamp(0, 1)))
        before = float(psnr(noisy.pixels, clean))
        after = float(psnr(restored.pixels, convert_channels(clean, _channels(restored))))
        yield Restored(job, tile, notes, before, after)


def _channels(photo: Photo) -> Literal["gray", "rgb"]:
    return "gray" if photo.channels == 1 else "rgb"


def photo_tile(
    model: nn.Module, photo: Photo, colour: Colour, options: dict[str, Any]
) -> int | None:
    """The tile size of this photo: ``tile="auto"`` resolved (None: restored whole)."""
    if options["tile"] != "auto":
        return options["tile"]
    batch = 3 if photo.channels == 3 and model.in_channels == 1 and colour == "per-channel" else 1
    shape = (batch, model.in_channels, *photo.size)
    return plan_tile(model, shape, tile_overlap=options["tile_overlap"])
