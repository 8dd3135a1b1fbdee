"""Dataset readers on tiny synthetic folders, confusion matrices, mIoU, 2-process evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_jaccard_index

from itaclip.cli import main
from itaclip.datasets import SegmentationDataset
from itaclip.evaluate import confusion_matrix, iou_from_confusion
from itaclip.io import load_image


def write_pair(image_path: Path, label_path: Path, seed: int, num_classes: int, palette=False):
    rng = np.random.default_rng(seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(image_path)
    label = rng.integers(0, num_classes, (36, 44)).astype(np.uint8)
    label[:3] = 255
    image = Image.fromarray(label)
    if palette:
        image = image.convert("P")
        image.putpalette(list(range(256)) * 3)
    image.save(label_path)
    return label


def make_voc(root: Path, ids=("2007_000001", "2007_000002", "2007_000003")) -> dict:
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return {
        i: write_pair(
            root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png", n, 21, True
        )
        for n, i in enumerate(ids)
    }


def test_voc_reader_reads_palette_indices(tmp_path):
    labels = make_voc(tmp_path)
    ds = SegmentationDataset("voc21", tmp_path)
    assert len(ds) == 3 and ds.num_classes == 21
    image, label, name = ds[1]
    assert name == "2007_000002" and image.shape == (3, 36, 44)
    assert torch.equal(label, torch.from_numpy(labels[name].astype(np.int64)))


def test_other_layouts(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "ImageSets/SegmentationContext").mkdir(parents=True)
    (ctx / "ImageSets/SegmentationContext/val.txt").write_text("a\n")
    write_pair(ctx / "JPEGImages/a.jpg", ctx / "SegmentationClassContext/a.png", 0, 60)
    coco = tmp_path / "coco"
    write_pair(
        coco / "images/val2017/1.jpg", coco / "annotations/val2017/1_labelTrainIds.png", 1, 171
    )
    write_pair(
        coco / "images/val2017/1.jpg", coco / "annotations/val2017/1_instanceTrainIds.png", 2, 81
    )
    city = tmp_path / "city"
    write_pair(
        city / "leftImg8bit/val/ulm/ulm_000_leftImg8bit.png",
        city / "gtFine/val/ulm/ulm_000_gtFine_labelTrainIds.png", 3, 19,
    )  # fmt: skip
    cases = [("context60", ctx, 60, "a"), ("coco_stuff", coco, 171, "1"),
             ("coco_object", coco, 81, "1"), ("cityscapes", city, 19, "ulm_000")]  # fmt: skip
    for name, root, classes, first in cases:
        ds = SegmentationDataset(name, root)
        image, label, sample = ds[0]
        assert (ds.num_classes, sample, image.shape[0]) == (classes, first, 3)
        assert int(label[3:].max()) < classes and int(label[:3].min()) == 255


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        SegmentationDataset("voc21", tmp_path / "missing")
    known = "ade20k, cityscapes, coco_object, coco_stuff, context59, context60, voc20, voc21"
    with pytest.raises(KeyError, match=f"^\"unknown dataset 'ade847'; known: {known}\"$"):
        SegmentationDataset("ade847", tmp_path)
    make_voc(tmp_path, ids=("x",))
    (tmp_path / "SegmentationClass/x.png").unlink()
    with pytest.raises(FileNotFoundError, match="label map not found"):
        SegmentationDataset("voc21", tmp_path)[0]


def test_confusion_and_miou():
    label = torch.tensor([[0, 1, 1, 255], [2, 2, 0, 1]])
    pred = torch.tensor([[0, 1, 0, 2], [2, 1, 0, 1]])
    conf = confusion_matrix(pred, label, 3)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for g, p in zip(label.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if g != 255:
            expected[g, p] += 1
    assert torch.equal(conf, expected)
    result = iou_from_confusion(conf)
    # class 0: tp 2, fp 1, fn 0 -> 2/3; class 1: tp 2, fn 1, fp 1 -> 1/2; class 2: tp 1, fn 1 -> 1/2
    assert result.iou == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert result.miou == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    empty = iou_from_confusion(torch.tensor([[3, 0], [0, 0]]))
    assert empty.miou == 1.0  # a class absent from prediction and ground truth is skipped


def test_miou_hand_computed_with_an_absent_class_and_ignored_pixels():
    """4 classes; class 3 is in no label and only predicted on ignored or stray-label pixels.

    Kept (label, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0); rows (labels)
    [2,1,0,0] [0,2,0,0] [1,0,1,0] [0,0,0,0]. IoU: 2/(3+3-2), 2/(2+3-2), 1/(2+1-1), class 3
    NaN (union 0) and left out of the mean, as mmseg does. Pixel accuracy 5/7.
    """
    label = torch.tensor([[0, 0, 1, 1, 255, 255], [2, 2, 0, 255, 7, -1]])
    pred = torch.tensor([[0, 1, 1, 1, 3, 2], [2, 0, 0, 3, 3, 3]])
    conf = confusion_matrix(pred, label, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert conf.dtype == torch.int64
    result = iou_from_confusion(conf)
    assert result.iou[:3] == pytest.approx([2 / 4, 2 / 3, 1 / 2]) and np.isnan(result.iou[3])
    assert result.miou == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    assert result.accuracy == pytest.approx(5 / 7, abs=1e-12)
    labelled = (label != 7) & (label != -1)  # torchmetrics' metric knows ignore_index only
    macro = multiclass_jaccard_index(
        pred[labelled], label[labelled], 4, average="macro", ignore_index=255
    )
    assert result.miou == pytest.approx(macro.item(), abs=1e-6)
    with pytest.raises(
        ValueError, match=r"pred: class indices must lie in \[0, 3\], got .*\[1, 4\]"
    ):
        confusion_matrix(pred + 1, label, 4)


def previous_confusion_matrix(pred, label, num_classes, ignore_index=255):
    """itaclip 0.2.0's hand-written counting."""
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[valid] * num_classes + pred[valid].clamp(0, num_classes - 1)
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_miou_equal_the_previous_implementation_on_random_labels(seed):
    """21 classes drawn from 0..18 (19, 20 absent), 10% ignored pixels, a few stray labels."""
    generator = torch.Generator().manual_seed(seed)
    conf = torch.zeros(21, 21, dtype=torch.int64)
    previous = torch.zeros(21, 21, dtype=torch.int64)
    preds, labels = [], []
    for _ in range(4):
        label = torch.randint(19, (37, 45), generator=generator)
        pred = torch.where(torch.rand(label.shape, generator=generator) < 0.6, label, 0)
        pred = torch.where(torch.rand(label.shape, generator=generator) < 0.2, 18 - label, pred)
        label[torch.rand(label.shape, generator=generator) < 0.1] = 255
        label[0, :3] = torch.tensor([21, 40, -1])  # stray labels: left out like ignored pixels
        conf += confusion_matrix(pred, label, 21)
        previous += previous_confusion_matrix(pred, label, 21)
        keep = (label >= 0) & (label < 21)
        preds.append(pred[keep])
        labels.append(label[keep])
    assert torch.equal(conf, previous)
    result = iou_from_confusion(conf)
    assert np.isnan(result.iou[19]) and np.isnan(result.iou[20])
    macro = multiclass_jaccard_index(torch.cat(preds), torch.cat(labels), 21, average="macro")
    assert result.miou == pytest.approx(macro.item(), rel=1e-6)


