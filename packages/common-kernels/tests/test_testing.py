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


SETUP_SCRIPT = """
import argparse, sys
from pathlib import Path
from common_kernels.runtime.bench import require_cuda
from common_kernels.runtime.cli import check_benchmark_setup

def work():
    print("measuring")

def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.py")
    parser.add_argument("--out", type=Path, default="out")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    check_benchmark_setup("bench.py", "itaclip", modules=("json",), folders={"--out": args.out})
    require_cuda(parser, args.device)
    work()
    return 0
"""


@pytest.fixture
def script(tmp_path):
    from common_kernels.runtime.testing import load_script

    path = tmp_path / "bench.py"
    path.write_text(SETUP_SCRIPT)
    return load_script(path)


def test_load_script_imports_a_file_by_its_path(script, tmp_path) -> None:
    import sys

    from common_kernels.runtime.testing import load_script

    assert script.__name__ == "script_bench" and sys.modules["script_bench"] is script
    assert load_script(tmp_path / "bench.py", "other").__name__ == "other"
    assert script.main(["--out", str(tmp_path / "new")]) == 0


def test_refusal_returns_the_line_of_a_refused_command(script, tmp_path, monkeypatch) -> None:
    from common_kernels.runtime.testing import hidden_modules, no_work, refusal

    monkeypatch.setattr(script, "work", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = refusal(script.main, ["--out", str(blocker)])
    assert err == f"bench.py: error: --out {blocker} is a file, not a folder\n"
    err = refusal(script.main, ["--out", str(blocker)], prog="bench.py")  # through sys.argv
    assert err == f"bench.py: error: --out {blocker} is a file, not a folder\n"
    with hidden_modules("json", "psutil"):
        err = refusal(script.main, ["--out", str(tmp_path / "out")])
    assert err == (
        "bench.py: error: module json is not installed; install the [bench] extra: pip install "
        '"itaclip[bench]" (from a clone: pip install ./packages/common-kernels '
        '"./packages/itaclip[bench]")\n'
    )
    with pytest.raises(AssertionError, match="started working before checking its setup"):
        script.main(["--out", str(tmp_path / "out")])  # json found again: the work starts
    assert sorted(tmp_path.iterdir()) == [tmp_path / "bench.py", blocker]


def test_refusal_fails_on_another_status(script, tmp_path) -> None:
    from common_kernels.runtime.testing import refusal

    with pytest.raises(AssertionError, match=r"exit status 0, not 2: $"):
        refusal(script.main, ["--out", str(tmp_path / "out")])
    with pytest.raises(AssertionError, match=r"(?s)exit status 2, not 1: .*unrecognized arguments"):
        refusal(script.main, ["--bad"], status=1)


def test_hidden_modules_leave_the_others_found() -> None:
    import importlib.util

    from common_kernels.runtime.testing import hidden_modules

    with hidden_modules("json"):
        assert importlib.util.find_spec("json") is None
        assert importlib.util.find_spec("csv") is not None
    assert importlib.util.find_spec("json") is not None


def test_readme_helpers(tmp_path) -> None:
    from common_kernels.runtime.testing import (
        check_script_flags,
        example_environment,
        nox_sessions,
        option_values,
        python_blocks,
        run_shell_block,
    )

    readme = tmp_path / "README.md"
    readme.write_text("```python\nx = 1\n```\n\n```bash\nls\n```\n\n```python\ny = 2\n```\n")
    assert python_blocks(readme) == ["x = 1\n", "y = 2\n"]
    commands = [["tool", "a.png", "-o", "out.png"], ["tool", "-o", "dir", "-o"]]
    assert option_values(commands, "-o") == ["out.png", "dir"]
    (tmp_path / "noxfile.py").write_text(
        "def tests(session):\n    pass\n\ndef lint(session): ...\n"
    )
    assert nox_sessions(tmp_path) == {"tests", "lint"}
    (tmp_path / "run.py").write_text('parser.add_argument("--quick")\n')
    check_script_flags(tmp_path, ["python", "run.py", "--quick", "--quick=1"])
    with pytest.raises(AssertionError, match=r"run\.py takes no --slow, --fast"):
        check_script_flags(tmp_path, ["python", "run.py", "--slow", "--quick", "--fast"])
    with pytest.raises(AssertionError, match=r"no script gone\.py"):
        check_script_flags(tmp_path, ["python", "gone.py"])
    env = example_environment(HF_HUB_OFFLINE="1")
    assert env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    done = run_shell_block("echo $OMP_NUM_THREADS > n.txt\nfalse\necho never > m.txt", tmp_path)
    assert done.returncode == 1 and (tmp_path / "n.txt").read_text() == "1\n"
    assert not (tmp_path / "m.txt").exists()  # bash -e: the block stops at a failure
    with pytest.raises(AssertionError, match=r"^exit status 1: $"):
        run_shell_block("false", tmp_path, check=True)
    with pytest.raises(AssertionError, match=r"^exit status 0: Traceback"):
        run_shell_block("echo Traceback >&2", tmp_path, check=True)
    assert run_shell_block("echo ok", tmp_path, check=True).stdout == "ok\n"


def test_assert_setup_checked_first(script, tmp_path, monkeypatch) -> None:
    from common_kernels.runtime.testing import assert_setup_checked_first, no_work

    monkeypatch.setattr(script, "work", no_work)
    options = {"flag": "--out", "modules": ("json",), "prog": "bench.py", "sys_argv": False}
    (tmp_path / "empty").mkdir()
    assert_setup_checked_first(script.main, [], tmp_path / "empty", "itaclip", **options)
    (tmp_path / "cuda").mkdir()
    assert_setup_checked_first(script.main, [], tmp_path / "cuda", "itaclip", cuda=True, **options)
    (tmp_path / "other").mkdir()
    with pytest.raises(AssertionError, match="not installed; install the \\[bench\\] extra: pip "
                       'install "pixelsmith\\[bench\\]"'):  # fmt: skip
        assert_setup_checked_first(script.main, [], tmp_path / "other", "pixelsmith", **options)
