"""The command answers --help and a bad input without the model libraries: importing the CLI,
``--help`` and bad flags (each refused by the API's checks) leave diffusers, open_clip and
transformers unimported, in a fresh interpreter (they take seconds to import)."""

from __future__ import annotations

from common_kernels.runtime.imports import CommandRun, runs_in_fresh_interpreter

HEAVY = ("diffusers", "open_clip", "transformers")


def test_help_and_bad_flags_load_no_model_library(tiny_dir, tmp_path):
    generate = ["generate", "a cat", "--model", str(tiny_dir), "--sizes", "64", "-o",
                str(tmp_path / "out.png"), "--device", "cpu"]  # fmt: skip
    argvs = [
        ["--help"],
        ["generate", "--help"],
        ["app", "--port", "-1"],
        [*generate, "--steps", "0"],
        ["tiny-model", str(tmp_path / "tiny"), "--seed", "-1"],
    ]
    steps = runs_in_fresh_interpreter("pixelsmith.cli", argvs, HEAVY)
    prefix = "pixelsmith {}: error: "
    assert steps == {
        "import": CommandRun(None, "", []),
        "--help": CommandRun(0, "", []),
        "generate --help": CommandRun(0, "", []),
        "app --port -1": CommandRun(
            2, prefix.format("app") + "--port: must be in [1, 65535], got -1\n", []
        ),
        " ".join(argvs[3]): CommandRun(
            2,
            prefix.format("generate")
            + "--steps must be an int in [1, 1000] (the scheduler's training timesteps), got 0\n",
            [],
        ),
        " ".join(argvs[4]): CommandRun(
            2,
            prefix.format("tiny-model")
            + "--seed must be an int in [0, 18446744073709551615], got -1\n",
            [],
        ),
    }
    assert not (tmp_path / "tiny").exists()
