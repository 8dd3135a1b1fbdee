"""The small rules of issue 33: ``pixelsmith --version``, third-party progress bars and notices
off unless ``--verbose``, and empty tensors refused by the API with the argument's name."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument
from pixelsmith import generate_cascade
from pixelsmith.cli import build_parser, main
from pixelsmith.control import open_control_image


def test_version_prints_one_line_and_exits_0(capsys):
    assert main(["--version"]) == 0
    expected = (
        f"pixelsmith {metadata.version('pixelsmith')} (common-kernels "
        f"{metadata.version('common-kernels')}, torch {torch.__version__}, Python "
        f"{'.'.join(map(str, sys.version_info[:3]))})\n"
    )
    assert capsys.readouterr().out == expected
    with pytest.raises(SystemExit) as info:  # argparse's action, e.g. in --help's listing
        build_parser().parse_args(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == expected


def tiny_model(folder, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pixelsmith", "tiny-model", str(folder), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


# Slow lane (nightly, nox -s slow): two full generations (45 s); the default lane keeps the quiet-
# by-default checks of the CLI.
@pytest.mark.slow
def test_library_bars_are_off_unless_verbose(tmp_path):
    """transformers writes a "Writing model shards" bar when it saves the text encoders."""
    quiet = tiny_model(tmp_path / "a")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, f"wrote {tmp_path / 'a'}\n", "")
    verbose = tiny_model(tmp_path / "b", "--verbose")
    assert verbose.returncode == 0 and "Writing model shards" in verbose.stderr


def test_loading_bars_are_off_unless_verbose(tmp_path, capsys):
    """diffusers' "Loading pipeline components" bar; pixelsmith's own bars are --quiet's."""
    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0
    argv = ["generate", "a cat", "--model", str(tmp_path / "tiny"), "--sizes", "64", "--steps",
            "1", "--quiet", "--device", "cpu", "-o", str(tmp_path / "cat.png")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--verbose"]) == 0
    assert "Loading pipeline components" in capsys.readouterr().err


def test_empty_tensors_are_named_by_the_api(make_pipe, small_config):
    pipe = make_pipe()
    text = pipe.encode_text("a cat", guidance_scale=7.5)
    embeds, pooled = text.prompt_embeds, text.pooled  # (1, L, D), (1, P)
    width, pooled_width = embeds.shape[-1], pooled.shape[-1]
    stage = dict(slider=1, num_inference_steps=1, config=small_config, output_type="latent")
    cases = {
        "image": lambda: pipe("a cat", torch.zeros(1, 3, 0, 0), **stage),
        "guidance_latents": lambda: pipe("a cat", guidance_latents=torch.zeros(1, 4, 0, 8),
                                         **stage),
        "prompt_embeds": lambda: pipe(prompt_embeds=torch.zeros(1, 0, width),
                                      pooled_prompt_embeds=pooled, image=torch.rand(3, 64, 64),
                                      **stage),
        "pooled_prompt_embeds": lambda: generate_cascade(
            pipe, None, [64], [], num_inference_steps=1, progress=False, prompt_embeds=embeds,
            pooled_prompt_embeds=torch.zeros(1, 0)),
        "negative_prompt_embeds": lambda: generate_cascade(
            pipe, None, [64], [], num_inference_steps=1, progress=False, prompt_embeds=embeds,
            pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros(1, 77, 0),
            negative_pooled_prompt_embeds=torch.zeros(1, pooled_width)),
        "control_image": lambda: open_control_image(torch.zeros(1, 3, 0, 64)),
    }  # fmt: skip
    shapes = {
        "image": (1, 3, 0, 0),
        "guidance_latents": (1, 4, 0, 8),
        "prompt_embeds": (1, 0, width),
        "pooled_prompt_embeds": (1, 0),
        "negative_prompt_embeds": (1, 77, 0),
        "control_image": (1, 3, 0, 64),
    }
    for argument, call in cases.items():
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.argument == argument
        assert str(info.value) == f"{argument}: empty tensor {shapes[argument]}"
