"""Correspondence matching and PCK, the conv head, the MLP ensemble, the Lightning seg head."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from diffeat.heads import (
    ConvAggregationHead,
    CorrespondenceModule,
    PCKMeter,
    PixelMLPEnsemble,
    SegmentationHead,
    SegmentationModule,
    collate_pairs,
    match_keypoints,
    pck,
    pck_threshold,
    pixel_training_set,
    sample_at,
)
from diffeat.heads.semseg import SegmentationFolder


def trainer(steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_sample_at_cell_centres_is_exact():
    feature = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    # image 40 x 60: cell (i, j) centred at x = 10 j + 4.5, y = 10 i + 4.5
    points = torch.tensor([[4.5, 4.5], [54.5, 34.5], [24.5, 14.5]])
    expected = torch.stack([feature[:, 0, 0], feature[:, 3, 5], feature[:, 1, 2]])
    torch.testing.assert_close(sample_at(feature, points, (40, 60)), expected)


def synthetic_pair(seed=0, channels=16, size=(12, 16), nuisance=0.0):
    """A target that is the source shifted right by 3 cells: known correspondences."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(channels, *size, generator=generator)
    tgt = src.roll(3, dims=-1)
    if nuisance:
        extra = nuisance * torch.randn(2, channels, *size, generator=generator)
        src, tgt = torch.cat([src, extra[0]]), torch.cat([tgt, extra[1]])
    height, width = 48, 64  # image size: 4 pixels per cell
    rows = torch.randint(size[0], (20,), generator=generator)
    cols = torch.randint(1, size[1] - 4, (20,), generator=generator)  # 3x3 context never wraps
    src_kps = torch.stack([cols * 4 + 1.5, rows * 4 + 1.5], 1).float()
    tgt_kps = torch.stack([(cols + 3) * 4 + 1.5, rows * 4 + 1.5], 1).float()
    return {
        "src_features": src,
        "tgt_features": tgt,
        "src_kps": src_kps,
        "tgt_kps": tgt_kps,
        "src_size": (height, width),
        "tgt_size": (height, width),
        "tgt_bbox": torch.tensor([0.0, 0.0, 32.0, 24.0]),
    }


def test_zero_shot_matching_recovers_known_correspondences():
    pair = synthetic_pair()
    pred = match_keypoints(
        pair["src_features"], pair["tgt_features"], pair["src_kps"], (48, 64), (48, 64)
    )
    torch.testing.assert_close(pred, pair["tgt_kps"])
    meter = PCKMeter((0.1, 0.01))
    meter.update(pred, pair["tgt_kps"], (48, 64), pair["tgt_bbox"])
    scores = meter.compute()
    assert scores["pck@0.1/image"] == 100.0 and scores["pck@0.01/bbox/per_pair"] == 100.0
    up = match_keypoints(
        pair["src_features"],
        pair["tgt_features"],
        pair["src_kps"],
        (48, 64),
        (48, 64),
        upsample=(48, 64),
    )
    assert pck(up, pair["tgt_kps"], pck_threshold(0.1, image_size=(48, 64))).all()


