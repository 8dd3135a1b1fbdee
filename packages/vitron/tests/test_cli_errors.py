"""The CLI's error contract: one line ``vitron COMMAND: error: ...`` naming the flag, exit 2,
found before any model is loaded and before anything is written; failures while working exit
1; Ctrl-C exits 130 with one line; ``--dtype`` resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitron.io
import vitron.training
from vitron.cli import build_parser, main
from vitron.models import VitronModel
from vitron.options import load_model, resolve_dtype
from vitron.specialists import SpecialistRegistry

PLAIN_REPLY = "It is a noisy picture.</s>"


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load (Vitron, specialists, training) fails the test: the checks come first.

    ``pytest.fail`` raises a ``BaseException``, which ``main`` does not turn into an exit status.
    """

    def fail(*args, **kwargs):
        pytest.fail("a model was loaded before the inputs were checked")

    monkeypatch.setattr(VitronModel, "from_pretrained", fail)
    monkeypatch.setattr(VitronModel, "from_components", fail)
    monkeypatch.setattr(SpecialistRegistry, "specialist", fail)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def files(tmp_path) -> Path:
    """An image, a non-image, a folder of images, an empty folder, a file in the way, ..."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
    (tmp_path / "notes.png").write_text("not an image")
    full = (tmp_path / "img.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "0.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "reply.txt").write_text(PLAIN_REPLY)
    (tmp_path / "data.jsonl").write_text("{}\n")
    caption = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat"}]
    lost = {"images": ["nope.png"], "conversations": caption}
    (tmp_path / "lost.jsonl").write_text(json.dumps(lost) + "\n")
    torch.save({"global_step": 5, "state_dict": {}}, tmp_path / "done.ckpt")
    (tmp_path / "turn.json").write_text(PLAIN_REPLY)
    return tmp_path


def fill(text: str, tmp: Path, model: Path) -> str:
    return text.replace("{t}", str(tmp)).replace("{m}", str(model)).replace("{cwd}", os.getcwd())


def check_one_line(command: str, argv: list[str], message: str, tmp: Path, model: Path, capsys):
    """``main(argv)`` exits 2 with exactly ``vitron COMMAND: error: MESSAGE`` and writes nothing.

    A message ending in ``*`` is a prefix of the printed one.
    """
    before = sorted(tmp.rglob("*"))
    status = main([fill(arg, tmp, model) for arg in argv])
    captured = capsys.readouterr()
    expected = f"vitron {command}: error: {fill(message, tmp, model)}"
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    if expected.endswith("*"):
        assert captured.err.startswith(expected[:-1])
    else:
        assert captured.err == expected + "\n"
    assert sorted(tmp.rglob("*")) == before  # nothing written, no output folder made


RUN = ["run", "x", "--image", "{t}/img.png", "-o", "{t}/out", "--model", "{m}"]
IMAGE_SUFFIXES = ".png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff"

RUN_CASES = {
    "model_unknown": (
        ["--model", "no_such_model"],
        "--model: unknown model 'no_such_model': a local folder starts with ./ or / (or exists), "
        "a hub id is owner/name",
    ),
    "output_is_the_video_frame_folder": (
        ["--video", "{t}/photos", "-o", "{t}/photos"],
        "-o/--output: {t}/photos is the frame folder of --video {t}/photos: the outputs would "
        "join its frames; choose another output folder, or pass --in-place to write into it",
    ),
    "turn_json_would_replace_the_reply_file": (
        ["--reply-file", "{t}/turn.json", "-o", "{t}"],
        "-o/--output: {t}/turn.json would replace the input {t}/turn.json; choose another "
        "output, or pass --in-place to replace the inputs (atomically)",
    ),
    "model_folder_missing": (
        ["--model", "./nope/model"],
        "--model: no Vitron folder ./nope/model (nothing at {cwd}/nope/model)",
    ),
    "model_path_missing": (
        ["--model", "{t}/nowhere/model"],
        "--model: no Vitron folder {t}/nowhere/model (nothing at {t}/nowhere/model)",
    ),
    "model_is_a_file": (
        ["--model", "{t}/file.txt"],
        "--model {t}/file.txt is a file; expected a Vitron folder or a hub id org/name",
    ),
    "model_folder_not_vitron": (
        ["--model", "{t}/photos"],
        "--model {t}/photos: the folder lacks config.json, model.safetensors, tokenizer (a Vitron "
        "folder is written by VitronModel.save_pretrained or `vitron tiny-model DIR`)",
    ),
    "device_cuda_without_cuda": (
        ["--device", "cuda"],
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "device_cuda_index_without_cuda": (
        ["--device", "cuda:1"],
        "--device cuda:1: no CUDA device is available (available: cpu)",
    ),
    "device_mps_without_mps": (
        ["--device", "mps"],
        "--device mps: no MPS device is available (available: cpu)",
    ),
    "device_not_a_device": (
        ["--device", "cuda:x"],
        "--device cuda:x: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "device_unknown": (
        ["--device", "tpu"],
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "dtype_unknown": (
        ["--dtype", "float64"],
        "argument --dtype: invalid choice: 'float64' (choose from 'auto', 'float32', 'bfloat16', "
        "'float16')",
    ),
    "output_is_a_file": (
        ["-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "output_below_a_file": (
        ["-o", "{t}/file.txt/out"],
        "-o/--output {t}/file.txt/out: cannot create it, {t}/file.txt is a file",
    ),
    "output_named_like_a_file": (
        ["-o", "{t}/answer.png"],
        "-o/--output {t}/answer.png: the outputs go into a folder, and a new folder's name must "
        "have no suffix (got '.png')",
    ),
    "image_truncated": (
        ["--image", "{t}/cut.png"],
        "--image {t}/cut.png is not a readable image (image file is truncated)",
    ),
    "image_missing": (["--image", "{t}/nope.png"], "--image {t}/nope.png does not exist"),
    "image_is_a_folder": (
        ["--image", "{t}/photos"],
        "--image {t}/photos is a folder, not an image file",
    ),
    "image_not_an_image": (
        ["--image", "{t}/notes.png"],
        "--image {t}/notes.png is not a readable image (cannot identify image file "
        "'{t}/notes.png')",
    ),
    "video_missing": (["--video", "{t}/nope.gif"], "--video {t}/nope.gif does not exist"),
    "video_empty_folder": (
        ["--video", "{t}/empty"],
        f"--video {{t}}/empty is a folder holding no images ({IMAGE_SUFFIXES})",
    ),
    "video_not_an_image": (
        ["--video", "{t}/file.txt"],
        "--video {t}/file.txt is not a readable video: an animated GIF/WebP/TIFF or a folder of "
        "images (cannot identify image file '{t}/file.txt')",
    ),
    "box_on_a_missing_image": (
        ["--box", "0,0,10,10@1"],
        "--box refers to image 1, but 1 image(s) were given",
    ),
    "box_outside_the_image": (
        ["--box", "0,0,100000,100000"],
        "--box 0,0,100000,100000 lies outside the 64x48 image",
    ),
    "box_beyond_the_corner": (
        ["--box", "200,200,220,220"],
        "--box 200,200,220,220 lies outside the 64x48 image",
    ),
    "stroke_outside_the_image": (
        ["--stroke", "1,2 70,2"],
        "--stroke 1,2 70,2 lies outside the 64x48 image",
    ),
    "box_three_numbers": (
        ["--box", "0,0,10"],
        "--box 0,0,10: box must be four numbers 'x1,y1,x2,y2', got '0,0,10'",
    ),
    "box_bad_image_index": (
        ["--box", "0,0,10,10@x"],
        "--box 0,0,10,10@x: bad image index (index of the image a region is drawn on: append @K "
        "(default @0))",
    ),
    "stroke_not_numbers": (
        ["--stroke", "1,2 a,b"],
        "--stroke 1,2 a,b: expected 'x,y x,y ...' (numbers), got '1,2 a,b'",
    ),
    "stroke_width_0": (
        ["--stroke", "1,2 3,4", "--stroke-width", "0"],
        "--stroke-width must be a finite number > 0, got 0.0",
    ),
    "mask_missing": (["--mask", "{t}/nope.png"], "--mask {t}/nope.png does not exist"),
    "mask_wrong_size": (
        ["--mask", "{t}/small_mask.png"],
        "--mask {t}/small_mask.png is 8x8 but image 0 is 64x48",
    ),
    "set_malformed": (["--set", "itaclip=3"], "--set takes ADAPTER.OPTION=VALUE, got 'itaclip=3'"),
    "set_unknown_option": (
        ["--set", "itaclip.strid=3"],
        "--specialists/--set: unknown options ['strid'] for specialist 'itaclip' (allowed: *",
    ),
    "specialists_missing": (
        ["--specialists", "{t}/nope.json"],
        "--specialists {t}/nope.json does not exist",
    ),
    "specialists_bad_json": (
        ["--specialists", "{t}/bad.json"],
        "--specialists {t}/bad.json is not readable JSON (Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1))",
    ),
    "specialists_not_an_object": (
        ["--specialists", "{t}/list.json"],
        "--specialists {t}/list.json must hold a JSON object of adapter name -> options object",
    ),
    "reply_file_missing": (
        ["--reply-file", "{t}/nope.txt"],
        "--reply-file {t}/nope.txt does not exist",
    ),
    "reply_file_is_a_folder": (
        ["--reply-file", "{t}/photos"],
        "--reply-file {t}/photos is a folder, not a file",
    ),
    "max_rounds_0": (["--max-rounds", "0"], "--max-rounds must be >= 1, got 0"),
    "max_new_tokens_0": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    "max_new_tokens_not_int": (
        ["--max-new-tokens", "many"],
        "argument --max-new-tokens: invalid int value: 'many'",
    ),
    "top_p_5": (["--top-p", "5"], "--top-p must be in (0, 1], got 5.0"),
    "top_p_0": (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    "top_p_nan": (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
    "temperature_0": (
        ["--temperature", "0"],
        "--temperature must be a finite number > 0, got 0.0",
    ),
    "temperature_inf": (
        ["--temperature", "inf"],
        "--temperature must be a finite number > 0, got inf",
    ),
    "seed_negative": (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    "grammar": (
        ["--grammar", "xml"],
        "argument --grammar: invalid choice: 'xml' (choose from 'auto', 'json', 'tags')",
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_bad_input_one_line_exit_2_before_model_load(
    case, files, model_dir, capsys, no_model_load
):
    extra, message = RUN_CASES[case]
    check_one_line("run", [*RUN, *extra], message, files, model_dir, capsys)


CHAT_CASES = {
    "model_folder_missing": (
        ["--model", "./nope/model"],
        "--model: no Vitron folder ./nope/model (nothing at {cwd}/nope/model)",
    ),
    "image_is_a_folder": (
        ["--image", "{t}/photos"],
        "--image {t}/photos is a folder, not an image file",
    ),
    "output_is_a_file": (
        ["-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "device_cuda_without_cuda": (
        ["--device", "cuda"],
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "top_p_5": (["--top-p", "5"], "--top-p must be in (0, 1], got 5.0"),
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_bad_input_one_line_exit_2_before_model_load(
    case, files, model_dir, capsys, no_model_load
):
    extra, message = CHAT_CASES[case]
    argv = ["chat", "-o", "{t}/out", "--model", "{m}", *extra]
    check_one_line("chat", argv, message, files, model_dir, capsys)


@pytest.mark.parametrize("port", ["0", "65536"])
def test_app_port_out_of_range(port, files, model_dir, capsys, no_model_load):
    argv = ["app", "-o", "{t}/out", "--model", "{m}", "--port", port]
    check_one_line(
        "app", argv, f"--port must be in [1, 65535], got {port}", files, model_dir, capsys
    )


PARSE_CASES = {
    "images_negative": (["x", "--images", "-1"], "--images must be >= 0, got -1"),
    "videos_negative": (["x", "--videos", "-2"], "--videos must be >= 0, got -2"),
    "region_negative": (["x", "--region", "-1"], "--region must be >= 0, got -1"),
    "region_above_images": (
        ["x", "--images", "1", "--region", "1"],
        "--region needs an image index below --images 1",
    ),
    "unparsable_reply": (
        ["<module>Z</module>"],
        "REPLY does not parse: <module> at character 0: unknown module 'Z' (letters: A, B, C, "
        "D, E, F, G)",
    ),
    "images_not_int": (["x", "--images", "two"], "argument --images: invalid int value: 'two'"),
}


@pytest.mark.parametrize("case", sorted(PARSE_CASES))
def test_parse_bad_input_one_line_exit_2(case, files, model_dir, capsys):
    argv, message = PARSE_CASES[case]
    check_one_line("parse", ["parse", *argv], message, files, model_dir, capsys)


SPECIALISTS_CASES = {
    "specialists_missing": (
        ["--specialists", "{t}/nope.json"],
        "--specialists {t}/nope.json does not exist",
    ),
    "set_malformed": (["--set", "x"], "--set takes ADAPTER.OPTION=VALUE, got 'x'"),
    "set_unknown_adapter": (
        ["--set", "sam.model=x"],
        "--specialists/--set: options for unknown specialists ['sam'] (known: *",
    ),
    "device_cuda_without_cuda": (
        ["--device", "cuda"],
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
}


@pytest.mark.parametrize("case", sorted(SPECIALISTS_CASES))
def test_specialists_bad_input_one_line_exit_2(case, files, model_dir, capsys, no_model_load):
    extra, message = SPECIALISTS_CASES[case]
    check_one_line("specialists", ["specialists", *extra], message, files, model_dir, capsys)


TRAIN = ["train", "--model", "{m}", "--data", "{t}/data.jsonl", "--stage", "2", "-o", "{t}/out"]

TRAIN_CASES = {
    "model_unknown": (
        ["--model", "no_such_model"],
        "--model: unknown model 'no_such_model': a local folder starts with ./ or / (or exists), "
        "a hub id is owner/name",
    ),
    "resume_not_a_checkpoint": (
        ["--resume", "{t}/data.jsonl"],
        "--resume {t}/data.jsonl is not a checkpoint written by vitron train (not a file written "
        "by torch.save)",
    ),
    "resume_at_max_steps": (
        ["--resume", "{t}/done.ckpt", "--max-steps", "5"],
        "--resume {t}/done.ckpt was saved at step 5, and --max-steps is 5: nothing is left to "
        "train (raise --max-steps)",
    ),
    "data_not_a_record": (
        [],
        "--data {t}/data.jsonl:1: a record is an object with 'conversations'",
    ),
    "data_image_missing": (
        ["--data", "{t}/lost.jsonl"],
        "--data {t}/lost.jsonl:1: images[0] nope.png does not exist (paths are relative to {t})",
    ),
    "max_steps_0": (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    "batch_size_0": (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "lora_rank_negative": (["--lora-rank", "-1"], "--lora-rank must be >= 0, got -1"),
    "lr_0": (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    "lr_nan": (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    "align_weight_negative": (
        ["--align-weight", "-1"],
        "--align-weight must be a finite number >= 0, got -1.0",
    ),
    "synergy_weight_inf": (
        ["--synergy-weight", "inf"],
        "--synergy-weight must be a finite number >= 0, got inf",
    ),
    "seed_too_large": (
        ["--seed", "4294967296"],
        "--seed must be in [0, 4294967295], got 4294967296",
    ),
    "accelerator_unknown": (
        ["--accelerator", "tpu"],
        "--accelerator tpu: expected one of auto, cpu, cuda, gpu, mps",
    ),
    "accelerator_cuda_without_cuda": (
        ["--accelerator", "gpu"],
        "--accelerator gpu: no CUDA device is available (available: auto, cpu)",
    ),
    "model_folder_missing": (
        ["--model", "./nope/model"],
        "--model: no Vitron folder ./nope/model (nothing at {cwd}/nope/model)",
    ),
    "data_missing": (["--data", "{t}/nope.jsonl"], "--data {t}/nope.jsonl does not exist"),
    "data_is_a_folder": (["--data", "{t}/photos"], "--data {t}/photos is a folder, not a file"),
    "val_data_missing": (
        ["--val-data", "{t}/nope.jsonl"],
        "--val-data {t}/nope.jsonl does not exist",
    ),
    "output_is_a_file": (
        ["-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "stage_4": (["--stage", "4"], "argument --stage: invalid choice: 4 (choose from 1, 2, 3)"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_input_one_line_exit_2_before_model_load(
    case, files, model_dir, capsys, no_model_load
):
    extra, message = TRAIN_CASES[case]
    check_one_line("train", [*TRAIN, *extra], message, files, model_dir, capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tiny-model", "{t}/file.txt"], "DIR {t}/file.txt is a file, not a folder"),
        (["tiny-model", "{t}/m", "--seed", "-3"], "--seed must be in [0, 4294967295], got -3"),
        (
            ["tiny-specialists", "{t}/file.txt/spec"],
            "DIR {t}/file.txt/spec: cannot create it, {t}/file.txt is a file",
        ),
    ],
)
def test_tiny_commands_bad_input_one_line_exit_2(argv, message, files, model_dir, capsys):
    check_one_line(argv[0], argv, message, files, model_dir, capsys)
    assert (files / "file.txt").read_text() == "in the way"


def test_unwritable_output_folder_one_line_exit_2(files, model_dir, capsys, monkeypatch):
    """As root every folder is writable: ``os.access`` stands in for a read-only folder."""
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != files)
    message = "-o/--output {t}/out: cannot write to {t} (permission denied)"
    check_one_line("run", RUN, message, files, model_dir, capsys)


def test_unknown_command_one_line(capsys):
    assert main(["paint"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vitron: error: argument command: invalid choice: 'paint' (")
    assert captured.err.count("\n") == 1


def test_model_that_cannot_be_loaded_exits_1_with_one_line(files, model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in model_dir.rglob("*"):
        target = broken / path.relative_to(model_dir)
        if path.is_dir():
            target.mkdir()
        else:
            target.write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00")  # a header cut short
    status = main([fill(arg, files, broken) for arg in RUN])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.startswith(f"vitron run: error: cannot load --model {broken}: ")
    assert captured.err.count("\n") == 1
    assert not (files / "out").exists()


def test_failure_while_writing_exits_1_with_one_line(files, model_dir, capsys, monkeypatch):
    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(vitron.io, "write_json", disk_full)
    argv = [*RUN, "--reply-file", "{t}/reply.txt"]
    status = main([fill(arg, files, model_dir) for arg in argv])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    path = files / "out" / "turn.json"
    assert captured.err == f"vitron run: error: [Errno 28] No space left on device: '{path}'\n"


def run_cli(args: list[str], script: str = "") -> subprocess.CompletedProcess:
    code = textwrap.dedent(script) + "\nimport sys\nfrom vitron.cli import main\n"
    code += "sys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_bad_input_in_a_subprocess_prints_no_traceback(tmp_path):
    done = run_cli(["run", "x", "--model", "./nope/model", "-o", str(tmp_path / "out")])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"vitron run: error: --model: no Vitron folder ./nope/model (nothing at {os.getcwd()}"
        "/nope/model)\n"
    )
    assert not (tmp_path / "out").exists()


INTERRUPT_SCRIPT = """
import os, signal, time
from vitron.models import VitronModel

