"""End-to-end inference against the official procedure written plainly here; bad inputs.

Tolerances: fp32 paths against the official loop atol 2e-5, rtol 1e-4 (summation order);
fp16 / bf16 autocast against fp32 ``AUTOCAST_ATOL`` = 3e-2 in max abs logit error (logits are
cosine similarities in [-1, 1]; CPU autocast measured 3.2e-4 fp16, 2.7e-3 bf16), and non-zero.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from itaclip import Segmenter, SegmenterConfig
from itaclip.postprocess import morphological_closing
from itaclip.refinement import pamr

CLASSES = ["cat", "dog,puppy", "sky", "grass"]
AUTOCAST_ATOL = 3e-2
HALF_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def official_windows(size: int, crop: int, stride: int) -> list[int]:
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(count)]


def official_logits(
    seg: Segmenter,
    image: torch.Tensor,
    text: torch.Tensor,
    img_engineering: bool = True,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per window, per variant, batch-1 passes; full-canvas padding and a count matrix.

    ``img_engineering=False``: the original crop's logits only. ``output_size``: the canvas is
    resized there instead of to the input size (mmseg's ori_shape).
    """
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
            if not img_engineering:
                with torch.no_grad():
                    plain = (seg.encoder(normed)[0] @ text.T).permute(2, 0, 1)[None]
                logits = F.interpolate(plain, size=(h, w), mode="bilinear", align_corners=False)
            total += F.pad(logits, (left, W - left - w, top, H - top - h))
            count[..., top : top + h, left : left + w] += 1
    out = total / count
    size = (h0, w0) if output_size is None else output_size
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)[0]


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


def autocast_against_fp32(
    clip: torch.nn.Module, tokenizer, precision: str
) -> tuple[torch.Tensor, torch.Tensor, list[torch.dtype]]:
    """Query logits of one image at ``precision`` and in fp32 (both on ``clip``'s device), and
    the output dtype of every Linear / Conv2d of the ViT while the ``precision`` pass ran."""
    settings = {"short_side": None, "crop": 64, "stride": 32, "pamr": False}
    fp32 = Segmenter(clip, tokenizer, SegmenterConfig(precision="fp32", **settings))
    half = Segmenter(clip, tokenizer, SegmenterConfig(precision=precision, **settings))
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    _, text = fp32.text_features(CLASSES)
    reference = fp32.query_logits(image, text)
    seen: list[torch.dtype] = []
    layers = [m for m in half.encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for m in layers]
    try:
        out = half.query_logits(image, text)
    finally:
        for hook in hooks:
            hook.remove()
    return out, reference, seen


