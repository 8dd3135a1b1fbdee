"""``diffeat extract`` beyond one process: shards, their check, and Ray.

A features file holds one extraction of many images, so a batch split over machines is a set of
files, one per block of images: shard ``I/N`` (:class:`~common_kernels.runtime.shards.Shard`,
block ``I`` of the ``N`` blocks of the images in listing order) writes ``OUT-0000I-of-0000N
.safetensors`` beside ``OUT.safetensors``, atomically, once (a shard whose file exists is
finished and left alone; a killed shard left no file and runs again). Each file's metadata
lists its images, and the images it set aside with the reason (``refused``), so
:func:`check_extract_shards` accounts for every image from the files alone.

On Ray (:func:`extract_on_ray`) the batch is cut into parts of ``ray.batch_size`` images, part
``k`` of ``K`` written by an actor as ``--shard k/K`` would write it; the actors load the model
once each (:class:`ExtractWorker`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.batch import Skipped, find_images
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.ray_batch import RayOptions, RaySummary, RowWorker, run_on_ray
from common_kernels.runtime.shards import (
    Ledger,
    Shard,
    ShardCheck,
    ledger_path,
    now_name,
    shard_check,
)
from diffeat import __version__
from diffeat.io import feature_shapes, save_features

SUFFIX = ".safetensors"


def shard_file(output: str | os.PathLike, shard: Shard) -> Path:
    """Where shard ``I/N`` of an extraction to ``OUT.safetensors`` goes:
    ``OUT-0000I-of-0000N.safetensors``."""
    output = Path(output)
    return output.with_name(f"{output.stem}-{shard.index:05d}-of-{shard.count:05d}{SUFFIX}")


def shard_images(images: Sequence[str | os.PathLike], shard: Shard, *,
                 recursive: bool = False) -> list[Path]:  # fmt: skip
    """Shard ``shard``'s block of the images (files as given, folders walked)."""
    listing = find_images(images, recursive=recursive, argument="images")
    return shard.select(listing.paths)


def check_extract_shards(
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    count: int,
    *,
    recursive: bool = False,
) -> ShardCheck:
    """Whether the ``count`` shard files of an extraction hold every image exactly once (the
    images listed again, each file's metadata read; no model loads).

    Args:
        images, recursive: the batch, as the shards were given it.
        output: the ``OUT.safetensors`` the shards were given.
        count: N, the shards (for a Ray run: the parts it said).
    """
    listing = find_images(images, recursive=recursive, argument="images")
    keys = [str(path) for path in listing.paths]
    held: dict[str, int] = {}
    refused: dict[str, str] = {}
    for index in range(count):  # a count < 1 is refused by shard_check
        path = shard_file(output, Shard(index, count))
        if not path.is_file():
            continue
        _, metadata = feature_shapes(path)
        for image in metadata.get("images", []):
            held[image] = held.get(image, 0) + 1
        refused.update(metadata.get("refused") or {})
    done = [bool(held.get(key)) for key in keys]
    return shard_check(keys, done, held, refused, count)


@dataclass(frozen=True)
class ExtractSettings:
    """What every part of a Ray extraction is given (the command's options).

    Args:
        batch_size: images per pass.
        prompt: the text prompt of every image.
        resize, resize_mode, concat: as in :func:`diffeat.commands.write_features`.
        allow_large: skip the memory check.
        control_image: the ControlNet condition image file, or None.
        model: the model as the user named it (the files' metadata).
    """

    batch_size: int = 1
    prompt: str = ""
    resize: tuple[int, int] | None = None
    resize_mode: str = "bilinear"
    concat: bool = False
    allow_large: bool = False
    control_image: str | None = None
    model: str | None = None


class ExtractWorker(RowWorker):
    """A Ray actor extracting parts: the model loads once per actor; a part (a block of images)
    becomes one features file, written atomically.

    Args:
        plan: the checked model plan (``diffeat.check_from_pretrained``).
        settings: the extraction options.
    """

    def __init__(self, plan: object, settings: ExtractSettings) -> None:
        from diffeat.extractor import FeatureExtractor
        from diffeat.io import load_image

        control = None if settings.control_image is None else load_image(settings.control_image)
        self.plan, self.settings = plan, settings
        self.extractor = FeatureExtractor.from_plan(plan, control_image=control)

    def settle(self, job: dict) -> str:
        from diffeat.commands import check_inputs, resize_parts, write_features

        target = Path(job["target"])
        if target.is_file():
            return "finished"
        settings = self.settings
        checked = check_inputs(
            self.plan, json.loads(job["images"]), settings.batch_size, keep_going=True,
            one_size=True, keep=resize_parts(settings.resize, settings.concat),
            allow_large=settings.allow_large,
            why="the images of one features file need one size",
        )  # fmt: skip
        if not checked.images:
            write_refused_shard(target, checked.skipped)
            return "written"
        write_features(target, self.extractor, checked, settings.prompt, settings.resize,
                       settings.resize_mode, settings.concat, model=settings.model,
                       refused=checked.skipped)  # fmt: skip
        return "written"


def extract_on_ray(
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    plan: object,
    settings: ExtractSettings,
    ray: RayOptions,
    *,
    recursive: bool = False,
    progress: bool = True,
) -> tuple[RaySummary, ShardCheck, int]:
    """Extract on Ray: parts of ``ray.batch_size`` images, part ``k`` of ``K`` written as
    ``OUT-0000k-of-0000K.safetensors`` (``--shard k/K``'s file) by the actors.

    Args:
        images, recursive: image files and folders.
        output: the ``OUT.safetensors`` name the part files derive from (storage every node
            sees).
        plan: the checked model plan.
        settings: the extraction options.
        ray: the cluster and the actor pool.
        progress: a bar on the driver over the parts.

    Returns:
        The parts' summary, the per-image check of the part files, and ``K``.
    """
    output = Path(output)
    if output.suffix != SUFFIX:
        raise InvalidArgument("output", f"must be a {SUFFIX} file name, got {output}")
    listing = find_images(images, recursive=recursive, argument="images")
    count = max(1, math.ceil(len(listing.paths) / ray.batch_size))
    rows = []
    for index in range(count):
        shard = Shard(index, count)
        paths = [str(path) for path in shard.select(listing.paths)]
        rows.append({"key": shard.name, "images": json.dumps(paths),
                     "target": str(shard_file(output, shard))})  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    part_options = dataclasses.replace(ray, batch_size=1)  # a row is a part: one per call
    with Ledger(ledger_path(output.parent, f"{output.stem}-{now_name('ray')}")) as ledger:
        summary = run_on_ray(rows, ExtractWorker, (plan, settings), part_options,
                             package="diffeat", ledger=ledger, desc="diffeat extract",
                             progress=progress)  # fmt: skip
    check = check_extract_shards(images, output, count, recursive=recursive)
    return summary, check, count


def write_refused_shard(path: str | os.PathLike, skipped: Sequence[Skipped]) -> None:
    """A shard whose images were all set aside still writes its file (no tensors; its
    metadata's ``refused`` says why), so that the shard is finished and its images accounted
    for."""
    refused = {str(item.path): item.reason for item in skipped}
    save_features(path, {}, {"diffeat": __version__, "images": [], "refused": refused})