# a background job of a non-interactive shell starts with SIGINT ignored: restore Python's
# default handler, as a terminal session has it
signal.signal(signal.SIGINT, signal.default_int_handler)

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)

VitronModel.from_pretrained = interrupted
"""


def test_ctrl_c_exits_130_with_one_line(files, model_dir):
    argv = [fill(arg, files, model_dir) for arg in RUN]
    done = run_cli(argv, INTERRUPT_SCRIPT)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "vitron run: interrupted\n"
    assert done.stdout == ""
    assert not (files / "out").exists()


@pytest.mark.parametrize(
    ("name", "device", "bf16", "expected"),
    [
        ("auto", "cpu", False, torch.float32),
        ("auto", "cpu", True, torch.float32),
        ("auto", "mps", False, torch.float32),
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda:1", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),
        ("float32", "cuda", True, torch.float32),
        ("float16", "cpu", False, torch.float16),
        ("bfloat16", "cpu", False, torch.bfloat16),
        ("bfloat16", "cuda", True, torch.bfloat16),
    ],
)
def test_dtype_resolution(name, device, bf16, expected):
    assert resolve_dtype(name, torch.device(device), bf16) is expected


def test_bfloat16_on_a_gpu_without_it_is_refused():
    with pytest.raises(ValueError) as caught:
        resolve_dtype("bfloat16", torch.device("cuda:0"), False)
    assert caught.value.for_flags({"dtype": "--dtype"}) == (
        "--dtype bfloat16: cuda:0 does not support bfloat16 (use --dtype float16 or auto)"
    )
    with pytest.raises(ValueError) as caught:
        resolve_dtype("bfloat16", torch.device("cuda:0"), False)
    assert str(caught.value) == (
        "dtype bfloat16: cuda:0 does not support bfloat16 (use dtype float16 or auto)"
    )


@pytest.mark.parametrize(
    ("flag", "expected"),
    [([], "auto"), (["--dtype", "bf16"], "bfloat16"), (["--dtype", "fp32"], "float32")],
)
def test_dtype_option_default_and_01_names(flag, expected):
    args = build_parser().parse_args(["run", "x", "--model", "m", "-o", "out", *flag])
    assert args.dtype == expected


def test_dtype_documented_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--dtype {auto,float32,bfloat16,float16}" in help_text
    assert "auto: bfloat16 on CUDA (float16 on a GPU without bfloat16), float32 on the CPU" in (
        help_text
    )


def test_cpu_run_loads_the_model_in_float32(files, model_dir, capsys, monkeypatch):
    loaded = []
    original = VitronModel.from_pretrained

    def record(*args, **kwargs):
        loaded.append(original(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(VitronModel, "from_pretrained", record)
    argv = [*RUN, "--reply-file", "{t}/reply.txt"]
    assert main([fill(arg, files, model_dir) for arg in argv]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith("It is a noisy picture.")
    (model,) = loaded
    assert model.device == torch.device("cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_explicit_dtype_loads_in_that_dtype(model_dir):
    model = load_model(str(model_dir), torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
