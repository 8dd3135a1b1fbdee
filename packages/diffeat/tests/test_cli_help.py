"""``--help`` gives units, ranges and defaults for every numeric flag (issue 25, item 4)."""

from __future__ import annotations

import argparse

from common_kernels.runtime.cli import size_type
from diffeat.cli import build_parser


def numeric_flags() -> dict[tuple[str, str], str]:
    """(command, flag) -> its help as printed, for every flag that takes a number or a size."""
    commands = next(
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )  # fmt: skip
    found = {}
    for command, parser in commands.choices.items():
        for action in parser._actions:
            if action.type in (int, float, size_type):
                found[(command, action.option_strings[-1])] = action.help % {
                    "default": action.default
                }
    return found


def test_help_gives_units_ranges_and_defaults_for_every_numeric_flag():
    found = numeric_flags()
    assert found["extract", "--timestep"] == (
        "diffusion timestep in steps, in [0, num_train_timesteps - 1] (SD: [0, 999]) (default: 50)"
    )
    assert found["extract", "--seed"] == (
        "seed of the latent sample and noise, in [0, 2**64 - 1] (default: 0)"
    )
    assert found["probe", "--batch-size"] == "images per U-Net pass, >= 1 (default: 1)"
    assert found["tiny-model", "--seed"] == (
        "seed of the random weights, in [0, 2**64 - 1] (default: 0)"
    )
    assert found["extract", "--sigma"] == (
        "FLUX/SD3: noise level in [0, 1], x_t = (1 - sigma) x_0 + sigma eps (default: timestep / "
        "1000)"
    )
    assert found["extract", "--ray-batch"] == (
        "--ray: inputs per actor call, in [1, the inputs] (default: 8)"
    )
    # layers 2, extract/probe/pca 9 each, --resize, --size, tiny 1, app 4, generate-features 4;
    # extract's --check-shards, --ray-workers, --ray-gpus, --ray-batch
    assert len(found) == 44
    for (command, flag), text in found.items():
        assert "default: " in text, (command, flag)
        assert "[" in text or ">=" in text or "finite" in text or "multiples" in text, flag
        if action_is_size(flag):
            assert " px" in text, (command, flag)


def action_is_size(flag: str) -> bool:
    return flag in ("--image-size", "--resize", "--size")
