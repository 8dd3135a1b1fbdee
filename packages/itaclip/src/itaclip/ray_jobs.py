"""``itaclip segment --ray``: a batch segmented on a Ray cluster
(:mod:`common_kernels.runtime.ray_batch`).

The driver lists the images once and checks the outputs (as
:func:`~itaclip.folders.plan_segment_batch` does, without decoding the images: the workers read
them, and an image that does not decode, or that the segmenter refuses, is refused alone). Each
actor loads the segmenter once (:class:`SegmentWorker`) and writes every image's overlay and
label map atomically, so the outputs are byte for byte the plain command's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from common_kernels.runtime.photos import read_photo
from common_kernels.runtime.ray_batch import RayOptions, RaySummary, RowWorker, run_on_ray
from common_kernels.runtime.shards import Ledger, ledger_path, now_name
from itaclip.folders import segment_jobs
from itaclip.inputs import ClassInputs, class_names
from itaclip.segmenter import LoadPlan


class SegmentWorker(RowWorker):
    """A Ray actor segmenting images: the segmenter loads once per actor.

    Args:
        plan: the checked model plan (``check_from_pretrained``).
        classes: the checked classes (``check_classes``).
        output_size: (H, W) of the outputs, or None (each image's size).
    """

    def __init__(self, plan: LoadPlan, classes: ClassInputs,
                 output_size: Sequence[int] | None) -> None:  # fmt: skip
        from itaclip.segmenter import Segmenter

        self.segmenter = Segmenter.load(plan)
        self.classes, self.output_size = classes, output_size
        count = classes.queries.num_classes
        self.names = [class_names(classes.queries, index) for index in range(count)]

    def settle(self, job: dict) -> str:
        overlay, labels = Path(job["overlay"]), Path(job["labels"])
        if overlay.is_file() and labels.is_file():
            return "finished"
        photo = read_photo(job["source"])
        result = self.segmenter(photo, self.names, self.classes.aux_texts,
                                self.classes.background, output_size=self.output_size,
                                progress=False)  # fmt: skip
        result.save_overlay(overlay, photo)
        result.save_labels(labels)
        return "written"


def segment_on_ray(
    images: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    plan: LoadPlan,
    classes: ClassInputs,
    ray: RayOptions,
    *,
    recursive: bool = False,
    output_size: Sequence[int] | None = None,
    protect: Iterable[tuple[Path, str]] = (),
    progress: bool = True,
) -> tuple[RaySummary, Path]:
    """Segment a batch on Ray: the outputs of ``plan_segment_batch`` + ``segment_batch`` (with
    ``skip_existing`` and ``keep_going``), written by the actors into ``output``, a folder
    every node sees.

    Args:
        images, output, recursive, protect: as in :func:`~itaclip.folders.plan_segment_batch`.
        plan: the model plan (``itaclip.segmenter.check_from_pretrained``).
        classes: the checked classes (``itaclip.inputs.check_classes``).
        ray: the cluster and the actor pool (``ray.gpus_per_worker`` with a CUDA plan).
        output_size: (H, W) of the outputs, or None.
        progress: a bar on the driver over the images.

    Returns:
        The summary (written, finished before, refused with reasons) and the run's ledger.
    """
    _, jobs, _ = segment_jobs(images, output, recursive=recursive, protect=protect)
    rows = [{"key": str(job.image.relative), "source": str(job.image.path),
             "overlay": str(job.overlay), "labels": str(job.labels)} for job in jobs]  # fmt: skip
    size = None if output_size is None else tuple(output_size)
    Path(output).mkdir(parents=True, exist_ok=True)
    with Ledger(ledger_path(Path(output), now_name("ray"))) as ledger:
        summary = run_on_ray(rows, SegmentWorker, (plan, classes, size), ray, package="itaclip",
                             ledger=ledger, desc="itaclip segment", progress=progress)  # fmt: skip
    return summary, ledger.path
