"""The command answers --help and a bad input without the model libraries: importing the CLI,
``--help`` and bad flags (each refused by the API's checks) leave diffusers, open_clip and
transformers unimported, in a fresh interpreter (they take seconds to import)."""

from __future__ import annotations

from PIL import Image

from common_kernels.runtime.imports import CommandRun, runs_in_fresh_interpreter

HEAVY = ("diffusers", "open_clip", "transformers")
# sd15's attention scores: 8 heads x (H x W / 64)^2 float32 values below 2^63 bytes
SD15_MOST_PX = 2**29 * 64 - 64


def test_help_and_bad_flags_load_no_model_library(model_dirs, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    extract = ["extract", str(tmp_path / "a.png"), "--model", str(model_dirs["sd15"]), "-o",
               str(tmp_path / "f.safetensors"), "--controlnet", str(model_dirs["sd15"] / "unet"),
               "--control-image", str(tmp_path / "notes.txt")]  # fmt: skip
    argvs = [
        ["--help"],
        ["extract", "--help"],
        ["app", "--port", "0"],
        ["layers", "--config", "sd15", "--text-tokens", "0"],
        ["layers", "--config", "sd15", "--image-size", "8000000"],
        extract,
        ["tiny-model", str(tmp_path / "tiny"), "--kind", "sd15", "--seed", "-1"],
    ]
    steps = runs_in_fresh_interpreter("diffeat.cli", argvs, HEAVY)
    prefix = "diffeat {}: error: "
    unreadable = f"cannot identify image file '{tmp_path / 'notes.txt'}'"
    assert steps == {
        "import": CommandRun(None, "", []),
        "--help": CommandRun(0, "", []),
        "extract --help": CommandRun(0, "", []),
        "app --port 0": CommandRun(
            2, prefix.format("app") + "--port: must be in [1, 65535], got 0\n", [],
        ),
        "layers --config sd15 --text-tokens 0": CommandRun(
            2, prefix.format("layers") + "--text-tokens must be >= 1, got 0\n", [],
        ),
        "layers --config sd15 --image-size 8000000": CommandRun(
            2,
            prefix.format("layers")
            + f"--image-size 8000000x8000000: at most {SD15_MOST_PX} px (H x W) for this model: "
            "its attention scores (8 heads x (H x W / 64)^2 float32 values) would exceed "
            "torch's largest tensor (2^63 bytes)\n",
            [],
        ),
        " ".join(extract): CommandRun(
            2,
            prefix.format("extract")
            + f"--control-image {tmp_path / 'notes.txt'} is not a readable image ({unreadable})\n",
            [],
        ),
        " ".join(argvs[-1]): CommandRun(
            2, prefix.format("tiny-model") + f"--seed must be in [0, {2**64 - 1}], got -1\n", [],
        ),
    }  # fmt: skip
    assert not (tmp_path / "tiny").exists()
