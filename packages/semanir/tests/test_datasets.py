"""Datasets and data module: determinism, crops, dihedral augmentation, pairing, errors."""

from pathlib import Path

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument
from semanir.data import (
    PairedFolderDataset,
    RestorationDataModule,
    SyntheticDegradationDataset,
    bicubic_downscale,
    dihedral,
    downscale_crop,
)
from semanir.data.datasets import Box
from semanir.io import read_image, write_image


def make_images(folder: Path, count: int = 3, size: tuple[int, int] = (40, 48), channels: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(len(str(folder)))
    for index in range(count):
        write_image(folder / f"img{index}.png", torch.rand(channels, *size, generator=generator))
    return folder


def test_dihedral_gives_the_eight_symmetries_of_the_square() -> None:
    patch = torch.arange(9.0).view(1, 3, 3)
    variants = [dihedral(patch, k) for k in range(8)]
    as_tuples = {tuple(v.flatten().tolist()) for v in variants}
    expected = {
        tuple(t.flatten().tolist())
        for t in (
            patch,
            patch.flip(-1),
            patch.flip(-2),
            patch.transpose(-1, -2),
            patch.flip(-1).flip(-2),
            patch.transpose(-1, -2).flip(-1),
            patch.transpose(-1, -2).flip(-2),
            patch.transpose(-1, -2).flip(-1).flip(-2),
        )
    }
    assert len(as_tuples) == 8 and as_tuples == expected
    assert torch.equal(dihedral(patch, 0), patch)
    assert torch.equal(dihedral(patch, 1), torch.tensor([[[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]]))


def test_training_augmentation_visits_all_variants_consistently(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean", count=1, size=(8, 8))
    image = read_image(folder / "img0.png")
    dataset = SyntheticDegradationDataset(folder, "denoise", patch_size=8, sigma=0, train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(64):
        sample = dataset[0]
        assert torch.equal(sample["lq"], sample["gt"])  # sigma 0: same transform on both
        k = next(k for k in range(8) if torch.equal(sample["gt"], dihedral(image, k)))
        seen.add(k)
    assert seen == set(range(8))


def test_sr_augmentation_keeps_lq_and_gt_aligned(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean", count=2, size=(36, 48))
    dataset = SyntheticDegradationDataset(folder, "sr", patch_size=24, scale=3, train=True)
    torch.manual_seed(1)
    for index in range(6):
        sample = dataset[index % 2]
        assert sample["gt"].shape == (1, 24, 24) and sample["lq"].shape == (1, 8, 8)
        # Downscaling commutes with flips/rotations, so lq stays the downscaled gt. The crop
        # was downscaled with its surroundings, so compare where the kernel (2 low-resolution
        # pixels each side) stays inside the crop.
        expected = bicubic_downscale(sample["gt"], 3)
        torch.testing.assert_close(sample["lq"][..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2])


def test_downscale_crop_equals_cropping_the_downscaled_image() -> None:
    image = torch.rand(1, 36, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for scale in (2, 3, 4):
        full = bicubic_downscale(image, scale)
        for top, left in ((0, 0), (scale, 2 * scale), (36 - 3 * scale, 48 - 3 * scale)):
            box = Box(top, left, 3 * scale, 3 * scale)
            patch = downscale_crop(image, box, scale)
            expected = full[..., top // scale : top // scale + 3, left // scale : left // scale + 3]
            torch.testing.assert_close(patch, expected, atol=1e-12, rtol=0)


def test_validation_is_deterministic_per_seed(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean")

    def build(seed: int) -> SyntheticDegradationDataset:
        return SyntheticDegradationDataset(
            folder, "denoise", sigma_range=(0, 55), train=False, seed=seed
        )

    first, second, other = build(0), build(0), build(1)
    assert len(first) == 3
    for index in range(3):
        a, b = first[index], second[index]
        assert torch.equal(a["lq"], b["lq"]) and a["gt"].shape == (1, 40, 48)
        assert torch.equal(first[index]["lq"], a["lq"])  # same item, same degradation
        assert not torch.equal(other[index]["lq"], a["lq"])
    assert not torch.equal(first[0]["lq"] - first[0]["gt"], first[1]["lq"] - first[1]["gt"])


def test_training_randomness_follows_the_global_seed(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean")
    dataset = SyntheticDegradationDataset(folder, "denoise", patch_size=16, sigma=25, repeat=4)
    assert len(dataset) == 12
    torch.manual_seed(7)
    first = [dataset[i]["lq"] for i in range(3)]
    torch.manual_seed(7)
    again = [dataset[i]["lq"] for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(dataset[0]["lq"], dataset[0]["lq"])  # new crop/noise every draw
    assert first[0].shape == (1, 16, 16)


def test_center_crop_validation(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean", count=1, size=(40, 48), channels=3)
    dataset = SyntheticDegradationDataset(
        folder, "jpeg", patch_size=16, quality=20, channels="rgb", train=False
    )
    sample = dataset[0]
    image = read_image(folder / "img0.png")
    assert torch.equal(sample["gt"], image[:, 12:28, 16:32])
    assert sample["lq"].shape == (3, 16, 16) and sample["name"] == "img0"


def test_gray_images_become_rgb_for_demosaicking(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean", count=1, size=(16, 16))
    dataset = SyntheticDegradationDataset(folder, "demosaic", patch_size=8, channels="rgb")
    sample = dataset[0]
    assert sample["gt"].shape == (3, 8, 8)
    assert torch.all((sample["lq"] != 0).sum(0) <= 1)  # at most one colour per pixel


def test_dataset_argument_errors(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "clean", size=(20, 20))
    cases = {  # the data module's checks (semanir.tasks), each naming its argument
        "task: must be one of denoise, jpeg, sr, demosaic, got 'deblur'": ("deblur", {}),
        "sigma_range: task 'denoise' needs sigma (fixed) or sigma_range (drawn)": ("denoise", {}),
        "sigma: give sigma or sigma_range, not both": (
            "denoise", {"sigma": 5, "sigma_range": (0, 9)},
        ),
        "sigma: must be in [0, 255], got 300": ("denoise", {"sigma": 300}),
        "quality: applies to task 'jpeg' only, not 'denoise'": (
            "denoise", {"sigma": 5, "quality": 10},
        ),
        "quality_range: must be [low, high] with low <= high, each an integer in [1, 95], got "
        "[0, 50]": ("jpeg", {"quality_range": (0, 50)}),
        "scale: task 'sr' needs 2, 3 or 4, got 8": ("sr", {"scale": 8}),
        "scale: applies to tasks 'sr' and 'paired', not 'jpeg'": (
            "jpeg", {"quality": 10, "scale": 2},
        ),
        "channels: task 'demosaic' needs 'rgb', got 'gray'": ("demosaic", {}),
    }  # fmt: skip
    for message, (task, options) in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            SyntheticDegradationDataset(folder, task, patch_size=8, **options)
        assert str(caught.value) == message
    with pytest.raises(ValueError, match="positive multiple of the scale 3"):
        SyntheticDegradationDataset(folder, "sr", patch_size=8, scale=3)
    with pytest.raises(ValueError, match="patch_size is required for training"):
        SyntheticDegradationDataset(folder, "denoise", sigma=5)
    with pytest.raises(
        ValueError,
        match=r"patch_size 32 is larger than the smallest training image \(20 px a side\): 3 "
        r"image\(s\) smaller, .*img0.*; use a patch_size of at most 20",
    ):
        SyntheticDegradationDataset(folder, "denoise", patch_size=32, sigma=5)
    with pytest.raises(FileNotFoundError, match="no images"):
        SyntheticDegradationDataset(tmp_path / "clean" / "..", "denoise", patch_size=8, sigma=5)


def test_paired_folders_match_by_name(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    (tmp_path / "lq").mkdir()
    for name in ("a", "b"):
        low = torch.rand(1, 6, 8, generator=generator)
        write_image(tmp_path / "lq" / f"{name}.png", low)
        gt = low.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # (1, 12, 16)
        write_image(tmp_path / "gt" / f"{name}.bmp", gt)
    dataset = PairedFolderDataset(
        tmp_path / "lq", tmp_path / "gt", patch_size=8, scale=2, channels="gray"
    )
    torch.manual_seed(0)
    for index in range(4):
        sample = dataset[index % 2]
        assert sample["lq"].shape == (1, 4, 4) and sample["gt"].shape == (1, 8, 8)
        assert torch.equal(sample["gt"][..., ::2, ::2], sample["lq"])  # aligned crops
    full = PairedFolderDataset(tmp_path / "lq", tmp_path / "gt", scale=2, train=False)
    assert full[1]["name"] == "b" and full[1]["gt"].shape == (3, 12, 16)


def test_paired_folder_errors(tmp_path: Path) -> None:
    make_images(tmp_path / "lq", count=3, size=(8, 8))
    make_images(tmp_path / "gt", count=2, size=(8, 8))
    (tmp_path / "gt" / "img1.png").rename(tmp_path / "gt" / "other.png")
    with pytest.raises(
        ValueError, match=r"without a clean partner: \['img1', 'img2'\].*\['other'\]"
    ):
        PairedFolderDataset(tmp_path / "lq", tmp_path / "gt", patch_size=4)
    (tmp_path / "gt" / "other.png").unlink()
    (tmp_path / "lq" / "img1.png").unlink()
    (tmp_path / "lq" / "img2.png").unlink()
    dataset = PairedFolderDataset(tmp_path / "lq", tmp_path / "gt", scale=2, train=False)
    with pytest.raises(ValueError, match=r"size mismatch for 'img0'.*should be 16x16.*got 8x8"):
        dataset[0]


def test_data_module_loaders(tmp_path: Path) -> None:
    train, val = make_images(tmp_path / "train", count=4), make_images(tmp_path / "val", count=2)
    module = RestorationDataModule(
        train_dirs=[str(train)],
        val_dirs=[str(val)],
        task="denoise",
        patch_size=16,
        batch_size=3,
        num_workers=0,
        sigma_range=(0, 55),
        val_sigma=25,
        repeat=2,
    )
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert len(batches) == 2 and batches[0]["lq"].shape == (3, 1, 16, 16)  # 8 items, drop_last
    first = next(iter(module.val_dataloader()))
    second = next(iter(module.val_dataloader()))
    assert first["gt"].shape == (1, 1, 40, 48) and torch.equal(first["lq"], second["lq"])
    residual = (first["lq"] - first["gt"]).std().item() * 255
    assert residual == pytest.approx(25, rel=0.1)


def test_data_module_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task 'paired' needs train_lq_dir"):
        RestorationDataModule(train_dirs=[str(tmp_path)], task="paired")
    with pytest.raises(ValueError, match=r"fitting needs data\.train_dirs"):
        RestorationDataModule(sigma=25).setup("fit")


def test_resumable_sampler_order_and_seeds_are_functions_of_seed_epoch_position() -> None:
    from semanir.data.sampling import ResumableSampler, epoch_order, item_seed

    sampler = ResumableSampler(10, seed=3)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(10))  # a permutation
    assert first == list(ResumableSampler(10, seed=3))  # reproducible
    assert [seed for _, seed in first] == [item_seed(3, 0, p) for p in range(10)]
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in second] == epoch_order(10, 3, 1) != [i for i, _ in first]
    resumed = ResumableSampler(10, seed=3)
    resumed.resume_at(1, 4)
    resumed.set_epoch(1)
    assert list(resumed) == second[4:]  # the uninterrupted epoch's tail, seeds included
    resumed.set_epoch(2)
    first_of_next = next(iter(resumed))
    assert first_of_next == (epoch_order(10, 3, 2)[0], item_seed(3, 2, 0))  # from its start
    early = ResumableSampler(10, seed=3)
    early.resume_at(1, 4)  # iterated before set_epoch, as a loader with workers does
    assert list(early) == second[4:]


def test_an_item_key_with_a_seed_fixes_its_crop_and_noise(tmp_path: Path) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    write_image(folder / "a.png", torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(0)))
    dataset = SyntheticDegradationDataset(folder, "denoise", sigma_range=(0, 50), patch_size=16)
    a, b = dataset[(0, 123)], dataset[(0, 123)]
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    assert not torch.equal(a["lq"], dataset[(0, 124)]["lq"])
