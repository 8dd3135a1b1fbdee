"""SPair-71k reader on a synthetic folder, and PCK evaluation of pairs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffeat.data import SPairDataset
from diffeat.heads import evaluate_pairs
from diffeat.io import to_pixel_batch


def write_spair(root, pairs):
    for pair_id, category, src, tgt, src_kps, tgt_kps, split in pairs:
        folder = root / "JPEGImages" / category
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in (src, tgt):
            image.save(folder / name)
        ann = {
            "pair_id": pair_id,
            "src_imname": src[0],
            "trg_imname": tgt[0],
            "category": category,
            "src_kps": src_kps,
            "trg_kps": tgt_kps,
            "src_bndbox": [0, 0, 40, 30],
            "trg_bndbox": [8, 0, 48, 30],
            "kps_ids": [str(i) for i in range(len(src_kps))],
        }
        out = root / "PairAnnotation" / split
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{pair_id}:{category}.json").write_text(json.dumps(ann))
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text(f"{pairs[0][0]}:{pairs[0][1]}\n")


def textured(seed, shift=0):
    """A 64 x 64 random 8 x 8-block texture, optionally rolled right by ``shift`` pixels."""
    generator = np.random.default_rng(seed)
    blocks = generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
    return Image.fromarray(np.roll(image, shift, axis=1))


@pytest.fixture
def spair(tmp_path):
    kps = [[12, 20], [28, 36], [44, 12]]
    shifted = [[x + 16, y] for x, y in kps]
    shifted_pairs = [  # test pairs: the target is the source texture rolled right by 16 px
        (f"00000{seed + 1}-{a}-{b}", category, (f"{a}.png", textured(seed)),
         (f"{b}.png", textured(seed, 16)), kps, shifted, "test")
        for seed, (a, b, category) in enumerate([("a", "b", "cat"), ("c", "d", "dog")])
    ]  # fmt: skip
    same = ("000003-e-f", "dog", ("e.png", textured(2)), ("f.png", textured(2)), kps, kps, "trn")
    write_spair(tmp_path, [*shifted_pairs, same])
    return tmp_path


def test_reader_fields_filters_and_errors(spair):
    data = SPairDataset(spair, "test")
    assert len(data) == 2
    item = data[0]
    assert item["pair_id"] == "000001-a-b:cat" and item["category"] == "cat"
    assert item["src_kps"].shape == (3, 2) and item["src_kps"].dtype == torch.float32
    assert item["tgt_kps"][0].tolist() == [28.0, 20.0]
    assert item["tgt_bbox"].tolist() == [8.0, 0.0, 48.0, 30.0]
    assert item["src_size"] == (64, 64) and item["src_image"].mode == "RGB"
    assert item["kps_ids"] == [0, 1, 2]
    assert [d["category"] for d in SPairDataset(spair, "test", category="dog")] == ["dog"]
    assert len(SPairDataset(spair, "test", layout="large")) == 1
    assert len(SPairDataset(spair, "trn")) == 1
    with pytest.raises(ValueError, match="split: must be one of"):
        SPairDataset(spair, "train")
    with pytest.raises(ValueError, match="no test pairs found"):
        SPairDataset(spair, "test", category="horse")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SPairDataset(spair / "missing", "test")


def test_evaluate_pairs_with_pixel_features(spair):
    """Features = random Fourier features of each 8 x 8 cell's colour: exact matches."""
    projection = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 20

    def pixel_extractor(images, prompts):
        assert prompts in ("a photo of a cat", "a photo of a dog")
        cells = torch.nn.functional.avg_pool2d(to_pixel_batch(images), 8)  # (2, 3, 8, 8)
        return {"rgb": torch.cos(torch.einsum("kc,bchw->bkhw", projection, cells))}  # (2, 64, 8, 8)

    scores = evaluate_pairs(
        pixel_extractor, SPairDataset(spair, "test"), size=8, alphas=(0.1, 0.05), progress=False
    )
    assert scores["pck@0.1/image"] == 100.0 and scores["pck@0.1/bbox"] == 100.0
    assert scores["pck@0.05/image/per_pair"] == 100.0
