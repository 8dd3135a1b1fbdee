"""Issue 33 in diffeat: a preset sets the image size, folders are walked as in every package,
every image is decoded before the model loads (``--keep-going``), ``pca`` never writes among
its inputs unless ``--in-place`` and resumes with ``--skip-existing``, one unknown-model rule,
``--version``, ``--verbose``, and empty tensors named by the API."""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import diffeat
from common_kernels.runtime.cli import version_line
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.testing import signal_while_working
from diffeat import DiTFeatureExtractor, FeatureExtractor, PromptEmbeddings, aggregate
from diffeat.aggregation import resize_feature
from diffeat.cli import build_parser, main
from diffeat.command_checks import selected_layers
from diffeat.commands import check_inputs, left_out_line, plan_pca_outputs
from diffeat.extractor import check_from_pretrained
from diffeat.heads import PixelMLPEnsemble, match_keypoints, pixel_training_set
from diffeat.io import load_features, load_image
from diffeat.probes import granularity, locality
from diffeat.viz import pca_rgb

HINT = "a local folder starts with ./ or / (or exists), a hub id is owner/name"


def save_image(path, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def truncated_png(path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def run(argv: list, capsys) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def no_load(monkeypatch):
    """Loading the model fails the test: the checks must have stopped the run before."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(FeatureExtractor, "from_plan", fail)


def test_a_preset_sets_the_image_size_in_the_api_and_the_cli(model_dirs, tmp_path, capsys):
    """The README's example: zebra.png of 391 x 586 (no multiple of 32) with --preset ours-xl."""
    sdxl, zebra = model_dirs["sdxl"], save_image(tmp_path / "zebra.png", 391, 586)
    for keywords, source in (({"preset": "ours-xl"}, "preset"), ({"layers": "ours-xl"}, "layers")):
        plan = check_from_pretrained(sdxl, **keywords)
        assert plan.size == (1024, 1024) and plan.size_from == source
    extractor = FeatureExtractor.from_pretrained(sdxl, preset="ours-xl")
    assert extractor.config.image_size == (1024, 1024)
    reference = extractor(load_image(zebra), "a photo of a zebra", extractor.generator())
    shapes = {info.name: info.shape for info in extractor.layer_infos()}
    assert {name: tuple(f.shape[1:]) for name, f in reference.items()} == {
        name: shapes[name] for name in reference
    }
    # one CLI run (each is a 1024 px extraction); --layers ours-xl reaches the same plan above
    out = tmp_path / "preset.safetensors"
    for flag, expected in (("--preset", ("ours-xl", None)), ("--layers", (None, "ours-xl"))):
        parsed = build_parser().parse_args(["extract", str(zebra), "--model", str(sdxl), flag,
                                            "ours-xl", "-o", str(out)])  # fmt: skip
        assert (parsed.preset, selected_layers(parsed)) == expected
    argv = ["extract", zebra, "--model", sdxl, "--preset", "ours-xl", "--prompt",
            "a photo of a zebra", "-o", out]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    features, meta = load_features(out)
    assert meta["image_size"] == [1024, 1024]
    assert all(torch.equal(features[name], reference[name]) for name in reference)
    given = FeatureExtractor.from_pretrained(
        sdxl, preset="ours-xl", image_size=64, text_stack=False
    )
    assert given.config.image_size == (64, 64)
    own = FeatureExtractor.from_pretrained(sdxl, layers=["unet-in"], text_stack=False)
    assert own.config.image_size is None  # names, not a preset: the images' own size
    with pytest.raises(ValueError) as info:
        own.preprocess(load_image(zebra))
    assert str(info.value) == (
        "images: height and width must be multiples of 32 for this model (VAE x8, U-Net x4); "
        "got 391x586; pass image_size=(H, W) to resize"
    )


@pytest.fixture
def photos(tmp_path):
    """photos/a.png, b.png (64 x 64), sub/c.png, a hidden file and a text file."""
    folder = tmp_path / "photos"
    for index, name in enumerate(("a.png", "b.png", "sub/c.png", ".hidden.png")):
        save_image(folder / name, 64, 64, seed=index)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folders_are_walked_as_in_every_package(model_dirs, photos, tmp_path, capsys):
    sd15, out = model_dirs["sd15"], tmp_path / "f.safetensors"
    base = ["extract", "--model", sd15, "--layers", "unet-in", "-o", out]
    status, stdout, err = run([*base[:1], photos, *base[1:]], capsys)
    assert status == 0 and "wrote 1 features of 2 images" in stdout
    assert load_features(out)[1]["images"] == [str(photos / "a.png"), str(photos / "b.png")]
    assert err.splitlines()[0] == (
        "diffeat extract: left out 1 image(s) in 1 subfolder(s) of the input folder(s); "
        "--recursive takes them too"
    )
    status, _, err = run([*base[:1], photos, *base[1:], "--recursive"], capsys)
    assert status == 0 and "left out" not in err
    assert [os.path.relpath(p, photos) for p in load_features(out)[1]["images"]] == [
        "a.png", "b.png", os.path.join("sub", "c.png")
    ]  # fmt: skip
    mixed = [photos / "sub" / "c.png", photos, photos / "a.png"]  # files and folders, once each
    status, _, _ = run([*base[:1], *mixed, *base[1:]], capsys)
    assert status == 0
    names = [os.path.basename(p) for p in load_features(out)[1]["images"]]
    assert names == ["c.png", "a.png", "b.png"]

    plan = check_from_pretrained(sd15, layers=["unet-in"])
    checked = check_inputs(plan, [photos])
    assert checked.images == (photos / "a.png", photos / "b.png")
    assert checked.listing.left_out == 1 and left_out_line(checked.listing) == (
        "left out 1 image(s) in 1 subfolder(s) of the input folder(s); recursive=True takes them "
        "too"
    )
    assert len(check_inputs(plan, [photos], recursive=True).images) == 3


def test_every_image_is_decoded_before_the_model_loads(
    model_dirs, photos, tmp_path, capsys, monkeypatch
):
    sd15, out = model_dirs["sd15"], tmp_path / "f.safetensors"
    cut = truncated_png(photos / "cut.png")
    (photos / "z.png").write_text("not an image")
    argv = ["extract", photos, "--model", sd15, "--layers", "unet-in", "-o", out]
    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractor, "from_plan", lambda *a, **k: pytest.fail("loaded"))
        status, stdout, err = run(argv, capsys)
    assert status == 2 and stdout == "" and not out.exists()
    assert err.splitlines()[-1] == (
        f"diffeat extract: error: {cut} is not a readable image (image file is truncated)"
    )

    status, stdout, err = run([*argv, "--keep-going"], capsys)
    z = photos / "z.png"
    assert status == 1
    assert err.splitlines()[:2] == [
        f"diffeat extract: skipping {cut}: image file is truncated",
        f"diffeat extract: skipping {z}: cannot identify image file '{z}'",
    ]  # before the model loaded: the next line is the walk's, then the summary
    assert err.endswith(
        "diffeat extract: skipped 2 input(s) that could not be read:\n"
        f"  {cut}: image file is truncated\n  {z}: cannot identify image file '{z}'\n"
    )
    assert load_features(out)[1]["images"] == [str(photos / "a.png"), str(photos / "b.png")]
    report = tmp_path / "probe.json"
    argv = ["probe", photos, "--model", sd15, "--layers", "unet-in", "--keep-going", "-o", report]
    assert run(argv, capsys)[0] == 1 and report.is_file()

    seen = []
    checked = check_inputs(
        check_from_pretrained(sd15, layers=["unet-in"]), [photos], keep_going=True,
        on_unreadable=seen.append,
    )  # fmt: skip
    assert checked.images == (photos / "a.png", photos / "b.png")
    assert [item.path for item in checked.skipped] == [item.path for item in seen] == [cut, z]


def test_keep_going_with_nothing_readable_exits_1_without_loading(
    model_dirs, tmp_path, capsys, no_load
):
    bad = tmp_path / "bad"
    truncated_png(bad.mkdir() or bad / "cut.png")
    out = tmp_path / "f.safetensors"
    argv = ["extract", bad, "--model", model_dirs["sd15"], "--layers", "unet-in", "--keep-going",
            "-o", out]  # fmt: skip
    status, stdout, err = run(argv, capsys)
    assert status == 1 and stdout == "" and not out.exists()
    assert err.splitlines()[-2:] == [
        "diffeat extract: skipped 1 input(s) that could not be read:",
        f"  {bad / 'cut.png'}: image file is truncated",
    ]


def test_pca_never_writes_among_its_inputs_unless_in_place(model_dirs, photos, tmp_path, capsys):
    sd15 = model_dirs["sd15"]
    before = sorted(photos.rglob("*"))
    argv = ["pca", photos, "--model", sd15, "--layers", "unet-in", "-o", photos]
    status, stdout, err = run(argv, capsys)
    assert status == 2 and stdout == ""
    assert err == (
        f"diffeat pca: error: -o/--output: {photos} is the input folder {photos}: the PNGs would "
        "be written among its images (and be inputs of its next walk); choose another folder, "
        "or pass --in-place to write them there\n"
    )
    assert sorted(photos.rglob("*")) == before
    with pytest.raises(InvalidArgument) as info:
        plan_pca_outputs([photos], photos, ["unet-in"])
    assert info.value.argument == "output" and str(info.value).endswith(
        "choose another folder, or pass in_place=True to write them there"
    )
    original = (photos / "a.png").read_bytes()
    status, stdout, _ = run([*argv, "--in-place"], capsys)
    assert status == 0 and stdout == f"wrote 2 PNGs to {photos}\n"
    assert (photos / "a__unet-in.png").is_file() and (photos / "a.png").read_bytes() == original

    other = tmp_path / "in" / "a.png"
    save_image(other, 64, 64, seed=9)  # its PNG would be photos/a__unet-in.png, an input now
    argv = ["pca", other, photos / "a__unet-in.png", "--model", sd15, "--layers", "unet-in",
            "-o", photos]  # fmt: skip
    status, _, err = run(argv, capsys)
    target = photos / "a__unet-in.png"
    assert status == 2 and err == (
        f"diffeat pca: error: -o/--output: {target} would replace the input {target}; choose "
        "another output, or pass --in-place to replace the inputs (atomically)\n"
    )


def test_pca_mirrors_subfolders_and_never_walks_its_output(model_dirs, photos, capsys):
    inside = photos / "pca"  # an output folder inside the input folder
    argv = ["pca", photos, "--model", model_dirs["sd15"], "--layers", "unet-in", "--recursive",
            "-o", inside]  # fmt: skip
    for _ in range(2):  # the second run finds the same 3 inputs, not the PNGs of the first
        status, stdout, err = run(argv, capsys)
        assert status == 0 and stdout == f"wrote 3 PNGs to {inside}\n", err
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*.png")) == [
        "a__unet-in.png", "b__unet-in.png", "sub/c__unet-in.png"
    ]  # fmt: skip
    status, stdout, err = run([*argv, "--skip-existing"], capsys)
    assert status == 0 and stdout == f"wrote 0 PNGs to {inside}\n"
    assert err == "diffeat pca: left out 3 image(s) whose PNGs exist (--skip-existing)\n"


