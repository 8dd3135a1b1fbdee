"""The training data resumes exactly: ``ResumableSampler``'s state, ``ResumableDataLoader``
(torchdata's ``StatefulDataLoader``) as Lightning checkpoints it, and fits resumed mid-epoch, at
an epoch's end, with another number of loader workers and with ``max_epochs``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.types import _Stateful

from semanir.data.datamodule import RestorationDataModule
from semanir.data.sampling import ResumableDataLoader, ResumableSampler, epoch_order, item_seed
from semanir.io import write_image


def test_sampler_state_round_trip_and_the_end_of_an_epoch() -> None:
    sampler = ResumableSampler(10, seed=3, batch_size=4)  # 8 items an epoch (drop_last)
    assert len(sampler) == 8
    keys = iter(sampler)
    drawn = [next(keys) for _ in range(5)]
    assert sampler.state_dict() == {"epoch": 0, "position": 5}
    resumed = ResumableSampler(10, seed=3, batch_size=4)
    resumed.load_state_dict(sampler.state_dict())
    assert (
        list(resumed)
        == list(keys)
        == [(epoch_order(10, 3, 0)[p], item_seed(3, 0, p)) for p in range(5, 8)]
    )
    assert drawn[0] == (epoch_order(10, 3, 0)[0], item_seed(3, 0, 0))
    finished = ResumableSampler(10, seed=3, batch_size=4)
    finished.load_state_dict({"epoch": 0, "position": 8})  # the last batch of epoch 0
    assert finished.state_dict() == {"epoch": 1, "position": 0}
    assert next(iter(finished)) == (epoch_order(10, 3, 1)[0], item_seed(3, 1, 0))


def test_ddp_ranks_share_each_epoch_and_count_positions_together() -> None:
    """Two processes: rank r takes positions r, r + 2, ... of the epoch's order; the state counts
    the items both handed out, so a resume with any number of processes continues there."""
    ranks = [ResumableSampler(9, seed=1, batch_size=2, num_replicas=2, rank=r) for r in (0, 1)]
    order = epoch_order(9, 1, 0)
    assert [len(s) for s in ranks] == [4, 4]  # 8 of 9 items: a multiple of 2 batches of 2
    keys = [list(s) for s in ranks]
    assert keys[0] == [(order[p], item_seed(1, 0, p)) for p in (0, 2, 4, 6)]
    assert keys[1] == [(order[p], item_seed(1, 0, p)) for p in (1, 3, 5, 7)]
    first = ResumableSampler(9, seed=1, batch_size=2, num_replicas=2, rank=0)
    iterator = iter(first)
    next(iterator), next(iterator)
    assert first.state_dict() == {"epoch": 0, "position": 4}
    alone = ResumableSampler(9, seed=1)
    alone.load_state_dict(first.state_dict())
    assert [key for key in alone][:2] == [(order[p], item_seed(1, 0, p)) for p in (4, 5)]


class Keys(torch.utils.data.Dataset):
    """Returns the keys the sampler asks for."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(key)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_is_the_position_of_the_last_batch_handed_out(workers: int) -> None:
    """With workers prefetching batches ahead, the state still counts only the batches handed
    out; a loader made from it (with another number of workers) continues with the next one."""

    def loader(num_workers: int) -> ResumableDataLoader:
        sampler = ResumableSampler(12, seed=5, batch_size=2)
        return ResumableDataLoader(Keys(), sampler, batch_size=2, num_workers=num_workers)

    straight = [batch.tolist() for batch in loader(workers)]
    assert isinstance(loader(0), _Stateful)  # Lightning saves and loads its state
    first = loader(workers)
    batches = iter(first)
    for _ in range(2):
        next(batches)
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 4}
    second = loader(2 - workers)
    second.load_state_dict(state)
    assert [batch.tolist() for batch in second] == straight[2:]


def make_images(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(count)
    for index in range(count):
        write_image(folder / f"{index}.png", torch.rand(1, size, size, generator=generator))
    return folder


def data_module(images: Path, workers: int) -> RestorationDataModule:
    """8 items of 16 px from 4 images (4 steps an epoch)."""
    return RestorationDataModule(
        train_dirs=[str(images)], task="denoise", sigma_range=(0, 50), patch_size=16,
        batch_size=2, num_workers=workers, repeat=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stop", "workers", "resumed_workers", "limits"),
    [
        (3, 0, 0, {"max_steps": 7}),  # mid-epoch
        (4, 2, 2, {"max_steps": 7}),  # the last batch of an epoch, workers drawing ahead
        (5, 2, 0, {"max_steps": 7}),  # another number of workers
        (6, 0, 2, {"max_epochs": 2}),  # the cosine's length from max_epochs (Lightning #20550)
    ],
)
def test_a_resumed_fit_trains_on_the_batches_of_the_uninterrupted_one(
    tmp_path: Path,
    stop: int,
    workers: int,
    resumed_workers: int,
    limits: dict,
    fit_recording_batches,
) -> None:
    fit = fit_recording_batches
    images = make_images(tmp_path / "images", count=4, size=24)
    straight = fit(tmp_path / "straight", data_module(images, workers), **limits)
    assert len(straight) == (7 if "max_steps" in limits else 8)
    stop_early = {**limits, "max_steps": stop}
    stopped = fit(tmp_path / "stopped", data_module(images, workers), **stop_early)
    assert stopped == straight[:stop]
    [checkpoint] = (tmp_path / "stopped").glob(f"*-step={stop}.ckpt")
    resumed = fit(tmp_path / "resumed", data_module(images, resumed_workers), checkpoint, **limits)
    assert resumed == straight[stop:]