def test_pck_thresholds_and_meter_arithmetic():
    assert pck_threshold(0.1, image_size=(480, 640)) == pytest.approx(64.0)
    assert pck_threshold(0.1, bbox=[10, 20, 110, 70]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="exactly one of image_size and bbox"):
        pck_threshold(0.1)
    gt = torch.zeros(4, 2)
    pred = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 12.0], [30.0, 40.0]])
    assert pck(pred, gt, 10.0).tolist() == [True, True, False, False]
    meter = PCKMeter((0.1,))
    meter.update(pred, gt, (100, 100), [0, 0, 60, 50])  # thresholds 10 (image), 6 (bbox)
    meter.update(pred[:1], gt[:1], (100, 100), [0, 0, 60, 50])
    scores = meter.compute()
    assert scores["pck@0.1/image"] == pytest.approx(100 * 3 / 5)
    assert scores["pck@0.1/image/per_pair"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert scores["pck@0.1/bbox"] == pytest.approx(100 * 3 / 5)
    meter.update(pred, gt, (100, 100))  # no box: counts for "image" only
    scores = meter.compute()
    assert scores["pck@0.1/image"] == pytest.approx(100 * 5 / 9)
    assert scores["pck@0.1/bbox"] == pytest.approx(100 * 3 / 5)
    assert scores["pck@0.1/bbox/per_pair"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match=r"pred/gt: expected matching \(N, 2\)"):
        pck(pred, gt[:3], 1.0)


def test_symmetric_keypoint_loss_against_a_plain_computation():
    from diffeat.heads.correspondence import symmetric_keypoint_loss

    torch.manual_seed(0)
    src, tgt = torch.randn(8, 6, 5), torch.randn(8, 4, 7)
    src_kps = torch.tensor([[3.0, 2.0], [40.0, 10.0], [60.0, 30.0]])  # (x, y) in 64 x 48 px
    tgt_kps = torch.tensor([[10.0, 5.0], [50.0, 40.0], [20.0, 20.0]])  # in 112 x 64 px
    loss = symmetric_keypoint_loss(src, tgt, src_kps, tgt_kps, (48, 64), (64, 112))
    a = F.normalize(sample_at(src, src_kps, (48, 64)), dim=1).double()
    b = F.normalize(sample_at(tgt, tgt_kps, (64, 112)), dim=1).double()
    logits = (a @ b.T) / 0.07
    forward = -(logits.log_softmax(1).diagonal()).mean()  # source -> target
    backward = -(logits.log_softmax(0).diagonal()).mean()  # target -> source
    torch.testing.assert_close(loss.double(), (forward + backward) / 2)
    # one-directional cross-entropy differs: the symmetry is what is tested
    assert not torch.isclose(loss.double(), forward, atol=1e-4)


def test_paper_defaults_of_the_heads():
    module = CorrespondenceModule(in_channels=32)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 5e-4 and module.hparams.logit_scale == pytest.approx(
        1 / 0.07
    )
    ensemble = PixelMLPEnsemble(6, 3)
    assert len(ensemble.members) == 10
    widths = [m.out_features for m in ensemble.members[0] if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 32, 3]
    import inspect

    assert inspect.signature(PixelMLPEnsemble.fit).parameters["lr"].default == 1e-3


def test_trained_conv_head_learns_to_ignore_nuisance_channels():
    torch.manual_seed(0)
    train = [
        synthetic_pair(seed, nuisance=2.0) for seed in range(240)
    ]  # fresh pairs: no memorising
    val = [synthetic_pair(1000 + seed, nuisance=2.0) for seed in range(4)]
    module = CorrespondenceModule(in_channels=32, out_channels=16, lr=5e-3)
    assert module.hparams.logit_scale == pytest.approx(1 / 0.07)

    def loader(pairs):
        return DataLoader(pairs, batch_size=4, collate_fn=collate_pairs)

    def val_pck(m):
        meter = PCKMeter((0.1,))
        with torch.no_grad():
            for pair in val:
                pred = match_keypoints(
                    m.head(pair["src_features"][None])[0],
                    m.head(pair["tgt_features"][None])[0],
                    pair["src_kps"],
                    (48, 64),
                    (48, 64),
                )
                meter.update(pred, pair["tgt_kps"], (48, 64))
        return meter.compute()["pck@0.1/image"]

    raw = PCKMeter((0.1,))
    for pair in val:
        pred = match_keypoints(
            pair["src_features"], pair["tgt_features"], pair["src_kps"], (48, 64), (48, 64)
        )
        raw.update(pred, pair["tgt_kps"], (48, 64))
    before = val_pck(module)
    fit = trainer(60)
    fit.fit(module, loader(train), loader(val))
    after = val_pck(module)
    assert raw.compute()["pck@0.1/image"] < 70 and before < 70  # nuisance channels dominate
    assert after > 95, after
    assert fit.callback_metrics["val/pck@0.1/image"] == pytest.approx(after)


def test_conv_head_save_load_round_trip(tmp_path):
    head = ConvAggregationHead(12, 8)
    head.save_pretrained(tmp_path / "head")
    loaded = ConvAggregationHead.from_pretrained(tmp_path / "head")
    x = torch.rand(1, 12, 5, 6)
    assert torch.equal(head(x), loaded(x)) and loaded.conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="kernel_size: must be odd"):
        ConvAggregationHead(12, 8, kernel_size=2)


