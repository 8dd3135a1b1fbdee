"""common_kernels.runtime.testing.signal_while_working: a real SIGTERM from outside once the command
works, and a clear failure when it never does."""

from __future__ import annotations

import signal

import pytest

from common_kernels.runtime.testing import signal_while_working

SCRIPT = """
import sys, time
from common_kernels.runtime.cli import run_main

def work():
    print("before", flush=True)
    print("working", flush=True)
    time.sleep(120)

sys.exit(run_main("demo " + sys.argv[1], work))
"""


def test_the_signal_comes_once_the_command_works() -> None:
    stopped = signal_while_working(SCRIPT, ["run"])
    assert stopped == (143, "", "demo run: terminated\n")


def test_sigint_is_sent_when_asked() -> None:
    stopped = signal_while_working(SCRIPT, ["run"], signal_number=signal.SIGINT)
    assert stopped.returncode == 130 and stopped.stderr == "demo run: interrupted\n"


def test_a_command_that_ends_before_working_fails_with_its_stderr() -> None:
    script = "import sys; print('bad input', file=sys.stderr); sys.exit(2)"
    with pytest.raises(AssertionError, match="the command ended before it worked: bad input"):
        signal_while_working(script, [])


def test_shell_examples_with_their_modes(tmp_path) -> None:
    from common_kernels.runtime.testing import shell_commands, shell_examples

    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n```bash\ntool a --x 1   # comment\n```\n\n"
        "<!-- example: check (trains for an hour on a GPU) -->\n```bash\n"
        "OMP_NUM_THREADS=2 tool fit \\\n  --steps 5 && tool b\n```\n\n```python\nprint(1)\n```\n"
    )
    first, second = shell_examples(readme)
    assert (first.id, first.mode, first.reason) == ("README.md:3", "run", "")
    assert first.commands() == [["tool", "a", "--x", "1"]]
    assert (second.mode, second.reason) == ("check", "trains for an hour on a GPU")
    assert second.commands() == [["OMP_NUM_THREADS=2", "tool", "fit", "--steps", "5"],
                                 ["tool", "b"]]  # fmt: skip
    assert shell_commands("a 'b c'; d") == [["a", "b c"], ["d"]]
    # a quoted argument that spans lines is one word of one command
    assert shell_commands("x 1\nprintf '%s' 'one\n  two' > f.txt  # c\ny") == [
        ["x", "1"], ["printf", "%s", "one\n  two", ">", "f.txt"], ["y"]
    ]  # fmt: skip
    with pytest.raises(ValueError, match='a quote is never closed in: "a \'b\\\\nc"'):
        shell_commands("a 'b\nc")


def test_shell_example_markers_must_be_complete(tmp_path) -> None:
    from common_kernels.runtime.testing import program_words, shell_examples

    readme = tmp_path / "README.md"
    readme.write_text("<!-- example: check -->\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: 'example: check' needs \(a reason\)"):
        shell_examples(readme)
    readme.write_text("<!-- example: run -->\ntext\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: the marker is not followed by a block"):
        shell_examples(readme)
    assert program_words(["A=1", "B=2", "tool", "x=3"]) == ["tool", "x=3"]
