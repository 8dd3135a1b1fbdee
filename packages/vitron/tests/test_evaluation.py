"""``vitron eval``: COCO mask decoding, metrics on hand-computed fixtures, readers, end to end."""

# ruff: noqa: E501
from __future__ import annotations

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from vitron.cli import main
from vitron.evaluation import (
    DatasetError,
    MaskCounts,
    SampleResult,
    SegmentationError,
    cumulative_iou,
    evaluate_referring,
    exact_match,
    load_instances,
    load_qa_jsonl,
    load_refs,
    load_vqa_answers,
    load_vqa_questions,
    mask_counts,
    mean_iou,
    normalize_answer,
    polygon_to_mask,
    referring_samples,
    rle_counts_from_string,
    rle_to_mask,
    segmentation_to_mask,
    vqa_accuracy,
    vqa_samples,
)

H, W = 48, 64  # the fake RefCOCO images


def rectangle(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box_mask(x0: int, y0: int, x1: int, y1: int, height: int = H, width: int = W) -> np.ndarray:
    """COCO fills an integer-cornered rectangle's columns x0..x1-1 and rows y0..y1-1."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ground truths of the fake RefCOCO, by annotation id, and their hand-made masks
POLYGONS = [rectangle(8, 4, 40, 20), rectangle(50, 30, 60, 40)]
RLE_COUNTS = [485, 20, H * W - 505]  # column-major: 485 = 10 * 48 + 5 -> x = 10, y = 5..24
# hand-encoded COCO string of the counts [960, 96, 2016]: columns x = 20, 21 full
RLE_STRING = "Pn0P3Po1"
EXPECTED_MASKS = {
    10: box_mask(8, 4, 40, 20) | box_mask(50, 30, 60, 40),  # 512 + 100 pixels
    20: box_mask(10, 5, 11, 25),  # 20 pixels
    30: box_mask(20, 0, 22, H),  # 96 pixels
    40: np.zeros((H, W), dtype=bool),
}
SCRIPTED_SEGMENT = "<module>B</module><instruction>the object</instruction>"


@pytest.fixture
def refcoco(tmp_path):
    """A 3-image fake RefCOCO: polygons, uncompressed RLE, compressed RLE, an empty mask."""
    images = tmp_path / "images"
    images.mkdir()
    for k in (1, 2, 3):
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            images / f"img{k}.png"
        )
    instances = {
        "images": [
            {"id": k, "file_name": f"img{k}.png", "height": H, "width": W} for k in (1, 2, 3)
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": POLYGONS},
            {"id": 20, "image_id": 2, "segmentation": {"size": [H, W], "counts": RLE_COUNTS}},
            {"id": 30, "image_id": 3, "segmentation": {"size": [H, W], "counts": RLE_STRING}},
            {"id": 40, "image_id": 3, "segmentation": []},
        ],
    }
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": 10, "split": "val",
         "sentences": [{"sent": "the left box", "sent_id": 0}, {"sent": "box on the left ", "sent_id": 1}]},
        {"ref_id": 1, "image_id": 2, "ann_id": 20, "split": "val", "sentences": [{"sent": "the thin line", "sent_id": 2}]},
        {"ref_id": 2, "image_id": 3, "ann_id": 30, "split": "testA", "sentences": [{"sent": "the stripe", "sent_id": 3}]},
        {"ref_id": 3, "image_id": 3, "ann_id": 40, "split": "testA", "sentences": [{"sent": "nothing", "sent_id": 4}]},
    ]  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return tmp_path


# three questions: "Two." scores 1.0, 0.9 and 0.0 against them
VQA_QUESTIONS = {
    "questions": [
        {"question_id": 101, "image_id": 1, "question": "How many dogs?"},
        {"question_id": 102, "image_id": 2, "question": "How many cats?"},
        {"question_id": 103, "image_id": 1, "question": "How many birds?"},
    ]
}
VQA_ANNOTATIONS = {
    "annotations": [
        {"question_id": 101, "multiple_choice_answer": "2", "answers": [{"answer": "2"}] * 10},
        {"question_id": 102, "multiple_choice_answer": "3",
         "answers": [{"answer": "two"}] * 3 + [{"answer": "3"}] * 7},
        {"question_id": 103, "multiple_choice_answer": "4", "answers": [{"answer": "4"}] * 10},
    ]
}  # fmt: skip


@pytest.fixture
def vqa(tmp_path):
    """A 3-question fake VQA v2 pair over 2 COCO-named images."""
    images = tmp_path / "val2014"
    images.mkdir()
    for k in (1, 2):
        rng = np.random.default_rng(k)
        image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        image.save(images / f"COCO_val2014_{k:012d}.jpg")
    (tmp_path / "questions.json").write_text(json.dumps(VQA_QUESTIONS))
    (tmp_path / "annotations.json").write_text(json.dumps(VQA_ANNOTATIONS))
    return tmp_path


# ---- masks -----------------------------------------------------------------------------------


def test_rectangle_polygons_fill_their_pixels_and_parts_unite():
    assert np.array_equal(polygon_to_mask(rectangle(8, 4, 40, 20), H, W), box_mask(8, 4, 40, 20))
    union = segmentation_to_mask(POLYGONS, H, W, backend="numpy")
    assert np.array_equal(union, EXPECTED_MASKS[10]) and int(union.sum()) == 612


# polygons with slanted, concave and off-image edges, and pycocotools' masks of them (compressed
# RLE strings produced by pycocotools 2.0.11's frPyObjects): the numpy rasteriser gives the same pixels
GOLDEN_POLYGONS = [
    ([2.3, 1.7, 20.8, 5.2, 9.1, 14.6], 16, 24, "b12>2N2O0O2N2N1OO101N1O1O1O101N1O1Ol1", 104),
    (
        [1.5, 1.5, 12.5, 1.5, 12.5, 10.5, 7.0, 4.0, 1.5, 10.5],
        12,
        14,
        "j075O1O1O1O1O12N1O1O1O19",
        57,
    ),
    ([-3.2, 2.0, 10.7, -1.4, 15.0, 9.9, 4.4, 13.3], 12, 12, "1662N1Nf20[MO", 128),
]


@pytest.mark.parametrize(("polygon", "height", "width", "coco_rle", "area"), GOLDEN_POLYGONS)
def test_polygon_rasteriser_matches_pycocotools_pixels(polygon, height, width, coco_rle, area):
    mine = polygon_to_mask(polygon, height, width)
    coco = rle_to_mask(rle_counts_from_string(coco_rle), height, width)
    assert int(coco.sum()) == area
    assert np.array_equal(mine, coco)


def test_polygon_rasteriser_matches_installed_pycocotools_on_random_polygons():
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        k = int(rng.integers(3, 10))
        polygon = np.stack([rng.uniform(-3, width + 3, k), rng.uniform(-3, height + 3, k)], 1)
        polygon = polygon.ravel().tolist()
        expected = coco_mask.decode(coco_mask.frPyObjects([polygon], height, width))[..., 0]
        assert np.array_equal(polygon_to_mask(polygon, height, width), expected.astype(bool))


def test_pycocotools_backend_decodes_the_fixtures_alike(refcoco):
    pytest.importorskip("pycocotools.mask")
    _, annotations = load_instances(refcoco / "instances.json")
    for ann_id, expected in EXPECTED_MASKS.items():
        decoded = segmentation_to_mask(
            annotations[ann_id]["segmentation"], H, W, backend="pycocotools"
        )
        assert np.array_equal(decoded, expected)


@pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is not None, reason="pycocotools is installed"
)
def test_the_pycocotools_backend_without_pycocotools_is_refused(
    tmp_path, capsys, refcoco, model_dir
):
    with pytest.raises(
        ValueError,
        match=r"mask backend 'pycocotools' cannot run: pycocotools is not installed \(pip install pycocotools\)",
    ):
        segmentation_to_mask([], H, W, backend="pycocotools")
    out = tmp_path / "out"
    assert main(_refseg_args(refcoco, model_dir, out, **{"--mask-backend": "pycocotools"})) == 2
    assert capsys.readouterr().err == (
        "vitron eval: error: --mask-backend pycocotools: pycocotools is not installed (pip install pycocotools)\n"
    )
    assert not out.exists()


def test_uncompressed_rle_is_column_major_and_starts_with_background():
    # 1 zero, 2 ones, 5 zeros, 3 ones, 1 zero, down the columns of a 4x3 mask
    mask = rle_to_mask([1, 2, 5, 3, 1], 4, 3)
    expected = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=bool)
    assert np.array_equal(mask, expected)
    decoded = segmentation_to_mask({"size": [H, W], "counts": RLE_COUNTS}, H, W, backend="numpy")
    assert np.array_equal(decoded, EXPECTED_MASKS[20])


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("237", [2, 3, 7]),  # one 5-bit group each
        ("123O2", [1, 2, 3, 1, 5]),  # 'O' = -1: the 4th count is 2 - 1; the 5th 3 + 2
        ("X18", [40, 8]),  # 'X' = 8 with the continuation bit, then 1 << 5
        (RLE_STRING, [960, 96, 2016]),  # 'n' = 30 with 0x10 set needs a third group
    ],
)
def test_compressed_rle_strings_decode_to_hand_computed_counts(text, counts):
    assert rle_counts_from_string(text) == counts
    assert rle_counts_from_string(text.encode()) == counts


def test_compressed_rle_decodes_to_the_hand_made_mask():
    mask = rle_to_mask(rle_counts_from_string("X18"), 6, 8)
    expected = np.zeros((6, 8), dtype=bool)
    expected[4:, 6] = True  # 40 = 6 full columns + 4 rows of column 6
    expected[:, 7] = True
    assert np.array_equal(mask, expected)
    decoded = segmentation_to_mask({"size": [H, W], "counts": RLE_STRING}, H, W, backend="numpy")
    assert np.array_equal(decoded, EXPECTED_MASKS[30])


def test_empty_segmentation_is_an_empty_mask():
    mask = segmentation_to_mask([], H, W, backend="numpy")
    assert mask.shape == (H, W) and not mask.any()


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        (
            {"size": [H, W], "counts": [5, 5]},
            "RLE counts sum to 10 pixels, but the mask is 48x64 = 3072",
        ),
        ({"size": [4, 4], "counts": [16]}, "an RLE segmentation of size 4x4 on a 48x64 image"),
        ({"size": [H, W], "counts": "X"}, "a compressed RLE string ends inside a count"),
        ({"size": [H, W], "counts": "1~"}, "the character '~', outside '0'..'o'"),
        ([[1.0, 2.0, 3.0]], "a polygon is a flat list of x, y numbers; got 3 number(s)"),
        ("nope", "a segmentation is a list of polygons or an RLE dict, got str"),
    ],
)
def test_bad_segmentations_are_named(segmentation, message):
    with pytest.raises(SegmentationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segmentation_to_mask(segmentation, H, W, backend="numpy")


# ---- metrics ---------------------------------------------------------------------------------


def test_ciou_and_giou_on_hand_computed_counts():
    gt = np.zeros((4, 4), dtype=bool)
    gt[0, :4] = True  # 4 pixels
    half = np.zeros((4, 4), dtype=bool)
    half[0, :2] = True  # 2 of them
    elsewhere = np.zeros((4, 4), dtype=bool)
    elsewhere[2:, :1] = True  # 2 pixels off the target
    empty = np.zeros((4, 4), dtype=bool)
    counts = [
        mask_counts(half, gt),  # I 2, U 4: IoU 0.5
        mask_counts(elsewhere, gt),  # I 0, U 6: IoU 0
        mask_counts(empty, empty),  # I 0, U 0: IoU 1.0 (no-object target)
    ]
    assert counts[0] == MaskCounts(intersection=2, union=4, predicted=2, target=4)
    assert counts[1] == MaskCounts(intersection=0, union=6, predicted=2, target=4)
    assert [c.iou for c in counts] == [0.5, 0.0, 1.0]
    assert cumulative_iou(counts) == pytest.approx(2 / 10, abs=1e-12)
    assert mean_iou(counts) == pytest.approx(1.5 / 3, abs=1e-12)
    assert cumulative_iou([counts[2]]) == 1.0
    with pytest.raises(
        ValueError, match="prediction is \\(4, 4\\) but the ground truth is \\(2, 2\\)"
    ):
        mask_counts(empty, np.zeros((2, 2), dtype=bool))


@pytest.mark.parametrize(
    ("matches", "accuracy"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_averages_the_ten_leave_one_out_subsets(matches, accuracy):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert vqa_accuracy("yes", answers) == pytest.approx(accuracy, abs=1e-12)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two.", "2"),  # lowercase, final period, number word
        ("The red-white shirt!", "red white shirt"),  # article, punctuation -> space
        ("100,978", "100978"),  # comma between digits
        ("3.5 m.", "3.5 m"),  # a decimal point stays
        ("dont know", "don't know"),  # contraction
        ("couldnt've", "couldn't've"),
        ("None", "0"),
        ("girl's  at\t2:20", "girl's at 2:20"),  # apostrophe and colon stay
        ("an apple", "apple"),
    ],
)
def test_answer_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_fixture_accuracies_and_exact_match(vqa):
    questions = load_vqa_questions(vqa / "questions.json", "COCO_val2014_{image_id:012d}.jpg")
    samples = vqa_samples(questions, load_vqa_answers(vqa / "annotations.json"))
    assert [s.image_file for s in samples] == [
        "COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg", "COCO_val2014_000000000001.jpg",
    ]  # fmt: skip
    scores = [vqa_accuracy("Two.", s.answers) for s in samples]
    assert scores == pytest.approx([1.0, 0.9, 0.0], abs=1e-12)
    assert exact_match("The cat.", "cat") == 1.0 and exact_match("cats", "cat") == 0.0


def test_evaluate_referring_scores_what_the_assistant_returned(refcoco):
    refs = load_refs(refcoco / "refs.json")
    samples = referring_samples(refs, *load_instances(refcoco / "instances.json"), "val")
    small = np.zeros((H // 2, W // 2), dtype=bool)
    small[2:13, 5] = True  # nearest upsampling x2: x = 10, 11 and y = 4..25 (44 pixels)
    results = {
        "segment the left box": SampleResult("done", box_mask(8, 4, 40, 20), "c1"),  # I 512, U 612
        "segment box on the left": SampleResult("", error="the image is broken"),  # I 0, U 612
        "segment the thin line": SampleResult("done", small, "c2"),  # I 20, U 44
    }
    asked = []

    def ask(prompt, image_path):
        asked.append((prompt, image_path.name))
        return results[prompt]

    result = evaluate_referring(
        samples, ask, refcoco / "images", "segment {text}", "numpy", progress=False
    )
    assert asked == [
        ("segment the left box", "img1.png"), ("segment box on the left", "img1.png"),
        ("segment the thin line", "img2.png"),
    ]  # fmt: skip
    assert [(r["intersection"], r["union"]) for r in result["samples"]] == [
        (512, 612),
        (0, 612),
        (20, 44),
    ]
    assert result["metrics"] == {
        "ciou": pytest.approx(532 / 1268, abs=1e-12),
        "giou": pytest.approx((512 / 612 + 0 + 20 / 44) / 3, abs=1e-12),
        "samples": 3,
        "without_mask": 1,
        "failed": 1,
    }
    assert result["samples"][1]["error"] == "the image is broken"


# ---- readers ---------------------------------------------------------------------------------


def test_refs_pickle_and_json_read_alike_and_give_one_sample_per_sentence(refcoco):
    refs = load_refs(refcoco / "refs(unc).p")
    assert refs == load_refs(refcoco / "refs.json")
    images, annotations = load_instances(refcoco / "instances.json")
    samples = referring_samples(refs, images, annotations, "val")
    assert [(s.ref_id, s.sent_id, s.text, s.image_file, s.ann_id) for s in samples] == [
        (0, 0, "the left box", "img1.png", 10),
        (0, 1, "box on the left", "img1.png", 10),
        (1, 2, "the thin line", "img2.png", 20),
    ]
    for s in samples:
        decoded = segmentation_to_mask(s.segmentation, s.height, s.width, backend="numpy")
        assert np.array_equal(decoded, EXPECTED_MASKS[s.ann_id])


class _MakesAFolder:
    """A pickled object whose unpickling would call os.mkdir (stands for any code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "made_by_pickle"
    path = tmp_path / "refs(evil).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _MakesAFolder(str(target))}]))
    with pytest.raises(
        DatasetError,
        match=r"refused pickle: it names posix\.mkdir|refused pickle: it names nt\.mkdir",
    ):
        load_refs(path)
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "reader", "message"),
    [
        ("[{", load_refs, r"not valid JSON \(line 1, column 3"),
        ('{"a": 1}', load_refs, "holds a dict, expected a list of refs"),
        ('[{"ref_id": 0}]', load_refs, "ref 0 lacks image_id, ann_id, split, sentences"),
        ('{"images": []}', load_instances, "the file lacks annotations"),
        (
            '{"images": {}, "annotations": []}',
            load_instances,
            "'images' is a dict, expected a list",
        ),
        (
            '{"annotations": [{"question_id": 1, "answers": []}]}',
            load_vqa_answers,
            r"annotations\[0\] has no answers",
        ),
        ('{"image": "a.png", "question": "q"}\n', load_qa_jsonl, "line 1 lacks answer"),
        ("\n{oops\n", load_qa_jsonl, "line 2 is not valid JSON"),
    ],
)
def test_malformed_files_are_named(tmp_path, content, reader, message):
    path = tmp_path / ("data.jsonl" if reader is load_qa_jsonl else "data.json")
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        reader(path)


