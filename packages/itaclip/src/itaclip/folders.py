"""Image files and folders segmented in one run (``itaclip segment``), walked as every package
of the repository walks them (``common_kernels.runtime.batch``).

``plan_segment_batch`` finds the images (files as given; a folder's images in name order, its
subfolders with ``recursive``, their place mirrored under the output folder, else only counted),
says where each image's overlay and label map go, refuses before any work an output that would
replace an input (an output folder that is an input folder, an output file that is an input)
unless ``in_place``, sets aside the images whose outputs all exist (``skip_existing``: a resumed
run), and decodes every other image completely before any model loads: a bad one stops the run,
naming it, or with ``keep_going`` is set aside. ``segment_batch`` then segments the planned
images with a loaded segmenter and writes their outputs (atomically), counting them in a
``common_kernels.runtime.batch.BatchRun`` (how far an interrupted run got, and how to resume it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from common_kernels.runtime.batch import (
    BatchRun,
    ImageListing,
    InputImage,
    Skipped,
    check_not_inputs,
    find_images,
    survey,
)
from common_kernels.runtime.cli import check_folder_writable, one_line
from common_kernels.runtime.errors import InvalidArgument, argument_errors
from common_kernels.runtime.files import ImageReadError, check_output_folder_name
from common_kernels.runtime.photos import read_photo
from common_kernels.runtime.progress import progress as show_progress
from common_kernels.runtime.shards import (
    Ledger,
    Shard,
    ShardCheck,
    check_shards,
    checked_shard,
)
from itaclip.inputs import ClassInputs, class_names
from itaclip.protect import check_not_replacing

if TYPE_CHECKING:
    from itaclip.segmenter import Segmenter

OVERLAY_SUFFIX = "_overlay.png"
LABELS_SUFFIX = "_labels.png"


class UnreadableImage(ValueError):
    """An input that does not decode completely; the message says why, ``path`` which."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"not a readable image ({reason})")
        self.path = path


@dataclass(frozen=True)
class SegmentJob:
    """One input image and the two files written for it.

    Args:
        image: the input and its place under the output folder.
        overlay: the labels over the photo, with a legend (``NAME_overlay.png``).
        labels: the class indices (``NAME_labels.png``).
        size: the image's upright (height, width), once decoded (``plan_segment_batch``).
    """

    image: InputImage
    overlay: Path
    labels: Path
    size: tuple[int, int] | None = None

    @property
    def outputs(self) -> tuple[Path, Path]:
        return self.overlay, self.labels


def job_for(image: InputImage, output: Path) -> SegmentJob:
    """Where ``image``'s outputs go: ``OUTPUT/SUBFOLDER/NAME_overlay.png`` and
    ``OUTPUT/SUBFOLDER/NAME_labels.png``."""
    folder = output / image.relative.parent
    stem = image.relative.stem
    return SegmentJob(image, folder / f"{stem}{OVERLAY_SUFFIX}", folder / f"{stem}{LABELS_SUFFIX}")


@dataclass(frozen=True)
class SegmentBatch:
    """What ``plan_segment_batch`` found.

    Args:
        jobs: the images to segment, every one decoded completely.
        finished: images whose outputs all exist, left out (``skip_existing``).
        unreadable: images that do not decode, set aside (``keep_going``).
        own_outputs: inputs that are outputs of this run (an ``in_place`` run into the input
            folder, run again), left out.
        left_out: images in subfolders that were not walked (``recursive`` off).
        left_out_folders: how many subfolders held them.
        shard: the shard of the batch this is (None: all of it).
        keys: each input's place in the batch (``sub/a.png``): what a ledger records.
    """

    jobs: tuple[SegmentJob, ...]
    finished: tuple[SegmentJob, ...] = ()
    unreadable: tuple[Skipped, ...] = ()
    own_outputs: tuple[Path, ...] = ()
    left_out: int = 0
    left_out_folders: int = 0
    shard: Shard | None = None
    keys: dict[Path, str] = field(default_factory=dict)

    def left_out_note(self, recursive: str = "recursive=True") -> str | None:
        """One sentence on the images left out in subfolders, or None when there are none.

        Args:
            recursive: how the reader asks for them (the CLI: ``--recursive``).
        """
        if not self.left_out:
            return None
        return (
            f"left out {self.left_out} image(s) in {self.left_out_folders} subfolder(s) of the "
            f"input folder(s); {recursive} segments them too, into the same subfolders of the "
            "output folder"
        )

    def notes(self, recursive: str = "recursive=True") -> list[str]:
        """What was left out of the batch, one sentence each (empty when nothing was).

        Args:
            recursive: how the reader asks for the images in subfolders (``--recursive``).
        """
        notes = [] if self.left_out_note(recursive) is None else [self.left_out_note(recursive)]
        if self.own_outputs:
            names = ", ".join(map(str, self.own_outputs[:3]))
            more = ", ..." if len(self.own_outputs) > 3 else ""
            notes.append(
                f"left out {len(self.own_outputs)} input(s) that are outputs of this run "
                f"({names}{more})"
            )
        if self.finished:
            notes.append(f"left out {len(self.finished)} image(s) whose outputs exist "
                         "(--skip-existing)")  # fmt: skip
        return notes


