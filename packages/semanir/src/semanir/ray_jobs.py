"""``semanir restore --ray``: a batch restored on a Ray cluster
(:mod:`common_kernels.runtime.ray_batch`).

The driver lists the inputs once and checks where each result goes and the models' options
(as :func:`~semanir.batch.plan_restore` does, without decoding the photos: the workers read
them, and a photo that does not decode is refused alone). Each actor loads the models once
(:class:`RestoreWorker`) and restores its batches photo by photo with
:func:`~semanir.batch.restore_photo`, writing each result atomically, so a result is byte for byte
the plain command's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from common_kernels.runtime.files import check_output_folder_name
from common_kernels.runtime.photos import read_photo, write_photo
from common_kernels.runtime.ray_batch import RayOptions, RaySummary, RowWorker, run_on_ray
from common_kernels.runtime.shards import Ledger, ledger_path, now_name
from semanir.batch import Colour, batch_targets, check_models, photo_tile, restore_photo
from semanir.inference import ModelChoice


class RestoreWorker(RowWorker):
    """A Ray actor restoring photos: the models load once per actor, on first use.

    Args:
        model: a bundled name, folder or hub id for every photo; None: the bundled model of
            ``task`` for each photo's channels.
        task: "denoise", "jpeg" or "sr".
        device: where the actor runs its models ("cuda" on a GPU actor).
        colour: colour photos through a gray model (see :func:`~semanir.batch.restore_photo`).
        options: ``tile``, ``tile_overlap``, ``k``, ``ensemble``.
    """

    def __init__(self, model: str | None, task: str, device: str, colour: Colour,
                 options: dict) -> None:  # fmt: skip
        self.models = ModelChoice(model, task, torch.device(device), per_channel=colour != "luma")
        self.colour, self.options = colour, options

    def settle(self, job: dict) -> str:
        target = Path(job["target"])
        if target.is_file():  # an earlier run, or this batch's first try before a failure
            return "finished"
        photo = read_photo(job["source"])
        model = self.models.model(self.models.name_for(gray=photo.channels == 1))
        tile = photo_tile(model, photo, self.colour, self.options)
        restored = restore_photo(model, photo, colour=self.colour,
                                 **{**self.options, "tile": tile})  # fmt: skip
        write_photo(target, restored)
        return "written"


def restore_on_ray(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    ray: RayOptions,
    *,
    device: str = "cpu",
    recursive: bool = False,
    task: str = "denoise",
    model: str | Path | None = None,
    colour: Colour = "luma",
    tile: int | Literal["auto"] | None = "auto",
    tile_overlap: int = 32,
    k: int | None = None,
    ensemble: bool = False,
    progress: bool = True,
) -> tuple[RaySummary, Path]:
    """Restore a batch on Ray: the same results as ``plan_restore`` + ``run_restore`` (with
    ``skip_existing`` and ``keep_going``), written by the actors to ``output``, a folder every
    node sees.

    Args:
        inputs, output, task, model, colour, recursive, tile, tile_overlap, k, ensemble: as in
            :func:`~semanir.batch.plan_restore`.
        ray: the cluster and the actor pool.
        device: where each actor runs its models (``"cuda"`` with ``ray.gpus_per_worker``).
        progress: a bar on the driver over the inputs.

    Returns:
        The summary (written, finished before, refused with reasons) and the run's ledger.
    """
    output = check_output_folder_name(output, "output")
    check_models(model, task, colour, tile=tile, tile_overlap=tile_overlap, k=k)
    _, pairs = batch_targets(inputs, output, recursive=recursive)
    jobs = [{"key": str(image.relative), "source": str(image.path), "target": str(target)}
            for image, target in pairs]  # fmt: skip
    options = {"tile": tile, "tile_overlap": tile_overlap, "k": k, "ensemble": ensemble}
    arguments = (None if model is None else str(model), task, device, colour, options)
    output.mkdir(parents=True, exist_ok=True)
    with Ledger(ledger_path(output, now_name("ray"))) as ledger:
        summary = run_on_ray(jobs, RestoreWorker, arguments, ray, package="semanir",
                             ledger=ledger, desc="semanir restore", progress=progress)  # fmt: skip
    return summary, ledger.path