# ---- end to end through main() ---------------------------------------------------------------


def expected_masks(specialist_options, refcoco, names: list[str]) -> list[np.ndarray]:
    """The tiny itaclip's masks of 'the object' (the scripted reply's call) on the images."""
    from vitron.specialists import SpecialistRegistry

    segmenter = SpecialistRegistry(specialist_options).specialist("segment_image")
    segmenter.ensure_loaded()
    found = []
    for name in names:
        image = Image.open(refcoco / "images" / name).convert("RGB")
        found.append(segmenter.segment(image, "the object", None, None)[0].numpy())
    return found


def test_eval_refseg_end_to_end(
    tmp_path, capsys, refcoco, model_dir, specialists_file, specialist_options
):
    reply = tmp_path / "reply.txt"
    reply.write_text(SCRIPTED_SEGMENT)
    out = tmp_path / "out"
    status = main([
        "eval", "refseg", "--refs", str(refcoco / "refs(unc).p"), "--instances", str(refcoco / "instances.json"),
        "--images", str(refcoco / "images"), "--split", "val", "--limit", "2", "--model", str(model_dir),
        "--specialists", str(specialists_file), "--reply-file", str(reply), "-o", str(out),
        "--max-new-tokens", "2", "--device", "cpu", "--mask-backend", "numpy",
    ])  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # call files removed
    result = json.loads((out / "results.json").read_text())
    records = result["samples"]
    assert [(r["ref_id"], r["sent_id"], r["text"]) for r in records] == [
        (0, 0, "the left box"), (0, 1, "box on the left"),
    ]  # fmt: skip
    assert result["data"]["split"] == "val" and result["data"]["limit"] == 2
    # the prompt is the template; the scripted reply's call segments 'the object'
    predicted = expected_masks(specialist_options, refcoco, ["img1.png"])[0]
    expected = mask_counts(predicted, EXPECTED_MASKS[10])
    for r in records:
        assert r["mask_call"] == "c1" and r["error"] is None
        assert (r["intersection"], r["union"], r["predicted"], r["target"]) == (
            expected.intersection, expected.union, expected.predicted, 612,
        )  # fmt: skip
    assert result["metrics"] == {
        "ciou": pytest.approx(expected.intersection / expected.union, abs=1e-12),
        "giou": pytest.approx(expected.iou, abs=1e-12),
        "samples": 2,
        "without_mask": 0,
        "failed": 0,
    }
    captured = capsys.readouterr()
    assert "eval refseg: 2/2 samples (100%), " in captured.err  # common_kernels.runtime.progress
    assert captured.out.startswith(f"refseg: cIoU {expected.intersection / expected.union:.4f}, ")
    assert "over 2 samples (0 without a mask, 0 failed)" in captured.out