INTERRUPTED_PCA = """
import signal, sys, time
import diffeat.commands
from diffeat.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
save_png, written = diffeat.commands.save_png, []

def second_image(path, rgb):  # the first image's 2 PNGs are written, then Ctrl-C
    if len(written) == 2:
        print("working", flush=True)
        time.sleep(120)
    save_png(path, rgb)
    written.append(path)

diffeat.commands.save_png = second_image
sys.exit(main(sys.argv[1:]))
"""


def test_pca_says_how_far_it_got_and_resumes(model_dirs, photos, tmp_path, capsys):
    out = tmp_path / "pca"
    argv = ["pca", str(photos), "--model", str(model_dirs["sd15"]), "--layers", "unet-in,unet-out",
            "--recursive", "-o", str(out)]  # fmt: skip
    stopped = signal_while_working(INTERRUPTED_PCA, argv, signal_number=signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        f"diffeat pca: interrupted after 1 of 3 image(s); resume with: diffeat pca "
        f"{shlex.join(argv[1:])} --skip-existing"
    )
    assert sorted(p.name for p in out.rglob("*")) == ["a__unet-in.png", "a__unet-out.png"]
    status, stdout, err = run([*argv, "--skip-existing"], capsys)
    assert status == 0 and stdout == f"wrote 4 PNGs to {out}\n"
    assert "left out 1 image(s) whose PNGs exist (--skip-existing)" in err
    assert len(list(out.rglob("*.png"))) == 6 and not list(out.rglob(".*"))