def blobs(n=600, seed=0):
    """Three separable Gaussian classes in 6-D."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    labels = torch.randint(3, (n,), generator=generator)
    return centres[labels] + 0.5 * torch.randn(n, 6, generator=generator), labels


def test_mlp_ensemble_learns_a_separable_task_and_round_trips(tmp_path):
    x, y = blobs()
    test_x, test_y = blobs(seed=1)
    ensemble = PixelMLPEnsemble(6, 3, members=3)
    assert [m[0].out_features for m in ensemble.members] == [128] * 3
    assert isinstance(ensemble.members[0][2], torch.nn.BatchNorm1d)
    losses = ensemble.fit(x, y, epochs=3, seed=0)
    assert len(losses) == 3 and all(loss < 0.3 for loss in losses)
    accuracy = (ensemble.predict(test_x) == test_y).double().mean()
    assert accuracy > 0.97
    ensemble.save_pretrained(tmp_path / "mlp")
    loaded = PixelMLPEnsemble.from_pretrained(tmp_path / "mlp")
    assert torch.equal(loaded.predict(test_x), ensemble.predict(test_x))
    again = PixelMLPEnsemble(6, 3, members=3)
    again.fit(x, y, epochs=3, seed=0)
    assert torch.equal(again.predict(test_x), ensemble.predict(test_x))  # seeded: reproducible


def test_mode_vote_with_lowest_label_on_ties(monkeypatch):
    ensemble = PixelMLPEnsemble(2, 4, members=4)
    votes = torch.tensor([[0, 3, 2, 1], [1, 3, 2, 1], [1, 2, 3, 0], [2, 2, 3, 0]])  # (M, N)
    monkeypatch.setattr(ensemble, "member_predictions", lambda features, chunk=65536: votes)
    assert ensemble.predict(torch.zeros(4, 2)).tolist() == [1, 2, 2, 0]


def test_pixel_training_set_and_predict_map():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, :, 0] = 1.0  # left column class 0, right column class 1
    features[0, 1, :, 1] = 1.0
    labels = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]])
    rows, flat = pixel_training_set(features, labels)
    assert rows.shape == (15, 2) and flat.shape == (15,) and 255 not in flat.tolist()
    ensemble = PixelMLPEnsemble(2, 2, members=3)
    ensemble.fit(rows.repeat(20, 1), flat.repeat(20), epochs=10, batch_size=16)
    pred = ensemble.predict_map(features, (4, 4))
    assert pred.shape == (1, 4, 4) and torch.equal(pred[0, :, 0], torch.zeros(4, dtype=torch.long))
    assert torch.equal(pred[0, :, 3], torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 1\]"):
        ensemble.fit(rows, flat + 1)


def predicting(module: SegmentationModule, predictions: list[torch.Tensor]) -> None:
    """Make ``module`` return one-hot logits of ``predictions[i]`` on its i-th forward call."""
    queue = iter(predictions)
    num_classes = module.hparams.num_classes
    module.forward = lambda batch: F.one_hot(next(queue), num_classes).permute(0, 3, 1, 2).float()


def test_validation_miou_hand_computed_with_an_absent_class_and_ignored_pixels():
    """Two batches, 4 classes, class 3 absent from labels and from non-ignored predictions.

    Kept (label, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0); confusion rows
    (labels) [2,1,0,0] [0,2,0,0] [1,0,1,0] [0,0,0,0]. IoU: class 0 2/(3+3-2), class 1
    2/(2+3-2), class 2 1/(2+1-1); class 3 has union 0 and is left out (mmseg), although two
    ignored pixels are predicted as 3. Pixel accuracy 5/7.
    """
    labels = [torch.tensor([[[0, 0, 1], [1, 255, 255]]]), torch.tensor([[[2, 2], [0, 255]]])]
    preds = [torch.tensor([[[0, 1, 1], [1, 3, 2]]]), torch.tensor([[[2, 0], [0, 3]]])]
    module = SegmentationModule({"a": 2}, num_classes=4, dim=8)
    predicting(module, preds)
    batches = [{"features": {}, "labels": label} for label in labels]
    [metrics] = trainer(1).validate(module, DataLoader(batches, batch_size=None), verbose=False)
    assert metrics["val/miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3, abs=1e-6)
    assert metrics["val/accuracy"] == pytest.approx(5 / 7, abs=1e-6)


def previous_miou(preds, labels, num_classes: int, ignore_index: int = 255):
    """diffeat 0.2.0's hand-written mIoU and pixel accuracy over a whole epoch."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for pred, label in zip(preds, labels, strict=True):
        keep = label != ignore_index
        index = label[keep] * num_classes + pred[keep]
        counts = torch.bincount(index, minlength=num_classes**2)
        confusion += counts.reshape(num_classes, num_classes)
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return (inter[present] / union[present]).mean().item(), (inter.sum() / confusion.sum()).item()


def test_validation_metrics_equal_the_previous_implementation_on_random_labels():
    """6 classes, labels and predictions in 0..4 (class 5 absent), ~10% ignored pixels."""
    generator = torch.Generator().manual_seed(0)
    module = SegmentationModule({"a": 2}, num_classes=6, dim=8)
    for _ in range(3):  # three validation epochs: the metrics reset between them
        preds = [torch.randint(5, (2, 9, 7), generator=generator) for _ in range(4)]
        labels = [torch.randint(5, (2, 9, 7), generator=generator) for _ in range(4)]
        for label in labels:
            label[torch.rand(label.shape, generator=generator) < 0.1] = 255
        predicting(module, preds)
        batches = [{"features": {}, "labels": label} for label in labels]
        loader = DataLoader(batches, batch_size=None)
        [metrics] = trainer(1).validate(module, loader, verbose=False)
        expected_miou, expected_accuracy = previous_miou(preds, labels, 6)
        assert metrics["val/miou"] == pytest.approx(expected_miou, rel=1e-6)
        assert metrics["val/accuracy"] == pytest.approx(expected_accuracy, rel=1e-6)