def check_autocast(clip: torch.nn.Module, tokenizer, precision: str) -> None:
    """The ViT's layers ran in the asked half type, the logits came back fp32, and they differ
    from the fp32 pass by more than nothing and at most ``AUTOCAST_ATOL``."""
    out, reference, seen = autocast_against_fp32(clip, tokenizer, precision)
    assert seen and set(seen) == {HALF_TYPES[precision]}, sorted(map(str, set(seen)))
    assert out.dtype == torch.float32 and out.shape == reference.shape == (5, 64, 96)
    error = float((out - reference).abs().max())
    assert 0 < error <= AUTOCAST_ATOL, error


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cpu_autocast_close_to_fp32(tiny_clip, tiny_tokenizer, precision):
    """The check of the CUDA test below, on CPU autocast (the same ``Segmenter.autocast``)."""
    check_autocast(tiny_clip, tiny_tokenizer, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_autocast_close_to_fp32(tiny_clip, tiny_tokenizer, precision):
    check_autocast(copy.deepcopy(tiny_clip).cuda(), tiny_tokenizer, precision)


def test_resize_keeps_aspect_and_caps_the_long_side():
    from itaclip.segmenter import resized_size

    assert resized_size(375, 500, 336, 2048) == (336, 448)
    assert resized_size(100, 1000, 336, 2048) == (205, 2048)  # long side capped
    assert resized_size(70, 90, None, 2048) == (70, 90)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_img_engineering_off_is_the_original_crop_only(make_segmenter, lam):
    seg = make_segmenter(
        pamr=False, short_side=72, stride=16, lam=lam, img_engineering=False, batch_size=4
    )
    torch.manual_seed(1)
    image = torch.rand(3, 80, 100)
    _, text = seg.text_features(CLASSES)
    passes = []
    hook = seg.encoder.register_forward_hook(lambda m, i, o: passes.append(len(i[0])))
    out = seg.query_logits(image, text)
    hook.remove()
    expected = official_logits(seg, image, text, img_engineering=False)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    # one image per window (72 x 90: 2 x 3 windows), no variants; batch_size 4 = 4 crops a pass
    assert passes == [4, 2]
    on = make_segmenter(pamr=False, short_side=72, stride=16, lam=1.0)
    assert (on.query_logits(image, text) - out).abs().max() > 1e-3  # lam 1 still averages 3


def test_output_size_resizes_logits_then_runs_pamr_there(make_segmenter):
    seg = make_segmenter(short_side=72, stride=16, pamr_iterations=3, pamr_dilations=(1, 2))
    torch.manual_seed(2)
    image = torch.rand(3, 80, 100)
    _, text = seg.text_features(CLASSES)
    size = (53, 131)
    out = seg.query_logits(image, text, output_size=size)
    # by hand: the official loop on the resized image, canvas resized to size, then PAMR at
    # size guided by the normalised image resized (bilinear) to size
    logits = official_logits(seg, image, text, output_size=size)
    guide = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(seg.mean).view(1, 3, 1, 1)
    std = torch.tensor(seg.std).view(1, 3, 1, 1)
    expected = pamr((guide - mean) / std, logits[None], 3, (1, 2))[0]
    assert out.shape == (5, *size)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    result = seg(image, CLASSES, output_size=size, return_query_logits=True)
    assert result.labels.shape == size and result.probs.shape == (4, *size)
    torch.testing.assert_close(result.query_logits, out)
    assert torch.equal(result.labels, result.probs.argmax(0))
    numpy_size = seg.query_logits(image, text, output_size=(np.int64(53), torch.tensor(131)))
    assert torch.equal(numpy_size, out)  # any integer type
    # the default is the input size, exactly as before
    default = seg(image, CLASSES)
    same = seg(image, CLASSES, output_size=(80, 100))
    assert default.labels.shape == (80, 100)
    assert torch.equal(default.probs, same.probs) and torch.equal(default.labels, same.labels)


@pytest.mark.parametrize("size", [(0, 5), (5,), (5.0, 4), "64x64", (True, 3)])
def test_output_size_errors(make_segmenter, size):
    seg = make_segmenter()
    message = f"output_size must be (height, width) with ints >= 1, got {size!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        seg(torch.rand(3, 40, 40), CLASSES, output_size=size)


def test_result_exposes_query_logits_and_labels_before_closing(make_segmenter):
    seg = make_segmenter(faithful=True, logit_scale=30.0, prob_thd=0.3, stride=16)
    torch.manual_seed(3)
    image = torch.rand(3, 70, 90)
    plain = seg(image, CLASSES, background=2)
    assert plain.query_logits is None  # only on request
    result = seg(image, CLASSES, background=2, return_query_logits=True)
    logits = seg.query_logits(image, seg.text_features(CLASSES)[1])
    torch.testing.assert_close(result.query_logits, logits)
    assert result.query_names == ("cat", "dog", "puppy", "sky", "grass")
    assert result.query_class.tolist() == [0, 1, 1, 2, 3]
    q_probs = torch.softmax(30.0 * logits, 0)
    probs = torch.stack([q_probs[0], q_probs[1:3].amax(0), q_probs[3], q_probs[4]])
    torch.testing.assert_close(result.probs, probs)
    best, before = probs.max(0)
    before[best < 0.3] = 2  # background
    assert torch.equal(result.labels_before_closing, before)
    assert torch.equal(result.labels, morphological_closing(before))
    assert torch.equal(plain.labels, result.labels)
    corrected = make_segmenter(logit_scale=30.0, stride=16)(image, CLASSES)
    assert torch.equal(corrected.labels_before_closing, corrected.labels)
    assert corrected.labels_before_closing.data_ptr() != corrected.labels.data_ptr()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"logit_scale": -1}, "logit_scale must be > 0, got -1"),
        ({"logit_scale": 0.0}, "logit_scale must be > 0, got 0.0"),
        ({"logit_scale": float("nan")}, "logit_scale must be > 0, got nan"),
        ({"prob_thd": 5}, "prob_thd must be in [0, 1], got 5"),
        ({"prob_thd": -0.1}, "prob_thd must be in [0, 1], got -0.1"),
        ({"area_thd": 1.5}, "area_thd must be in [0, 1] or None, got 1.5"),
        ({"pamr_iterations": -1}, "pamr_iterations must be an integer >= 0, got -1"),
        ({"pamr_iterations": 2.5}, "pamr_iterations must be an integer >= 0, got 2.5"),
        ({"pamr_iterations": True}, "pamr_iterations must be an integer >= 0, got True"),
    ],
)
def test_config_range_errors(settings, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SegmenterConfig(**settings)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SegmenterConfig.from_preset("voc21", **settings)


def test_zero_pamr_iterations_leave_the_logits_unrefined(make_segmenter):
    image = torch.rand(3, 50, 60)
    zero = make_segmenter(pamr_iterations=0)
    _, text = zero.text_features(CLASSES)
    off = make_segmenter(pamr=False).query_logits(image, text)
    torch.testing.assert_close(zero.query_logits(image, text), off)
    cfg = SegmenterConfig(logit_scale=1e-3, prob_thd=1.0, area_thd=0.0)
    assert (cfg.logit_scale, cfg.prob_thd, cfg.area_thd) == (1e-3, 1.0, 0.0)


@pytest.mark.parametrize(
    ("image", "low", "high"),
    [
        (torch.full((3, 8, 8), 1.5), "1.5", "1.5"),
        (torch.linspace(-0.25, 1, 3 * 64).reshape(3, 8, 8), "-0.25", "1"),
        (torch.tensor([0.0, float("nan")]).repeat(96).reshape(3, 8, 8), "nan", "nan"),
        (np.full((8, 8, 3), 255.0, dtype=np.float32), "255", "255"),
        (np.array([[0.5, np.nan]] * 4, dtype=np.float64), "nan", "nan"),
    ],
)
def test_float_images_are_range_checked(make_segmenter, image, low, high):
    message = (
        f"float images must lie in [0, 1], got range [{low}, {high}] "
        "(divide 0-255 values by 255, or pass uint8)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_segmenter()(image, CLASSES)


def test_aux_file_equals_aux_texts(make_segmenter, tmp_path):
    seg = make_segmenter(alpha=0.3, pamr=False)
    classes = ["background,sky", "cat", "dog,puppy"]
    path = tmp_path / "defs.txt"
    path.write_text("cat >= a small furry pet\n\nPuppy >=a young dog\n")
    image = torch.rand(3, 64, 64)
    from_file = seg(image, classes, background=0, aux_file=path, return_query_logits=True)
    texts = ["anything", "a small furry pet", "a young dog"]
    direct = seg(image, classes, texts, background=0, return_query_logits=True)
    torch.testing.assert_close(from_file.query_logits, direct.query_logits)
    assert torch.equal(from_file.labels, direct.labels)
    plain = seg(image, classes, background=0, return_query_logits=True)
    assert (plain.query_logits - direct.query_logits).abs().max() > 1e-4  # texts mixed in
    with pytest.raises(ValueError, match=r"^pass aux_texts or aux_file, not both$"):
        seg(image, classes, texts, background=0, aux_file=path)
    with pytest.raises(ValueError, match=r"may be None only for the background class \(0\)"):
        seg(image, classes, [None, None, "a young dog"], background=0)


def test_aux_file_replaces_the_preset_texts(make_segmenter, tmp_path):
    from itaclip import dataset_classes

    seg = make_segmenter(preset="voc21", alpha=0.05, pamr=False)
    data = dataset_classes("voc21")
    lines = [
        f"{names[0]} >= {text}" for names, text in zip(data.queries, data.synonyms, strict=True)
    ][1:]
    path = tmp_path / "voc_synonyms.txt"
    path.write_text("\n".join(lines) + "\n")
    image = torch.rand(3, 64, 64)
    from_file = seg(image, aux_file=path)
    synonyms = seg.with_config(aux="synonym")(image)
    torch.testing.assert_close(from_file.probs, synonyms.probs)
