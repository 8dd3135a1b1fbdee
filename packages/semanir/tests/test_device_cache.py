"""``data.device_cache``: batches drawn on the training device have the CPU path's per-sample
distribution (crops of the images under one of the 8 flips/rotations, sigma uniform in the
range, Gaussian noise of that std), are a function of (seed, rank, step, micro-batch), continue
exactly on a resume, and the option is refused where it does not apply."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument, InvalidValue
from semanir.data import RestorationDataModule, SyntheticDegradationDataset, dihedral
from semanir.data.device_cache import (
    DeviceDraw,
    DeviceImageStore,
    DrawTickets,
    check_store_fits,
    draw_seed,
    read_uint8_images,
)
from semanir.io import list_images, write_image

SIZES = ((20, 24), (24, 20), (18, 18))  # (height, width): unequal sizes share a padded store


def uint8_images(count: int = 3, channels: int = 1, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(256, (channels, *SIZES[i % len(SIZES)]), generator=generator,
                      dtype=torch.uint8)
        for i in range(count)
    ]  # fmt: skip


def write_images(folder: Path, images: list[torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        write_image(folder / f"{index}.png", image.float() / 255)
    return folder


def test_every_patch_is_a_dihedral_variant_of_a_crop_of_its_image() -> None:
    images = uint8_images()
    store = DeviceImageStore(images, 8, sigma=None, sigma_range=(0, 50))
    batch, draws = store.draw(64, seed=3)
    assert batch["gt"].shape == batch["lq"].shape == (64, 1, 8, 8)
    assert batch["gt"].dtype == torch.float32
    for b in range(64):
        image = images[int(draws.index[b])]
        top, left, k = int(draws.top[b]), int(draws.left[b]), int(draws.variant[b])
        assert 0 <= top <= image.shape[-2] - 8 and 0 <= left <= image.shape[-1] - 8
        expected = dihedral(image[:, top : top + 8, left : left + 8], k).float() / 255
        assert torch.equal(batch["gt"][b], expected)


def test_a_patch_matches_a_crop_found_by_search_without_the_recorded_draws() -> None:
    """Independent of the draws the store reports: some image, corner and variant give it."""
    images = uint8_images()
    store = DeviceImageStore(images, 6, sigma=0, sigma_range=None)
    batch, _ = store.draw(8, seed=11)
    assert torch.equal(batch["lq"], batch["gt"])  # sigma 0: no noise
    for patch in batch["gt"]:
        found = any(
            torch.equal(dihedral(image[:, top : top + 6, left : left + 6], k).float() / 255, patch)
            for image in images
            for top in range(image.shape[-2] - 5)
            for left in range(image.shape[-1] - 5)
            for k in range(8)
        )
        assert found


def test_noise_std_per_sample_matches_its_sigma_and_sigmas_cover_the_range() -> None:
    images = [torch.full((1, 64, 64), 128, dtype=torch.uint8)]
    store = DeviceImageStore(images, 64, sigma=None, sigma_range=(5, 55))
    batch, draws = store.draw(256, seed=0)
    residual = (batch["lq"] - batch["gt"]).flatten(1) * 255  # (B, 4096) on the 0-255 scale
    std = residual.std(dim=1)
    # 4096 Gaussian values: the sample std is within 5% of sigma (about 4.5 standard errors).
    assert torch.allclose(std, draws.sigma, rtol=0.05)
    assert residual.mean(dim=1).abs().max() < 0.1 * draws.sigma.max()
    assert draws.sigma.min() >= 5 and draws.sigma.max() <= 55
    # Uniform on [5, 55]: mean 30, std 50 / sqrt(12) = 14.4; 256 draws.
    assert abs(draws.sigma.mean().item() - 30) < 3
    assert abs(draws.sigma.std().item() - 50 / math.sqrt(12)) < 1.5


def test_draws_are_uniform_over_images_corners_and_variants() -> None:
    images = uint8_images(count=4)
    store = DeviceImageStore(images, 16, sigma=10, sigma_range=None)
    _, draws = store.draw(8000, seed=1)
    for values, choices in ((draws.index, 4), (draws.variant, 8)):
        counts = torch.bincount(values, minlength=choices).float()
        expected = 8000 / choices
        assert ((counts - expected).abs() < 5 * math.sqrt(expected)).all()  # 5 sigma
    first = draws.index == 0  # a 20x24 image: 5 rows and 9 columns of corners
    assert set(draws.top[first].tolist()) == set(range(5))
    assert set(draws.left[first].tolist()) == set(range(9))
    assert torch.equal(draws.sigma, torch.full_like(draws.sigma, 10.0))


def test_mean_noise_power_equals_the_cpu_paths(tmp_path: Path) -> None:
    """E[(lq - gt)^2] = E[sigma^2] / 255^2 = (lo^2 + lo hi + hi^2) / 3 / 255^2 on both paths."""
    folder = write_images(tmp_path / "train", uint8_images())
    low, high = 10.0, 40.0
    expected = (low**2 + low * high + high**2) / 3 / 255**2
    cpu = SyntheticDegradationDataset(folder, "denoise", patch_size=16, sigma_range=(low, high))
    torch.manual_seed(0)
    samples = [cpu[i % 3] for i in range(600)]
    cpu_power = torch.stack([(s["lq"] - s["gt"]).square().mean() for s in samples])
    store = DeviceImageStore(read_uint8_images(list_images(folder), "gray"), 16, sigma=None,
                             sigma_range=(low, high))  # fmt: skip
    batch, _ = store.draw(600, seed=0)
    device_power = (batch["lq"] - batch["gt"]).square().flatten(1).mean(dim=1)
    for power in (cpu_power, device_power):  # sigma^2's std over draws bounds the error
        assert abs(power.mean().item() - expected) < 0.08 * expected


def test_the_same_seed_draws_the_same_batch_and_another_seed_another() -> None:
    store = DeviceImageStore(uint8_images(), 8, sigma=None, sigma_range=(0, 50))
    first, _ = store.draw(4, draw_seed(0, 0, 5, 0))
    again, _ = store.draw(4, draw_seed(0, 0, 5, 0))
    assert torch.equal(first["lq"], again["lq"]) and torch.equal(first["gt"], again["gt"])
    for other in (draw_seed(0, 0, 6, 0), draw_seed(1, 0, 5, 0), draw_seed(0, 1, 5, 0),
                  draw_seed(0, 0, 5, 1)):  # fmt: skip
        assert not torch.equal(store.draw(4, other)[0]["lq"], first["lq"])


def test_the_data_module_draws_by_global_step_and_micro_batch(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "train", uint8_images())
    data = RestorationDataModule(
        train_dirs=[str(folder)], sigma_range=(0, 50), patch_size=8, batch_size=2,
        num_workers=0, device_cache=True, seed=4,
    )  # fmt: skip
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, DrawTickets) and len(loader) == 1  # 3 images, batches of 2
    tickets = list(loader)
    assert len(tickets) == 1 and isinstance(tickets[0], DeviceDraw)
    first = data.on_after_batch_transfer(tickets[0], 0)  # no trainer: steps 0, 1, ...
    second = data.on_after_batch_transfer(DeviceDraw(), 0)
    expected, _ = data.store.draw(2, draw_seed(4, 0, 0, 0))
    assert torch.equal(first["lq"], expected["lq"])
    assert torch.equal(second["lq"], data.store.draw(2, draw_seed(4, 0, 1, 0))[0]["lq"])
    val = {"lq": torch.zeros(1), "gt": torch.zeros(1)}
    assert data.on_after_batch_transfer(val, 0) is val  # validation batches pass unchanged


def cached_data(images: Path) -> RestorationDataModule:
    """A device-cached data module over ``images`` (8 images, batch 2: 4 steps an epoch)."""
    return RestorationDataModule(
        train_dirs=[str(images)], task="denoise", sigma_range=(0, 50), patch_size=16,
        batch_size=2, num_workers=0, device_cache=True,
    )  # fmt: skip


@pytest.mark.parametrize("stop", [2, 4])  # mid-epoch, the end of an epoch
def test_a_resumed_device_cached_fit_draws_the_batches_of_the_uninterrupted_one(
    tmp_path: Path, stop: int, fit_recording_batches
) -> None:
    images = write_images(tmp_path / "images", [
        torch.randint(256, (1, 24, 24), generator=torch.Generator().manual_seed(i),
                      dtype=torch.uint8) for i in range(8)
    ])  # fmt: skip
    straight = fit_recording_batches(tmp_path / "straight", cached_data(images), max_steps=6)
    assert [(epoch, step) for epoch, step, _ in straight] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 4),
        (1, 5),
    ]
    assert len({total for *_, total in straight}) == 6  # a new batch every step
    [checkpoint] = (tmp_path / "straight").glob(f"*-step={stop}.ckpt")
    resumed = fit_recording_batches(
        tmp_path / "resumed", cached_data(images), checkpoint, max_steps=6
    )
    assert resumed == straight[stop:]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"task": "jpeg", "quality_range": (10, 90)}, "task 'jpeg'"),
        ({"task": "sr", "scale": 2}, "task 'sr'"),
        ({"task": "paired", "train_lq_dir": "lq"}, "task 'paired' with train_lq_dir"),
        ({"sigma_range": None}, "needs sigma or sigma_range"),
        ({"device_cache": "yes"}, "must be true or false"),
    ],
)
def test_device_cache_is_refused_where_it_does_not_apply(options: dict, words: str) -> None:
    arguments = {"train_dirs": ["train"], "task": "denoise", "sigma_range": (0, 50),
                 "device_cache": True, "num_workers": 0, **options}  # fmt: skip
    with pytest.raises(InvalidArgument) as caught:
        RestorationDataModule(**arguments)
    assert caught.value.argument in ("device_cache", "sigma_range")
    if caught.value.argument == "device_cache":
        assert words in str(caught.value)
        assert "--data.device_cache: " in caught.value.for_flags(
            {"device_cache": "--data.device_cache", "train_lq_dir": "--data.train_lq_dir"}
        )


def test_images_of_more_than_8_bits_and_a_store_too_large_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    deep = tmp_path / "deep.png"
    Image.fromarray((torch.arange(64 * 64).view(64, 64) * 7).numpy().astype("uint16")).save(deep)
    with pytest.raises(InvalidValue, match=r"device_cache stores 8-bit images.*deep\.png"):
        read_uint8_images([deep], "gray")
    with pytest.raises(InvalidValue, match=r"the 3 training images need 0 MiB.*set device_cache"):
        check_store_fits(uint8_images(), torch.device("cpu"), budget=1000)
