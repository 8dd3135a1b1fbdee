"""``pixelsmith tiny-model`` + ``pixelsmith generate`` on the tiny model equal the API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cascade import public_config
from pixelsmith.checkpoint import CheckpointStore
from pixelsmith.cli import main
from pixelsmith.config import parse_size

SMALL = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]


def test_generate_png_and_tif_equal_api(tiny_dir, tmp_path, capsys):
    png, tif = tmp_path / "cat.png", tmp_path / "cat.tif"
    common = [
        "--model",
        str(tiny_dir),
        "--sizes",
        "64",
        "128x96",
        "--slider",
        "2",
        "--steps",
        "2",
        "--seed",
        "3",
        "--quiet",
        *SMALL,
    ]
    assert main(["generate", "a cat", "-o", str(png), *common]) == 0
    assert main(["generate", "a cat", "-o", str(tif), *common, "--save-intermediate"]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    pipe = PixelsmithPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = generate_cascade(
        pipe,
        "a cat",
        [64, (128, 96)],
        [2],
        num_inference_steps=2,
        seed=3,
        progress=False,
        config=PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2),
    )
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))
    assert np.array_equal(tifffile.imread(tif), np.asarray(expected))
    assert tifffile.imread(tmp_path / "cat_64x64.tif").shape == (64, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "cat.tif", "cat_64x64.tif"]


def test_generate_errors(tiny_dir, tmp_path, capsys):
    status = main(
        [
            "generate",
            "a cat",
            "-o",
            str(tmp_path / "x.png"),
            "--model",
            str(tiny_dir),
            "--sizes",
            "64",
            "128",
            "--slider",
            "9",
            "--steps",
            "2",
            "--quiet",
            *SMALL,
        ]
    )
    assert status == 2
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: --slider[0] must be an int in [1, 2], got 9\n"
    )
    assert main(["generate", "a cat", "--sizes", "64"]) == 2  # -o missing
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: the following arguments are required: -o/--output\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert parse_size("2048") == (2048, 2048)
    assert parse_size("2048x1536") == (2048, 1536)
    assert parse_size((8, 16)) == (8, 16)
    for text in ("2048x", "8x8x8", "x", "0", "-8"):
        with pytest.raises(ValueError) as info:
            parse_size(text)
        assert str(info.value) == (
            f"expected S or HxW (height x width) in pixels, positive integers, got '{text}'"
        )


# ------------------------------------------------- interrupting and resuming across processes

# Runs the CLI in a fresh interpreter; the step callback sends the given signal to the process
# itself at (stage, step), or the 8-bit conversion of the final write does (stage -1): a
# deterministic stand-in for Ctrl-C / SIGTERM arriving at that moment.
INTERRUPTING_CLI = """
import os, signal, sys
from functools import partial
import pixelsmith.cascade as cascade
import pixelsmith.cli as cli
import pixelsmith.io as io

name, stage, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sig = getattr(signal, name)
# a background job of a non-interactive shell starts with SIGINT ignored: restore Python's
# default handler, as a terminal session has it
signal.signal(signal.SIGINT, signal.default_int_handler)

def stop(s, n, latents, plan):
    if (s, n) == (stage, step):
        os.kill(os.getpid(), sig)

if stage >= 0:
    cascade.run_cascade = partial(cascade.run_cascade, callback=stop)
else:
    real = io.to_uint8
    def to_uint8(rows):
        os.kill(os.getpid(), sig)
        return real(rows)
    io.to_uint8 = to_uint8
sys.exit(cli.main(sys.argv[4:]))
"""


def run_cli(args: list[str], hash_seed: int, interrupt: tuple[str, int, int] | None = None):
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    if interrupt is None:
        command = [sys.executable, "-m", "pixelsmith.cli", *args]
    else:
        command = [sys.executable, "-c", INTERRUPTING_CLI, *map(str, interrupt), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def generate_args(tiny_dir: Path, output: Path, prompt: str = "a cat") -> list[str]:
    return ["generate", prompt, "-o", str(output), "--model", str(tiny_dir), "--sizes", "64",
            "96x64", "--slider", "2", "--steps", "3", "--seed", "5", "--quiet", *SMALL]  # fmt: skip


def api_image(tiny_dir: Path) -> np.ndarray:
    pipe = PixelsmithPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    config = PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2)
    image = generate_cascade(pipe, "a cat", [64, (96, 64)], [2], num_inference_steps=3, seed=5,
                             progress=False, config=config)  # fmt: skip
    return np.asarray(image)


def hidden_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp*"))


# Slow lane (nightly, nox -s slow): 45 s; the default lane keeps SIGTERM, resume and restart in
# other processes.
@pytest.mark.slow
def test_ctrl_c_then_resume_in_another_process_with_another_hash_seed(tiny_dir, tmp_path):
    out = tmp_path / "cat.png"
    stopped = run_cli(generate_args(tiny_dir, out), hash_seed=1, interrupt=("SIGINT", 1, 1))
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr == (
        "pixelsmith generate: interrupted; run the same command again to resume from the last "
        "saved step\n"
    )
    assert not out.exists() and (tmp_path / "cat.png.pixelsmith" / "run.json").is_file()
    assert hidden_temporaries(tmp_path) == []
    # diffusers' _use_default_values list follows set order, i.e. the hash seed: the run identity
    # must not depend on it
    resumed = run_cli(generate_args(tiny_dir, out), hash_seed=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "pixelsmith: stage 0 (64x64) already finished: loaded from the checkpoint" in (
        resumed.stderr
    )
    assert "pixelsmith: resuming stage 1 from step 2 of 3" in resumed.stderr
    assert np.array_equal(np.asarray(Image.open(out)), api_image(tiny_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]  # checkpoint removed


def test_sigterm_during_the_final_write_leaves_no_temporary_file(tiny_dir, tmp_path):
    out = tmp_path / "cat.tif"
    stopped = run_cli(generate_args(tiny_dir, out), hash_seed=3, interrupt=("SIGTERM", -1, -1))
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr == (
        "pixelsmith generate: terminated; run the same command again to resume from the last "
        "saved step\n"
    )
    assert "Traceback" not in stopped.stderr
    assert not out.exists() and hidden_temporaries(tmp_path) == []
    resumed = run_cli(generate_args(tiny_dir, out), hash_seed=4)
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1 (96x64) already finished: loaded from the checkpoint" in resumed.stderr
    assert np.array_equal(tifffile.imread(out), api_image(tiny_dir))


def test_restart_discards_a_checkpoint_of_other_settings(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cat.png"
    stopped = run_cli(generate_args(tiny_dir, out), hash_seed=0, interrupt=("SIGINT", 1, 0))
    assert stopped.returncode == 130, stopped.stderr
    assert main(generate_args(tiny_dir, out, prompt="a dog")) == 2
    assert "(prompt differ); discard it with --restart" in capsys.readouterr().err
    assert main([*generate_args(tiny_dir, out), "--restart"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(out)), api_image(tiny_dir))


def test_discard_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is not a pixelsmith checkpoint folder \(no run.json\)"):
        CheckpointStore.discard(tmp_path / "photos")
    assert (tmp_path / "photos" / "a.png").exists()
    CheckpointStore.discard(tmp_path / "missing")  # nothing to discard


def test_public_config_drops_private_entries_and_sorts():
    config = {"b": 1, "_use_default_values": ["y", "x"], "a": [2], "_class_name": "X"}
    assert list(public_config(config).items()) == [("a", [2]), ("b", 1)]