def test_eval_two_processes_equals_one(tmp_path, tiny_dir):
    make_voc(tmp_path / "voc")
    common = ["eval", "--dataset", "voc21", "--root", str(tmp_path / "voc"),
              "--model", f"local-dir:{tiny_dir}", "--pretrained", "", "--stride", "224",
              "--short-side", "64", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--nproc", "2", "--json", str(tmp_path / "two.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2 and one["samples"] == two["samples"] == 3
    assert one["confusion"] == two["confusion"]
    assert sum(map(sum, one["confusion"])) == 3 * 33 * 44  # every non-ignored pixel counted
    assert one["miou"] == pytest.approx(two["miou"])


def test_evaluate_rejects_a_mismatched_preset(tmp_path, make_segmenter):
    from itaclip.evaluate import evaluate

    make_voc(tmp_path)
    seg = make_segmenter(preset="cityscapes", pamr=False)
    with pytest.raises(ValueError, match="predicts 19 classes but voc21 has 21"):
        evaluate(seg, SegmentationDataset("voc21", tmp_path), limit=1, progress=False)


# VOC20, Context59 and ADE20K: the peers' no-background benchmarks (mmseg reduce_zero_label)

NEW_BENCHMARKS = {  # name: (raw label values 0..K in the files, split list or None)
    "voc20": (20, "ImageSets/Segmentation"),
    "context59": (59, "ImageSets/SegmentationContext"),
    "ade20k": (150, None),
}


def benchmark_paths(root: Path, name: str, sample: str) -> tuple[Path, Path]:
    """Image and label paths of ``sample`` in the layout of ``name``, written from the facts."""
    if name == "voc20":
        return root / "JPEGImages" / f"{sample}.jpg", root / "SegmentationClass" / f"{sample}.png"
    if name == "context59":
        label = root / "SegmentationClassContext" / f"{sample}.png"
        return root / "JPEGImages" / f"{sample}.jpg", label
    label = root / "annotations/validation" / f"{sample}.png"
    return root / "images/validation" / f"{sample}.jpg", label


def make_benchmark(root: Path, name: str, raws: dict[str, np.ndarray]) -> None:
    """A folder of ``name`` holding the raw label maps ``raws`` (VOC's as palette PNGs)."""
    _, split_dir = NEW_BENCHMARKS[name]
    if split_dir is not None:
        (root / split_dir).mkdir(parents=True)
        (root / split_dir / "val.txt").write_text("\n".join(raws) + "\n")
    rng = np.random.default_rng(len(raws))
    for sample, raw in raws.items():
        image_path, label_path = benchmark_paths(root, name, sample)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (*raw.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(image_path)
        label = Image.fromarray(raw.astype(np.uint8))
        if name == "voc20":
            label = label.convert("P")
            label.putpalette(list(range(256)) * 3)
        label.save(label_path)


def random_raws(name: str, count: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw 36x44 label maps drawn from the file values 0 (ignored) and 1..K (classes), and VOC's
    255 boundary on the first two rows."""
    top, _ = NEW_BENCHMARKS[name]
    rng = np.random.default_rng(seed)
    raws = {}
    for index in range(count):
        raw = rng.integers(0, top + 1, (36, 44))
        if name == "voc20":
            raw[:2] = 255
        raws[f"s{index}"] = raw
    return raws


def test_reduce_zero_label_on_every_byte_value():
    from itaclip.datasets import reduce_zero_label

    values = torch.arange(256)
    mapped = reduce_zero_label(values)
    assert mapped[0] == 255 and mapped[255] == 255
    assert torch.equal(mapped[1:255], torch.arange(0, 254))
    # mmseg's three steps: 0 -> 255, minus one, 254 -> 255
    restated = torch.where(values == 0, 255, values) - 1
    assert torch.equal(mapped, torch.where(restated == 254, 255, restated))


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("voc20", [[0, 1, 2, 20], [255, 15, 0, 7]], [[255, 0, 1, 19], [255, 14, 255, 6]]),
        ("context59", [[0, 1, 59, 30], [0, 37, 2, 58]], [[255, 0, 58, 29], [255, 36, 1, 57]]),
        ("ade20k", [[0, 1, 150, 75], [13, 0, 3, 149]], [[255, 0, 149, 74], [12, 255, 2, 148]]),
    ],
)
def test_new_readers_map_labels_exactly(tmp_path, name, raw, expected):
    from itaclip import dataset_classes

    make_benchmark(tmp_path, name, {"a": np.array(raw)})
    dataset = SegmentationDataset(name, tmp_path)
    image, label, sample = dataset[0]
    assert (len(dataset), dataset.num_classes, sample) == (1, NEW_BENCHMARKS[name][0], "a")
    assert image.shape == (3, 2, 4) and label.dtype == torch.int64
    assert label.tolist() == expected
    names = dataset_classes(name).names
    assert len(names) == dataset.num_classes
    if name == "ade20k":  # file value 13 is ADE20K's "person", 1 its "wall", 150 its "flag"
        assert [names[label[1, 0]], names[label[0, 1]], names[label[0, 2]]] == [
            "person", "wall", "flag"
        ]  # fmt: skip
    else:  # VOC's 15 and Context's 37 are "person"; 1 is "aeroplane" in both
        assert names[label[1, 1]] == "person" and names[label[0, 1]] == "aeroplane"


def test_voc20_and_voc21_read_the_same_folder(tmp_path):
    raw = np.array([[0, 1, 255], [20, 5, 0]])
    make_benchmark(tmp_path, "voc20", {"a": raw})
    assert SegmentationDataset("voc21", tmp_path)[0][1].tolist() == raw.tolist()
    assert SegmentationDataset("voc20", tmp_path)[0][1].tolist() == [[255, 0, 255], [19, 4, 255]]


def test_ade20k_reader_pairs_images_and_annotations_by_name(tmp_path):
    raws = {"ADE_val_00000002": np.full((4, 6), 3), "ADE_val_00000001": np.full((4, 6), 7)}
    make_benchmark(tmp_path, "ade20k", raws)
    dataset = SegmentationDataset("ade20k", tmp_path)
    assert [s.name for s in dataset.samples] == ["ADE_val_00000001", "ADE_val_00000002"]
    assert dataset.split == "validation"
    assert [int(dataset[i][1].unique()) for i in range(2)] == [6, 2]
    (tmp_path / "annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"^label map not found: {tmp_path}/annotations/validation/ADE_val_00000002.png$",
    ):
        dataset[1]


@pytest.mark.parametrize(
    ("name", "missing", "layout"),
    [
        (
            "voc20",
            "split list not found: {t}/ImageSets/Segmentation/val.txt",
            "JPEGImages/ID.jpg, SegmentationClass/ID.png and ImageSets/Segmentation/val.txt "
            "listing the IDs",
        ),
        (
            "context59",
            "split list not found: {t}/ImageSets/SegmentationContext/val.txt",
            "JPEGImages/ID.jpg, SegmentationClassContext/ID.png and "
            "ImageSets/SegmentationContext/val.txt listing the IDs",
        ),
        (
            "ade20k",
            "image folder not found: {t}/images/validation",
            "images/validation/X.jpg and annotations/validation/X.png",
        ),
    ],
)
def test_a_wrong_folder_names_the_expected_layout(tmp_path, name, missing, layout):
    message = f"{missing.format(t=tmp_path)} (expected {layout})"
    with pytest.raises(FileNotFoundError) as error:
        SegmentationDataset(name, tmp_path)
    assert str(error.value) == message


def test_an_rgb_label_map_is_refused(tmp_path):
    make_benchmark(tmp_path, "ade20k", {"x": np.zeros((4, 6), np.uint8)})
    path = tmp_path / "annotations/validation/x.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)  # ADE20K-full's RGB-coded maps
    with pytest.raises(ValueError) as error:
        SegmentationDataset("ade20k", tmp_path)[0]
    assert str(error.value) == (
        f"label map {path}: expected class indices in one channel (a mode L or P PNG), "
        "got a mode RGB image"
    )


def test_every_preset_is_a_benchmark_with_its_class_count():
    from itaclip import PRESETS, dataset_classes
    from itaclip.datasets import DATASETS

    assert set(PRESETS) == set(DATASETS) and len(DATASETS) == 8
    for name, spec in DATASETS.items():
        assert spec.num_classes == len(dataset_classes(name).queries), name
    reduced = {name for name, spec in DATASETS.items() if spec.reduce_zero_label}
    assert reduced == {"voc20", "context59", "ade20k"}
    # no background class in the benchmarks that ignore it
    assert all(dataset_classes(name).background is None for name in reduced)


def test_new_presets_take_their_settings_from_the_stated_configs():
    """README: short side 336 and logit scale 40, prob_thd 0 (SCLIP/NACLIP configs); lam, alpha
    and the auxiliary text of ITACLIP's config of the closest dataset."""
    from itaclip import PRESETS

    closest = {"voc20": "voc21", "context59": "context60", "ade20k": "coco_stuff"}
    for name, source in closest.items():
        preset, official = PRESETS[name], PRESETS[source]
        assert (preset.lam, preset.alpha, preset.aux) == (
            official.lam,
            official.alpha,
            official.aux,
        )
        assert (preset.short_side, preset.logit_scale, preset.prob_thd) == (336, 40.0, 0.0)
        assert preset.area_thd is None


def test_without_background_the_labels_do_not_depend_on_the_logit_scale(make_segmenter):
    """Why the peers' logit scale is harmless here: with no background class there are no
    thresholds, and the argmax of a softmax does not move with its temperature."""
    image = torch.rand(3, 40, 52, generator=torch.Generator().manual_seed(0))
    segmenter = make_segmenter(preset="voc20", logit_scale=40.0, pamr=False)
    cool = segmenter(image)
    segmenter.config = dataclasses.replace(segmenter.config, logit_scale=100.0)  # texts cached
    hot = segmenter(image)
    assert cool.probs.shape == (20, 40, 52)
    assert torch.equal(cool.labels, hot.labels)
    assert not torch.allclose(cool.probs, hot.probs)


class ColumnSegmenter:
    """A fake segmenter: class (x // 3) mod C at column x, whatever the image."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, image, progress=None):
        from itaclip.segmenter import Segmentation

        height, width = image.shape[-2:]
        labels = (torch.arange(width) // 3 % self.num_classes).expand(height, width)  # (H, W)
        probs = torch.nn.functional.one_hot(labels, self.num_classes).permute(2, 0, 1).float()
        return Segmentation(labels, probs, tuple(map(str, range(self.num_classes))))


def restated_confusion(raws, preds, num_classes: int) -> np.ndarray:
    """Confusion counted pixel by pixel from the raw files: 0 and 255 skipped, k is class k - 1."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for raw, pred in zip(raws, preds, strict=True):
        for value, predicted in zip(raw.ravel().tolist(), pred.ravel().tolist(), strict=True):
            if value not in (0, 255):
                conf[value - 1, predicted] += 1
    return conf


def restated_miou(conf: np.ndarray) -> float:
    ious = [
        conf[k, k] / (conf[k].sum() + conf[:, k].sum() - conf[k, k])
        for k in range(len(conf))
        if conf[k].sum() + conf[:, k].sum() > 0
    ]
    return float(np.mean(ious))


@pytest.mark.parametrize("name", sorted(NEW_BENCHMARKS))
def test_evaluate_a_fake_segmenter_on_the_new_benchmarks(tmp_path, name):
    from itaclip.evaluate import evaluate

    raws = random_raws(name)
    make_benchmark(tmp_path, name, raws)
    dataset = SegmentationDataset(name, tmp_path)
    conf = evaluate(ColumnSegmenter(dataset.num_classes), dataset, progress=False)
    columns = (np.arange(44) // 3 % dataset.num_classes)[None].repeat(36, 0)
    expected = restated_confusion(list(raws.values()), [columns] * 3, dataset.num_classes)
    assert conf.tolist() == expected.tolist()
    ignored = sum(int(np.isin(raw, (0, 255)).sum()) for raw in raws.values())
    assert int(conf.sum()) == 3 * 36 * 44 - ignored and ignored > 0
    assert iou_from_confusion(conf).miou == pytest.approx(restated_miou(expected), abs=1e-12)


def eval_argv(root: Path, name: str, model: Path, cache: Path, json_path: Path) -> list[str]:
    return ["eval", "--dataset", name, "--root", str(root), "--model", str(model),
            "--pretrained", "", "--stride", "224", "--short-side", "64", "--cache-dir", str(cache),
            "--json", str(json_path), "--quiet"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(NEW_BENCHMARKS))
def test_eval_command_on_the_new_benchmarks_with_a_fake_segmenter(
    tmp_path, tiny_dir, name, monkeypatch, capsys
):
    """``itaclip eval --dataset NAME`` end to end, the model load replaced by the fake."""
    num_classes = NEW_BENCHMARKS[name][0]
    loads = []

    def load(plan):
        loads.append(plan.preset)
        return ColumnSegmenter(num_classes)

    monkeypatch.setattr("itaclip.segmenter.Segmenter.load", load)
    raws = random_raws(name, seed=2)
    make_benchmark(tmp_path / name, name, raws)
    argv = eval_argv(tmp_path / name, name, tiny_dir, tmp_path / "cache", tmp_path / "r.json")
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    columns = (np.arange(44) // 3 % num_classes)[None].repeat(36, 0)
    expected = restated_confusion(list(raws.values()), [columns] * 3, num_classes)
    assert loads == [name]  # the dataset's preset
    assert (report["dataset"], report["samples"]) == (name, 3)
    assert report["confusion"] == expected.tolist()
    assert report["miou"] == pytest.approx(restated_miou(expected), abs=1e-12)
    assert capsys.readouterr().out == f"{name}: mIoU {100 * report['miou']:.2f} over 3 images\n"


TINY_RUNS = ["voc20", "context59", pytest.param("ade20k", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", TINY_RUNS)  # ade20k: 372 texts x 80 templates to embed
def test_eval_command_runs_the_new_benchmarks_on_the_tiny_model(tmp_path, tiny_dir, name, capsys):
    from itaclip import Segmenter

    raws = random_raws(name, seed=1)
    make_benchmark(tmp_path / name, name, raws)
    cache = tmp_path / "cache"
    assert main(eval_argv(tmp_path / name, name, tiny_dir, cache, tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    segmenter = Segmenter.from_pretrained(
        f"local-dir:{tiny_dir}", None, preset=name, cache_dir=cache, stride=224, short_side=64
    )
    preds = []
    for sample in raws:  # s0, s1, s2: the split list's order and the image folder's sorted one
        image_path, _ = benchmark_paths(tmp_path / name, name, sample)
        preds.append(segmenter(load_image(image_path)).labels.numpy())
    expected = restated_confusion(list(raws.values()), preds, NEW_BENCHMARKS[name][0])
    assert (report["dataset"], report["samples"]) == (name, 3)
    assert report["confusion"] == expected.tolist()
    assert report["miou"] == pytest.approx(restated_miou(expected), abs=1e-12)
    assert capsys.readouterr().out == f"{name}: mIoU {100 * report['miou']:.2f} over 3 images\n"
