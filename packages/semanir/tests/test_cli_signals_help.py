"""SIGTERM (what a batch scheduler sends) ends ``semanir restore`` with one line and exit 143;
``--help`` gives the range and default of every numeric option (issue 25, items 4 and 8)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.testing import signal_while_working
from semanir.commands import eval_parser, restore_parser


def test_sigterm_during_restore_says_how_far_it_got_and_how_to_resume(
    tmp_path, working_script
) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    argv = ["restore", str(tmp_path / "in"), "-o", str(out), "--model", "semanir_tiny_denoise_gray"]
    stopped = signal_while_working(working_script, argv)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        f"semanir restore: terminated after 1 of 2 image(s); resume with: semanir restore "
        f"{tmp_path / 'in'} -o {out} --model semanir_tiny_denoise_gray --skip-existing"
    )
    assert stopped.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # nothing half-written


@pytest.mark.parametrize("make_parser", [restore_parser, eval_parser])
def test_every_numeric_option_says_its_range_and_default(make_parser) -> None:
    numeric = [a for a in make_parser()._actions if a.type in (int, float)]
    assert len(numeric) >= 4
    for action in numeric:
        flag, text = action.option_strings[-1], " ".join(action.help.split())
        assert "(default: " in text or "(required with --task " in text, (flag, text)
        assert any(word in text for word in ("in [", "any int", "2, 3 or 4")), (flag, text)


def test_help_of_the_options_a_user_reads_first() -> None:
    text = " ".join(restore_parser().format_help().split())
    assert "--tile-overlap PX overlap of neighbouring tiles in input pixels, in [0, --tile - 1] " \
        "(default: 32)" in text  # fmt: skip
    assert "--task {denoise,jpeg,sr} (default: denoise)" in text
    assert "on the 0-255 scale, in [0, 255]" in text