def inspect_image(path: Path) -> tuple[int, int]:
    """Decode ``path`` completely (``read_photo``); its upright (height, width).

    Raises:
        UnreadableImage: the file does not decode completely, or is gone.
    """
    try:
        return read_photo(path).size
    except ImageReadError as error:
        raise UnreadableImage(path, error.reason) from None
    except OSError as error:
        raise UnreadableImage(path, one_line(error)) from None


def plan_segment_batch(
    images: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    recursive: bool = False,
    in_place: bool = False,
    skip_existing: bool = False,
    keep_going: bool = False,
    protect: Iterable[tuple[Path, str]] = (),
    shard: Shard | str | None = None,
    on_unreadable: Callable[[Skipped], None] | None = None,
) -> SegmentBatch:
    """Every input of a folder run checked and decoded, before any model loads.

    Args:
        images: image files and folders.
        output: the output folder (created when missing); each image's outputs go to its
            place below it (its subfolder kept with ``recursive``).
        recursive: walk the subfolders of input folders (else their images are counted).
        in_place: allow outputs into an input folder, and over input files (atomically).
        skip_existing: leave out the images whose two outputs exist (resume a run).
        keep_going: set aside the images that do not decode instead of stopping.
        protect: other files the run reads, each with what it is (an auxiliary-text file):
            no output may replace them, ``in_place`` or not.
        shard: ``"I/N"``: only block ``I`` of the ``N`` blocks of the images in listing
            order, leaving out images whose outputs exist (``skip_existing`` implied); not with
            ``in_place``.
        on_unreadable: told about each image set aside (``keep_going``).

    Raises:
        InvalidArgument: no image, a path that does not exist, two inputs for one output, or an
            output that would replace an input (``output: ...``; see ``in_place``), an output
            folder that cannot be made (a file in the way, a suffix).
        ValueError: an image that does not decode (``PATH is not a readable image (...)``).
    """
    shard = checked_shard(shard, output, in_place)
    skip_existing = skip_existing or shard is not None  # finished outputs are never redone
    listing, jobs, own = segment_jobs(images, output, recursive=recursive, in_place=in_place,
                                      protect=protect)  # fmt: skip
    if shard is not None:
        jobs = shard.select(jobs)
    finished = [job for job in jobs if skip_existing and all(map(Path.is_file, job.outputs))]
    todo = [job for job in jobs if job not in finished]
    try:
        found = survey(
            [job.image.path for job in todo],
            inspect_image,
            keep_going=keep_going,
            on_unreadable=on_unreadable,
        )
    except UnreadableImage as error:
        raise ValueError(f"{error.path} is {error}") from None
    return SegmentBatch(
        tuple(
            replace(job, size=found.readable[job.image.path])
            for job in todo
            if job.image.path in found.readable
        ),
        tuple(finished),
        tuple(found.unreadable),
        own,
        listing.left_out,
        listing.left_out_folders,
        shard,
        {job.image.path: str(job.image.relative) for job in jobs},
    )


def segment_jobs(
    images: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    recursive: bool = False,
    in_place: bool = False,
    protect: Iterable[tuple[Path, str]] = (),
) -> tuple[ImageListing, list[SegmentJob], tuple[Path, ...]]:
    """The batch's images and their outputs, checked (:func:`plan_segment_batch`'s rules), no
    image decoded: the listing, the jobs, and the inputs left out as outputs of this run."""
    output = Path(output)
    with argument_errors("output"):
        check_folder_writable(output, "output")
        check_output_folder_name(output, "output")
    listing = find_images(images, recursive=recursive, exclude=[output], argument="images")
    jobs = [job_for(image, output) for image in listing.images]
    check_unique(jobs)
    targets = [target for job in jobs for target in job.outputs]
    if not in_place:
        check_not_inputs(targets, listing, output, argument="output")
    check_not_replacing(targets, protect, argument="output")
    written = {_resolved(target) for target in targets}
    own = tuple(job.image.path for job in jobs if _resolved(job.image.path) in written)
    return listing, [job for job in jobs if _resolved(job.image.path) not in written], own