def test_one_unknown_model_rule_never_asks_the_hub(model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        "common_kernels.runtime.hub.check_hub", lambda *a, **k: pytest.fail("asked the hub")
    )
    with pytest.raises(InvalidArgument) as info:
        FeatureExtractor.from_pretrained("nonsense")
    assert str(info.value) == f"model_id_or_dir: unknown model 'nonsense': {HINT}"
    with pytest.raises(InvalidArgument) as info:
        check_from_pretrained("sdxl")
    assert str(info.value) == (
        f"model_id_or_dir: unknown model 'sdxl': {HINT}; 'sdxl' is a bundled config without "
        "weights (`diffeat layers --config sdxl` lists its activations)"
    )
    with pytest.raises(InvalidArgument) as info:
        DiTFeatureExtractor.from_pretrained("pix")
    assert str(info.value) == f"model_id_or_dir: unknown model 'pix': {HINT}"
    image = save_image(tmp_path / "img.png", 64, 64)
    cases = {
        ("extract", image, "--model", "nonsense", "-o", tmp_path / "f.safetensors"):
            f"diffeat extract: error: --model: unknown model 'nonsense': {HINT}",
        ("layers", "--model", "nonsense"): f"diffeat layers: error: --model: unknown model "
            f"'nonsense': {HINT}",
        ("probe", image, "--model", model_dirs["sd15"], "--lora", "my-lora"):
            f"diffeat probe: error: --lora: unknown model 'my-lora': {HINT}",
    }  # fmt: skip
    for argv, message in cases.items():
        status, stdout, err = run(list(argv), capsys)
        assert (status, stdout, err) == (2, "", message + "\n")


