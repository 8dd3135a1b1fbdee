"""End-to-end inference against the official procedure written plainly here; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from itaclip import Segmenter, SegmenterConfig
from itaclip.postprocess import morphological_closing

CLASSES = ["cat", "dog,puppy", "sky", "grass"]


def official_windows(size: int, crop: int, stride: int) -> list[int]:
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(count)]


def official_logits(seg: Segmenter, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Per window, per variant, batch-1 passes; full-canvas padding and a count matrix."""
    cfg = seg.config
    mean = torch.tensor(seg.mean).view(1, 3, 1, 1)
    std = torch.tensor(seg.std).view(1, 3, 1, 1)
    h0, w0 = image.shape[-2:]
    if cfg.short_side is not None:
        scale = min(cfg.short_side / min(h0, w0), cfg.max_long_side / max(h0, w0))
        size = (int(h0 * scale + 0.5), int(w0 * scale + 0.5))
        img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    else:
        img = image[None]
    H, W = img.shape[-2:]
    total = torch.zeros(1, text.shape[0], H, W)
    count = torch.zeros(1, 1, H, W)
    for top in official_windows(H, cfg.crop, cfg.stride):
        for left in official_windows(W, cfg.crop, cfg.stride):
            crop = img[..., top : top + cfg.crop, left : left + cfg.crop]
            h, w = crop.shape[-2:]
            normed = (crop - mean) / std
            gray = 0.2989 * crop[:, :1] + 0.587 * crop[:, 1:2] + 0.114 * crop[:, 2:]
            gray = (gray.repeat(1, 3, 1, 1) - mean) / std
            r = 5
            ax = torch.arange(-r, r + 1, dtype=torch.float32)
            g = torch.exp(-(ax**2) / 50.0)
            k2 = torch.outer(g, g) / torch.outer(g, g).sum()
            padded = F.pad(crop, (r, r, r, r), mode="reflect")
            blur = F.conv2d(padded, k2.expand(3, 1, 11, 11), groups=3)
            blur = (blur - mean) / std
            with torch.no_grad():
                feats = [seg.encoder(v)[0] for v in (normed, gray, blur)]
                mean_feat = sum(feats) / 3
                first = (mean_feat @ text.T).permute(2, 0, 1)[None]
                first = F.interpolate(first, size=(h, w), mode="bilinear", align_corners=False)
                flips = 0
                for dim in (-2, -1):
                    f = seg.encoder(normed.flip(dim))[0]
                    lg = (f @ text.T).permute(2, 0, 1)[None]
                    lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
                    flips = flips + lg.flip(dim) / 2
            logits = cfg.lam * first + (1 - cfg.lam) * flips
            total += F.pad(logits, (left, W - left - w, top, H - top - h))
            count[..., top : top + h, left : left + w] += 1
    out = total / count
    return F.interpolate(out, size=(h0, w0), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize(
    ("size", "settings"),
    [
        ((80, 112), {"short_side": 72, "stride": 16}),
        ((70, 90), {"stride": 64}),
        ((40, 50), {}),  # smaller than the crop: one clipped window
    ],
)
def test_sliding_window_matches_official_loop(make_segmenter, size, settings):
    seg = make_segmenter(pamr=False, **settings)
    torch.manual_seed(0)
    image = torch.rand(3, *size)
    _, text = seg.text_features(CLASSES)
    out = seg.query_logits(image, text)
    assert out.shape == (5, *size)
    torch.testing.assert_close(out, official_logits(seg, image, text), atol=2e-5, rtol=1e-4)


def test_batched_equals_unbatched(make_segmenter):
    image = torch.rand(3, 90, 100)
    one = make_segmenter(batch_size=1, stride=16)
    _, text = one.text_features(CLASSES)
    reference = one.query_logits(image, text)
    for batch in (7, 64):
        out = make_segmenter(batch_size=batch, stride=16).query_logits(image, text)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_default_batch_size_follows_the_device(make_segmenter):
    seg = make_segmenter(batch_size=None, stride=16)
    assert seg.batch_size == 5  # CPU: one crop (x 5 variants) per ViT pass
    sizes = []
    seg.encoder.register_forward_hook(lambda module, inputs, out: sizes.append(len(inputs[0])))
    seg.query_logits(torch.rand(3, 80, 96), seg.text_features(CLASSES)[1])
    assert sizes == [5] * 6  # 2 x 3 windows
    assert make_segmenter(batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        SegmenterConfig(batch_size=0)


def test_faithful_differs_only_in_first_category_and_closing(make_segmenter):
    torch.manual_seed(0)
    image = torch.rand(3, 64, 96)
    corrected, faithful = make_segmenter(lam=0.0), make_segmenter(lam=0.0, faithful=True)
    _, text = corrected.text_features(CLASSES)
    # flips only: identical logits
    torch.testing.assert_close(
        corrected.query_logits(image, text), faithful.query_logits(image, text)
    )
    corrected, faithful = make_segmenter(lam=0.75), make_segmenter(lam=0.75, faithful=True)
    assert (
        corrected.query_logits(image, text) - faithful.query_logits(image, text)
    ).abs().max() > 1e-4
    res_c, res_f = corrected(image, CLASSES), faithful(image, CLASSES)
    assert torch.equal(res_c.labels, res_c.probs.argmax(0))
    assert torch.equal(res_f.labels, morphological_closing(res_f.probs.argmax(0)))


def test_result_shapes_and_probabilities(make_segmenter):
    seg = make_segmenter(logit_scale=40.0)
    image = torch.rand(3, 50, 70)
    result = seg(image, classes=CLASSES)
    assert result.class_names == ("cat", "dog", "sky", "grass")
    assert result.labels.shape == (50, 70) and result.labels.dtype == torch.int64
    assert result.probs.shape == (4, 50, 70)
    logits = seg.query_logits(image, seg.text_features(CLASSES)[1])
    q_probs = torch.softmax(40.0 * logits, 0)
    expected = torch.stack([q_probs[0], q_probs[1:3].amax(0), q_probs[3], q_probs[4]])
    torch.testing.assert_close(result.probs, expected)


def test_image_formats_give_the_same_result(make_segmenter):
    seg = make_segmenter(pamr=False)
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    rgb = np.repeat(gray8[..., None], 3, axis=-1)
    ref = seg(Image.fromarray(rgb), CLASSES)
    for image in (
        Image.fromarray(gray8),  # L
        Image.fromarray(rgb).convert("RGBA"),  # alpha dropped
        rgb.astype(np.float32) / 255,
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    ):
        result = seg(image, CLASSES)
        torch.testing.assert_close(result.probs, ref.probs, atol=1e-5, rtol=1e-5)
    gray16 = (gray8.astype(np.uint16) * 257).astype(np.uint16)  # 255 * 257 = 65535
    for image in (gray16, Image.fromarray(gray16)):
        result = seg(image, CLASSES)
        torch.testing.assert_close(result.probs, ref.probs, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors(make_segmenter):
    seg = make_segmenter()
    image = torch.rand(3, 40, 40)
    with pytest.raises(ValueError, match="at least one class"):
        seg(image, classes=[])
    with pytest.raises(ValueError, match="duplicate class name 'cat'"):
        seg(image, classes=["cat", "dog", "cat"])
    with pytest.raises(ValueError, match=r"stride must be in \[1, crop\] = \[1, 64\]"):
        SegmenterConfig(crop=64, stride=65)
    with pytest.raises(ValueError, match="at least one patch"):
        seg(torch.rand(3, 10, 40), classes=["cat"])
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        seg(np.full((20, 20, 3), 2.0), classes=["cat"])
    with pytest.raises(ValueError, match="classes are required"):
        seg(image)
    with pytest.raises(ValueError, match="aux_texts needs one text per class"):
        seg(image, classes=["cat", "dog"], aux_texts=["a pet"])


def test_preset_classes_aux_mix_and_background(make_segmenter):
    seg = make_segmenter(preset="voc21", alpha=0.05, pamr=False)
    result = seg(torch.rand(3, 64, 64))
    assert result.probs.shape == (21, 64, 64)
    assert result.class_names[0] == "background" and result.class_names[1] == "aeroplane"
    from itaclip import dataset_classes

    data = dataset_classes("voc21")
    plain = seg.text_features(list(data.queries))[1]
    mixed = seg.text_features(list(data.queries), list(data.definitions), background=0)[1]
    bg = len(data.queries[0])
    torch.testing.assert_close(mixed[:bg], plain[:bg])  # background queries unchanged
    aux = seg.embed(list(data.definitions))
    owners = seg.text_features(list(data.queries))[0].query_class
    torch.testing.assert_close(mixed[bg:], 0.95 * plain[bg:] + 0.05 * aux[owners[bg:]])


def test_presets_match_official_settings():
    cfg = SegmenterConfig.from_preset("voc21")
    assert (cfg.short_side, cfg.lam, cfg.alpha, cfg.aux) == (336, 0.7, 0.05, "definition")
    assert (cfg.logit_scale, cfg.prob_thd, cfg.area_thd) == (60.0, 0.1, 0.1)
    cfg = SegmenterConfig.from_preset("coco_stuff", stride=112)
    assert (cfg.short_side, cfg.lam, cfg.alpha, cfg.logit_scale, cfg.stride) == (
        448,
        0.75,
        0.2,
        40.0,
        112,
    )
    with pytest.raises(KeyError, match="unknown preset 'ade'"):
        SegmenterConfig.from_preset("ade")


def test_from_pretrained_local_dir_round_trip(tiny_dir, tiny_clip, tiny_tokenizer, tmp_path):
    loaded = Segmenter.from_pretrained(
        f"local-dir:{tiny_dir}", None, preset=None, cache_dir=tmp_path, crop=64, stride=32,
        short_side=None,
    )  # fmt: skip
    direct = Segmenter(
        tiny_clip, tiny_tokenizer, SegmenterConfig(crop=64, stride=32, short_side=None)
    )
    image = torch.rand(3, 64, 80)
    a, b = loaded(image, CLASSES), direct(image, CLASSES)
    torch.testing.assert_close(a.probs, b.probs, atol=1e-6, rtol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_autocast_close_to_fp32(tiny_clip, tiny_tokenizer, precision):
    import copy

    model = copy.deepcopy(tiny_clip).cuda()
    settings = {"short_side": None, "crop": 64, "stride": 32, "pamr": False}
    fp32 = Segmenter(model, tiny_tokenizer, SegmenterConfig(precision="fp32", **settings))
    half = Segmenter(model, tiny_tokenizer, SegmenterConfig(precision=precision, **settings))
    image = torch.rand(3, 64, 96)
    _, text = fp32.text_features(CLASSES)
    reference = fp32.query_logits(image, text)
    torch.testing.assert_close(half.query_logits(image, text), reference, atol=3e-2, rtol=0)


def test_resize_keeps_aspect_and_caps_the_long_side():
    from itaclip.segmenter import resized_size

    assert resized_size(375, 500, 336, 2048) == (336, 448)
    assert resized_size(100, 1000, 336, 2048) == (205, 2048)  # long side capped
    assert resized_size(70, 90, None, 2048) == (70, 90)