def check_segment_shards(
    images: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    count: int,
    *,
    recursive: bool = False,
) -> ShardCheck:
    """Whether ``count`` shards of a batch (``plan_segment_batch(shard="I/N")`` runs, or a Ray
    run: 1) wrote every image's two outputs exactly once: the files and the runs' ledgers in
    ``OUTPUT/.shards/``, against the batch listed again. Loads no model."""
    _, jobs, _ = segment_jobs(images, output, recursive=recursive)
    keys = [str(job.image.relative) for job in jobs]
    return check_shards(Path(output), keys, [job.outputs for job in jobs], count)


def check_unique(jobs: Sequence[SegmentJob]) -> None:
    """Refuse two inputs whose outputs would be one file (``a/x.png`` and ``b/x.png`` without
    ``recursive``, ``x.png`` and ``x.jpg``)."""
    seen: dict[Path, Path] = {}
    for job in jobs:
        key = _resolved(job.overlay)
        if key in seen:
            raise InvalidArgument(
                "output", f"{seen[key]} and {job.image.path} would both be written to {job.overlay}"
            )
        seen[key] = job.image.path


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def segment_batch(
    segmenter: Segmenter,
    batch: SegmentBatch,
    classes: ClassInputs,
    *,
    output_size: Sequence[int] | None = None,
    keep_going: bool = False,
    progress: bool = True,
    desc: str = "images",
    run: BatchRun | None = None,
    on_written: Callable[[SegmentJob, list[str]], None] | None = None,
    on_skipped: Callable[[Skipped], None] | None = None,
    ledger: Ledger | None = None,
) -> BatchRun:
    """Segment the planned images and write each one's overlay and label map.

    Args:
        segmenter: a loaded segmenter.
        batch: from ``plan_segment_batch``.
        classes: checked classes, auxiliary texts and background (``check_classes``).
        output_size: (H, W) of the outputs (``Segmenter.__call__``), or None.
        keep_going: set aside an image the segmenter refuses (too small after the resize)
            instead of stopping.
        progress: a bar over the images and each image's windows on a terminal, plain lines
            in a log.
        desc: the progress label.
        run: counts the images written (default: a new one for ``batch.jobs``).
        on_written: told about each image written, with what its formats could not hold.
        on_skipped: told about each image set aside.
        ledger: records each image written or set aside, and the ones the batch left out as
            finished or unreadable (a sharded run's record, :func:`check_segment_shards`).

    Returns:
        The run: images written, images set aside.
    """
    run = BatchRun(len(batch.jobs)) if run is None else run
    num_classes = classes.queries.num_classes
    if ledger is not None:
        record_left_out(batch, ledger)
    for job in show_progress(batch.jobs, desc=desc, unit="images", disable=not progress):
        try:
            photo = read_photo(job.image.path)
            result = segmenter(
                photo,
                [class_names(classes.queries, index) for index in range(num_classes)],
                classes.aux_texts,
                classes.background,
                output_size=output_size,
                progress=progress,
            )
        except (ValueError, OSError) as error:
            if not keep_going:
                raise
            skipped = run.skip(job.image.path, one_line(error))
            if ledger is not None:
                ledger.record(str(job.image.relative), "refused", skipped.reason)
            if on_skipped is not None:
                on_skipped(skipped)
            continue
        notes = result.save_overlay(job.overlay, photo) + result.save_labels(job.labels)
        if ledger is not None:
            ledger.record(str(job.image.relative), "written")
        run.done()
        if on_written is not None:
            on_written(job, notes)
    return run


def record_left_out(batch: SegmentBatch, ledger: Ledger) -> None:
    """Record the images a batch left out: finished (their outputs exist) or unreadable."""
    for job in batch.finished:
        ledger.record(str(job.image.relative), "finished")
    for item in batch.unreadable:
        ledger.record(batch.keys[item.path], "refused", item.reason)