def test_version_and_verbose(capsys, monkeypatch):
    status, stdout, _ = run(["--version"], capsys)
    assert status == 0 and stdout == version_line("diffeat", "diffeat") + "\n"
    assert stdout.startswith(f"diffeat {diffeat.__version__} (common-kernels ")
    seen = []

    def listing(*args, **kwargs):  # what the libraries' switches are while a command works
        seen.append((logging.getLogger("diffusers").level, os.environ.get("DIFFUSERS_VERBOSITY")))

    monkeypatch.setattr("diffeat.cli.list_layers", listing)
    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    level = logging.getLogger("diffusers").level
    assert run(["layers", "--config", "tiny-sd15"], capsys)[0] == 0
    assert run(["layers", "--config", "tiny-sd15", "--verbose"], capsys)[0] == 0
    assert seen == [(logging.ERROR, "error"), (level, None)]
    assert logging.getLogger("diffusers").level == level and "DIFFUSERS_VERBOSITY" not in os.environ


EMPTY = torch.empty(0, 4, 8, 8)
EMPTY_CASES = {  # what is called on the tiny SD 1.5 extractor (or alone), and the message
    "images": (lambda x: x(torch.empty(0, 3, 64, 64)), "images: empty tensor (0, 3, 64, 64)"),
    "latents": (lambda x: x(latents=EMPTY), "latents: empty tensor (0, 4, 8, 8)"),
    "latents_h": (
        lambda x: x(latents=torch.empty(1, 4, 0, 8)),
        "latents: empty tensor (1, 4, 0, 8)",
    ),
    "pixels": (
        lambda x: x.encode_images(torch.empty(1, 3, 0, 64), x.generator()),
        "pixels: empty tensor (1, 3, 0, 64)",
    ),
    "sample": (
        lambda x: x.forward_unet(EMPTY, x.encode_prompts(""), (64, 64)),
        "sample: empty tensor (0, 4, 8, 8)",
    ),
    "aggregate": (
        lambda x: aggregate({"a": torch.empty(1, 0, 8, 8)}),
        "features['a']: empty tensor (1, 0, 8, 8)",
    ),
    "resize_feature": (
        lambda x: resize_feature(EMPTY, (4, 4)),
        "feature: empty tensor (0, 4, 8, 8)",
    ),
    "granularity": (
        lambda x: granularity({"a": EMPTY}),
        "features['a']: empty tensor (0, 4, 8, 8)",
    ),
    "locality": (
        lambda x: locality({"a": torch.empty(1, 4, 0, 8)}),
        "features['a']: empty tensor (1, 4, 0, 8)",
    ),
    "pca_rgb": (lambda x: pca_rgb(EMPTY), "feature: empty tensor (0, 4, 8, 8)"),
    "pixel_training_set": (
        lambda x: pixel_training_set(EMPTY, torch.empty(0, 8, 8)),
        "features: empty tensor (0, 4, 8, 8)",
    ),
    "ensemble_fit": (
        lambda x: PixelMLPEnsemble(4, 2, members=1).fit(torch.empty(0, 4), torch.empty(0)),
        "features: empty tensor (0, 4)",
    ),
    "ensemble_predict": (
        lambda x: PixelMLPEnsemble(4, 2, members=1).predict(torch.empty(0, 4)),
        "features: empty tensor (0, 4)",
    ),
    "match_keypoints": (
        lambda x: match_keypoints(
            torch.empty(4, 0, 8), torch.rand(4, 8, 8), torch.zeros(1, 2), (64, 64), (64, 64)
        ),
        "src_feature: empty tensor (4, 0, 8)",
    ),
    "embeddings": (
        lambda x: x(torch.rand(1, 3, 64, 64), embeddings=PromptEmbeddings(torch.empty(1, 0, 16))),
        "embeddings: empty tensor (1, 0, 16)",
    ),
}


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_empty_tensors_are_refused_naming_the_argument(case, make_extractor):
    call, message = EMPTY_CASES[case]
    with pytest.raises(ValueError) as info:
        call(make_extractor("sd15", layers=["unet-in"]))
    assert str(info.value) == message