def test_eval_refseg_rle_split_keeping_the_files(
    tmp_path, refcoco, model_dir, specialists_file, specialist_options
):
    reply = tmp_path / "reply.txt"
    reply.write_text(SCRIPTED_SEGMENT)
    out = tmp_path / "out"
    status = main([
        "eval", "refseg", "--refs", str(refcoco / "refs.json"), "--instances", str(refcoco / "instances.json"),
        "--images", str(refcoco / "images"), "--split", "testA", "--model", str(model_dir),
        "--specialists", str(specialists_file), "--reply-file", str(reply), "-o", str(out),
        "--max-new-tokens", "2", "--device", "cpu", "--keep-files",
    ])  # fmt: skip
    assert status == 0
    result = json.loads((out / "results.json").read_text())
    predicted = expected_masks(specialist_options, refcoco, ["img3.png"])[0]
    stripe, nothing = (mask_counts(predicted, EXPECTED_MASKS[k]) for k in (30, 40))
    assert [(r["target"], r["intersection"], r["union"]) for r in result["samples"]] == [
        (96, stripe.intersection, stripe.union), (0, 0, nothing.union),
    ]  # fmt: skip
    assert result["metrics"]["ciou"] == pytest.approx(
        stripe.intersection / (stripe.union + nothing.union), abs=1e-12
    )
    assert result["metrics"]["giou"] == pytest.approx((stripe.iou + nothing.iou) / 2, abs=1e-12)
    assert [[os.path.basename(f) for f in r["files"]] for r in result["samples"]] == [
        ["c1_mask.png", "c1_overlay.png"], ["c1_mask_2.png", "c1_overlay_2.png"],
    ]  # fmt: skip
    assert all((out / name).is_file() for name in ("c1_mask.png", "c1_mask_2.png"))


