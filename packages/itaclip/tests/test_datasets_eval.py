"""Dataset readers on tiny synthetic folders, confusion matrices, mIoU, 2-process evaluation."""

from __future__ import annotations

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
    with pytest.raises(KeyError, match="unknown dataset 'ade20k'"):
        SegmentationDataset("ade20k", tmp_path)
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