def test_checkpoints_with_the_old_confusion_buffer_still_load(tmp_path):
    """diffeat 0.2.0 kept a ``confusion`` buffer in the module's state dict."""
    module = SegmentationModule({"a": 2}, num_classes=3, dim=8)
    fit = trainer(1)
    batch = {"features": {"a": torch.rand(1, 2, 4, 4)}, "labels": torch.zeros(1, 4, 4).long()}
    fit.validate(module, DataLoader([batch], batch_size=None), verbose=False)
    fit.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=False)
    checkpoint["state_dict"]["confusion"] = torch.zeros(3, 3, dtype=torch.long)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = SegmentationModule.load_from_checkpoint(tmp_path / "old.ckpt")
    assert set(loaded.state_dict()) == set(module.state_dict())
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def segmentation_batches(n=6, seed=0):
    """Features whose first channel sign gives the label (two classes, one layer at half size)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        fine = torch.randn(2, 4, 8, 8, generator=generator)
        labels = (fine[:, 0] > 0).long()  # (2, 8, 8), the finest feature grid
        coarse = torch.randn(2, 6, 4, 4, generator=generator)
        batches.append({"features": {"a": coarse, "b": fine}, "labels": labels})
    return batches


def test_segmentation_head_trains_with_lightning(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule({"a": 6, "b": 4}, num_classes=2, dim=16, lr=3e-3)
    logits = module.head({"a": torch.rand(1, 6, 4, 4), "b": torch.rand(1, 4, 8, 8)}, size=(16, 16))
    assert logits.shape == (1, 2, 16, 16)
    fit = trainer(100)
    batches = lambda n, seed: DataLoader(segmentation_batches(n, seed), batch_size=None)  # noqa: E731
    fit.fit(module, batches(100, 0), batches(4, 1))
    assert fit.callback_metrics["val/miou"] > 0.9
    module.head.save_pretrained(tmp_path / "seg")
    loaded = SegmentationHead.from_pretrained(tmp_path / "seg")
    batch = segmentation_batches(1, seed=2)[0]
    assert torch.equal(loaded(batch["features"]), module.head.eval()(batch["features"]))
    with pytest.raises(ValueError, match=r"features: missing activations \['b'\]"):
        loaded({"a": batch["features"]["a"]})
    with pytest.raises(ValueError, match="has no 'features' and the module has no extractor"):
        module.training_step({"images": torch.rand(1, 3, 16, 16), "labels": batch["labels"]}, 0)


def test_segmentation_module_runs_the_extractor_on_image_batches(make_extractor):
    extractor = make_extractor("sd15", preset="ours-v1.5")
    channels = {
        "up-level1-repeat1-vit-block0-cross-q": 16,
        "up-level1-repeat2-res-out": 16,
        "up-level2-repeat1-vit-block0-cross-q": 16,
        "up-level3-repeat0-vit-block0-self-k": 8,
    }
    assert set(channels) == set(extractor.layers)
    module = SegmentationModule(channels, num_classes=3, dim=16, extractor=extractor)
    batch = {
        "images": torch.rand(2, 3, 64, 64),
        "labels": torch.randint(3, (2, 64, 64)),
        "prompts": "a photo",
    }
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and loss.requires_grad
    loss.backward()
    # features come from the frozen extractor: only the head gets gradients
    assert all(p.grad is None for p in extractor.unet.parameters())
    assert all(p.grad is not None for p in module.head.parameters() if p.requires_grad)


def test_segmentation_folder(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "img" / "a.jpg")
    Image.new("RGB", (30, 20)).save(tmp_path / "img" / "orphan.png")
    mask = Image.new("L", (30, 20), 1)
    mask.paste(7, (0, 0, 15, 20))
    mask.save(tmp_path / "mask" / "a.png")
    data = SegmentationFolder(tmp_path / "img", tmp_path / "mask", (10, 16))
    assert len(data) == 1
    item = data[0]
    assert item["images"].shape == (3, 10, 16) and item["labels"].shape == (10, 16)
    assert item["labels"].unique().tolist() == [1, 7] and item["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="no image/mask pairs"):
        SegmentationFolder(tmp_path / "mask", tmp_path / "img", (8, 8))