def test_eval_vqa_and_qa_end_to_end(tmp_path, capsys, vqa, model_dir):
    reply = tmp_path / "reply.txt"
    reply.write_text("Two.")
    out = tmp_path / "out"
    status = main([
        "eval", "vqa", "--questions", str(vqa / "questions.json"), "--annotations", str(vqa / "annotations.json"),
        "--images", str(vqa / "val2014"), "--model", str(model_dir), "--reply-file", str(reply),
        "-o", str(out), "--device", "cpu",
    ])  # fmt: skip
    assert status == 0
    result = json.loads((out / "results.json").read_text())
    assert [(r["question_id"], r["answer"], r["accuracy"]) for r in result["samples"]] == [
        (101, "Two.", 1.0), (102, "Two.", pytest.approx(0.9)), (103, "Two.", 0.0),
    ]  # fmt: skip
    assert result["metrics"]["accuracy"] == pytest.approx(1.9 / 3, abs=1e-12)
    assert result["metrics"]["metric"] == "vqa" and result["metrics"]["samples"] == 3
    assert "eval vqa" in capsys.readouterr().err

    lines = [
        {"image": "val2014/COCO_val2014_000000000001.jpg", "question": "How many?", "answer": "2"},
        {
            "image": "val2014/COCO_val2014_000000000002.jpg",
            "question": "How many?",
            "answer": "three",
        },
    ]
    data = vqa / "qa.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    status = main([
        "eval", "qa", "--data", str(data), "--model", str(model_dir), "--reply-file", str(reply),
        "-o", str(out), "--device", "cpu", "--limit", "2",
    ])  # fmt: skip
    assert status == 0
    result = json.loads((out / "results.json").read_text())
    assert [r["accuracy"] for r in result["samples"]] == [1.0, 0.0]
    assert result["metrics"]["accuracy"] == 0.5 and result["metrics"]["metric"] == "exact"


