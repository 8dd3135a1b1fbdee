"""``--help`` gives units, ranges and defaults for every numeric flag (issue 25, item 4)."""

from __future__ import annotations

import argparse

from vitron.cli import build_parser


def subcommands(parser: argparse.ArgumentParser):
    """(name, parser) of every subcommand, ``eval`` tasks as ``eval TASK``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in action.choices.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            yield from ((f"{name} {task}", p) for task, p in nested[0].choices.items())
        else:
            yield name, sub


def numeric_flags() -> dict[tuple[str, str], str]:
    """(command, flag) -> its help as printed, for every flag that takes a number."""
    found = {}
    for command, parser in subcommands(build_parser()):
        for action in parser._actions:
            if action.type in (int, float) and action.option_strings:
                found[command, action.option_strings[-1]] = action.help % {
                    "default": action.default
                }
    return found


def test_help_gives_units_ranges_and_defaults_for_every_numeric_flag():
    found = numeric_flags()
    assert found["run", "--top-p"] == "nucleus sampling mass, in (0, 1] (default: 0.9)"
    assert found["run", "--stroke-width"] == "stroke brush width in pixels, > 0 (default: 8.0)"
    assert found["app", "--port"] == "TCP port, in [1, 65535] (default: 7860)"
    assert found["train", "--lr"] == (
        "peak learning rate (AdamW, cosine decay to 10%), > 0 (default: 2e-05)"
    )
    assert found["train", "--stage"] == "training stage, 1, 2 or 3 (required, no default)"
    assert found["train", "--num-workers"] == (
        "data-loading worker processes, in [0, CPU cores] (0: in the main process) (default: 0)"
    )
    assert (
        found["eval qa", "--limit"] == "only the first N samples, >= 1 (None: all) (default: None)"
    )
    assert found["tiny-model", "--seed"] == (
        "seed of the random weights, in [0, 4294967295] (default: 0)"
    )
    assert found["run", "--no-repeat"] == (
        "a --planner's final answer never repeats a run of N tokens, 0 (off) or >= 2 (default: 4)"
    )
    # run and chat: 5 decoding + --stroke-width + --no-repeat; app: 5 + --port + --no-repeat;
    # parse 3; train 12; tiny-model and tiny-specialists: --seed; eval: 3 x (5 decoding + --limit)
    assert len(found) == 7 + 7 + 7 + 3 + 12 + 2 + 18
    for (command, flag), text in found.items():
        assert "default" in text, (command, flag)
        assert any(mark in text for mark in ("[", ">", "(0, 1]", "1, 2 or 3")), (command, flag)


def test_every_flag_says_what_it_does():
    """``--help`` has a line for every flag (convert-official's --dtype had none)."""
    silent = [
        (command, action.option_strings[-1])
        for command, parser in subcommands(build_parser())
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert silent == []