def _refseg_args(refcoco, model_dir, out, **changes) -> list[str]:
    flags = {
        "--refs": str(refcoco / "refs.json"), "--instances": str(refcoco / "instances.json"),
        "--images": str(refcoco / "images"), "--split": "val", "--model": str(model_dir),
        "-o": str(out), "--device": "cpu",
    }  # fmt: skip
    flags.update(changes)
    return ["eval", "refseg", *[item for pair in flags.items() for item in pair]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {"--refs": str(d / "missing.p")}, "--refs {d}/missing.p does not exist"),
        (
            lambda d: {"--split": "testC"},
            "--split 'testC' is not in --refs {d}/refs.json (its splits: testA, val)",
        ),
        (
            lambda d: {"--instances": str(d / "broken.json")},
            "--instances {d}/broken.json: not valid JSON (line 1, column 13: Expecting value)",
        ),
        (lambda d: {"--refs": str(d / "evil.p")}, "--refs {d}/evil.p: refused pickle: it names "),
        (lambda d: {"--images": str(d / "nowhere")}, "--images {d}/nowhere is not a folder"),
        (lambda d: {"--images": str(d)}, "--images {d} lacks img1.png and 1 more"),
        (lambda d: {"--limit": "0"}, "--limit must be >= 1, got 0"),
        (
            lambda d: {"--template": "segment it"},
            "--template must contain {{text}}, got 'segment it'",
        ),
        (
            lambda d: {"--instances": str(d / "bad_rle.json")},
            "--instances {d}/bad_rle.json: annotation 20: RLE counts sum to 7 pixels",
        ),
    ],
)
def test_eval_bad_inputs_exit_2_naming_the_flag(
    tmp_path, capsys, refcoco, model_dir, change, message
):
    (refcoco / "broken.json").write_text('{"images": [}')
    (refcoco / "evil.p").write_bytes(pickle.dumps([_MakesAFolder(str(refcoco / "made"))]))
    instances = json.loads((refcoco / "instances.json").read_text())
    instances["annotations"][1]["segmentation"]["counts"] = [3, 4]
    (refcoco / "bad_rle.json").write_text(json.dumps(instances))
    out = tmp_path / "out"
    assert main(_refseg_args(refcoco, model_dir, out, **change(refcoco))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitron eval: error: ")
    assert message.format(d=refcoco) in err
    assert not out.exists() and not (refcoco / "made").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "testC"}, "split 'testC' is not in refs {d}/refs.json (its splits: testA, val)"),
        ({"images": "{d}/nowhere"}, "images {d}/nowhere is not a folder"),
        ({"images": "{d}"}, "images {d} lacks img1.png and 1 more"),
        ({"refs": "{d}/missing.p"}, "refs {d}/missing.p does not exist"),
        ({"limit": 0}, "limit must be >= 1, got 0"),
        ({"template": "segment it"}, "template must contain {{text}}, got 'segment it'"),
        ({"mask_backend": "gpu"}, "mask_backend 'gpu': expected one of auto, pycocotools, numpy"),
    ],
)  # fmt: skip
def test_referring_task_checks_are_the_api_s(refcoco, change, message):
    """The API raises what ``vitron eval refseg`` prints, with the Python argument names."""
    from vitron.evaluation import referring_task

    arguments = {
        "refs": "{d}/refs.json", "instances": "{d}/instances.json", "images": "{d}/images",
        "split": "val",
    }  # fmt: skip
    arguments.update(change)
    arguments = {k: v.format(d=refcoco) if isinstance(v, str) else v for k, v in arguments.items()}
    with pytest.raises(ValueError) as caught:
        referring_task(**arguments)
    assert str(caught.value) == message.format(d=refcoco)


def test_task_inputs_read_the_samples(refcoco, vqa):
    from vitron.evaluation import qa_task, referring_task, vqa_task

    samples = referring_task(
        refcoco / "refs.json", refcoco / "instances.json", refcoco / "images", "testA", limit=1
    )
    assert [(s.ref_id, s.text) for s in samples] == [(2, "the stripe")]
    questions = vqa_task(vqa / "questions.json", vqa / "annotations.json", vqa / "val2014")
    assert [q.question_id for q in questions] == [101, 102, 103]
    (vqa / "qa.jsonl").write_text('{"image": "a.png", "question": "q?", "answer": "yes"}\n')
    with pytest.raises(ValueError, match=r"^images .* lacks a\.png$"):
        qa_task(vqa / "qa.jsonl")


def test_evaluate_refuses_a_template_without_its_placeholder():
    from vitron.evaluation import evaluate_qa, evaluate_referring

    with pytest.raises(ValueError, match=r"^template must contain \{text\}, got 'x'$"):
        evaluate_referring([], lambda prompt, image: None, ".", template="x")
    with pytest.raises(ValueError, match=r"^template must contain \{question\}, got 'y'$"):
        evaluate_qa([], lambda prompt, image: None, ".", template="y", metric="exact")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--annotations", "{d}/questions.json"],
            "--annotations {d}/questions.json: the file lacks annotations",
        ),
        (
            ["--image-name", "img_{{id}}.jpg"],
            "--image-name: the image name pattern 'img_{{id}}.jpg' does not format image_id 0 (KeyError: 'id')",
        ),
        (
            ["--template", "no placeholder"],
            "--template must contain {{question}}, got 'no placeholder'",
        ),
        (["--questions", "{d}/qa.jsonl"], "--questions {d}/qa.jsonl: not valid JSON"),
    ],
)
def test_eval_vqa_bad_inputs_exit_2(tmp_path, capsys, vqa, model_dir, args, message):
    (vqa / "qa.jsonl").write_text('{"a": 1}\n{"b": 2}\n')
    flags = {
        "--questions": str(vqa / "questions.json"), "--annotations": str(vqa / "annotations.json"),
        "--images": str(vqa / "val2014"),
    }  # fmt: skip
    flags[args[0]] = args[1].format(d=vqa)
    out = tmp_path / "out"
    argv = [
        "eval",
        "vqa",
        *[i for p in flags.items() for i in p],
        "--model",
        str(model_dir),
        "-o",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(d=vqa) in err
    assert not out.exists()
