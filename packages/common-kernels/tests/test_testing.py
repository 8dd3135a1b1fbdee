"""common_kernels.runtime.testing: signal_while_working (a real SIGTERM from outside once the
command works, and a clear failure when it never does), the README, benchmark-script,
command-line, hub, import-graph and GPU-lane helpers."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess

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


@pytest.mark.parametrize("parent", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "background"])
def test_sigint_is_sent_when_asked(parent: signal.Handlers) -> None:
    """Ctrl-C reaches the command whether the test runs from a terminal or as a background
    job, which starts its children with SIGINT ignored (the disposition is inherited)."""
    previous = signal.signal(signal.SIGINT, parent)
    try:
        stopped = signal_while_working(SCRIPT, ["run"], signal_number=signal.SIGINT, timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
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
        "<!-- example: slow (six commands: a minute) -->\n```bash\ntool c\n```\n"
    )
    first, second, third = shell_examples(readme)
    assert (third.mode, third.reason, third.commands()) == ("slow", "six commands: a minute",
                                                           [["tool", "c"]])  # fmt: skip
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


def test_example_params_run_slow_blocks_in_the_slow_lane(tmp_path) -> None:
    from common_kernels.runtime.testing import example_params, shell_examples

    readme = tmp_path / "README.md"
    readme.write_text(
        "```bash\na\n```\n<!-- example: slow (a minute) -->\n```bash\nb\n```\n"
        "<!-- example: check (a GPU) -->\n```bash\nc\n```\n"
    )
    examples = shell_examples(readme)
    run = example_params(examples, "run")
    assert [(p.id, [m.name for m in p.marks]) for p in run] == [
        ("README.md:1", []), ("README.md:5", ["slow"])
    ]  # fmt: skip
    assert [p.values[0].code for p in example_params(examples, "check")] == ["c"]
    with pytest.raises(ValueError, match="mode must be 'run' or 'check', got 'slow'"):
        example_params(examples, "slow")


def test_shell_example_markers_must_be_complete(tmp_path) -> None:
    from common_kernels.runtime.testing import program_words, shell_examples

    readme = tmp_path / "README.md"
    readme.write_text("<!-- example: check -->\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: 'example: check' needs \(a reason\)"):
        shell_examples(readme)
    readme.write_text("<!-- example: slow -->\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: 'example: slow' needs \(a reason\)"):
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


DEMO_COMMAND = """
import sys
from common_kernels.runtime.cli import run_main

class Work:
    def step(self, n):
        print(f"step {n}", flush=True)

def main(argv):
    def work():
        for n in range(3):
            Work().step(n)

    return run_main("demo " + argv[0], work)
"""


def test_interrupted_run_sends_ctrl_c_at_the_call_asked(tmp_path, monkeypatch) -> None:
    from common_kernels.runtime.testing import interrupted_run

    (tmp_path / "demo_command.py").write_text(DEMO_COMMAND)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    done = interrupted_run("demo_command", "demo_command:Work.step", ["run"], at_call=3)
    assert (done.returncode, done.stdout, done.stderr) == (
        130, "step 0\nstep 1\n", "demo run: interrupted\n"
    )  # fmt: skip
    done = interrupted_run("demo_command", "demo_command:Work.step", ["run"])
    assert (done.returncode, done.stdout) == (130, "")


def test_run_benchmark_reads_the_report_it_wrote(tmp_path) -> None:
    from common_kernels.runtime.testing import run_benchmark

    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\nfolder = sys.argv[sys.argv.index('--results') + 1]\n"
        "open(f'{folder}/demo.json', 'w').write(json.dumps({'argv': sys.argv[1:]}))\n"
        "open(f'{folder}/demo.md', 'w').write('| a |\\n')\n"
    )
    results = run_benchmark(script, ["--quick"], tmp_path, "demo")
    assert results.report == {"argv": ["--quick", "--results", str(tmp_path)]}
    assert results.table == "| a |\n"
    with pytest.raises(subprocess.CalledProcessError):
        run_benchmark(script, ["--quick"], tmp_path / "none", "demo")


def test_numeric_flag_help_of_every_command() -> None:
    from common_kernels.runtime.testing import numeric_flag_help, subcommands

    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--top", type=int, default=1, help="not a command's")
    commands = parser.add_subparsers(dest="command")
    fit = commands.add_parser("fit")
    fit.add_argument("steps", type=int, help="positional")
    fit.add_argument("-l", "--lr", type=float, default=0.1, help="rate > 0 (default: %(default)s)")
    fit.add_argument("--name", default="x", help="a string")
    fit.add_argument("--size", type=str.lower, default="S", help="size %(default)s")
    tasks = commands.add_parser("eval").add_subparsers(dest="task")
    tasks.add_parser("voc").add_argument("--limit", type=int, help="images, >= 1")
    assert list(subcommands(parser)) == ["fit", "eval voc"]
    assert list(subcommands(fit)) == [""]
    assert numeric_flag_help(parser) == {
        ("fit", "--lr"): "rate > 0 (default: 0.1)",
        ("eval voc", "--limit"): "images, >= 1",
    }
    assert numeric_flag_help(parser, (str.lower,)) == {("fit", "--size"): "size S"}


def test_unreachable_hub_times_out_every_connection(monkeypatch) -> None:
    import socket

    from common_kernels.runtime.testing import unreachable_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    tried = unreachable_hub(monkeypatch)
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_ENDPOINT" not in os.environ
    with pytest.raises(TimeoutError, match=r"^timed out$"):
        socket.create_connection(("huggingface.co", 443), 5.0)
    assert tried == [(("huggingface.co", 443), 5.0)]


def test_check_example_commands(tmp_path) -> None:
    from common_kernels.runtime.testing import ShellExample, check_example_commands

    (tmp_path / "noxfile.py").write_text("def gpu(session):\n    pass\n")
    (tmp_path / "run.py").write_text('parser.add_argument("--quick")\n')
    seen = []

    def example(code: str, reason: str = "an install, a GPU") -> ShellExample:
        return ShellExample(tmp_path / "README.md", 3, code, "check", reason)

    block = "mkdir x\ntool fit --x 1\npython run.py --quick\nnox -s gpu\npip install tool"
    check_example_commands(example(block), tmp_path, {"tool": seen.append}, unchecked={"mkdir"})
    assert seen == [["tool", "fit", "--x", "1"]]
    refused = {
        "mkdir x": "README.md:3: no check for mkdir",
        "nox -s lint": "README.md:3: no nox session lint",
        "python run.py --slow": "run.py takes no --slow",
        "pip install tool": "README.md:3: the reason names no install: a GPU",
    }
    for code, message in refused.items():
        reason = "a GPU" if "pip" in code else "an install"
        with pytest.raises(AssertionError, match=re.escape(message)):
            check_example_commands(example(code, reason), tmp_path, {})
    with pytest.raises(AssertionError, match=r"^README\.md:3: nothing of this package to check$"):
        check_example_commands(example("mkdir x"), tmp_path, {}, unchecked={"mkdir"})


def test_precision_variants() -> None:
    from common_kernels.runtime.testing import precision_variants

    variants = precision_variants()
    assert [(v.id, v.values) for v in variants] == [
        ("cpu-fp32", ("cpu", "fp32")), ("cpu-bf16", ("cpu", "bf16")),
        ("cpu-fp16", ("cpu", "fp16")), ("cuda-fp16", ("cuda", "fp16")),
        ("cuda-bf16", ("cuda", "bf16")),
    ]  # fmt: skip
    assert [[m.name for m in v.marks] for v in variants] == [[], [], [], ["gpu"], ["gpu"]]
    assert precision_variants(str.upper)[0].values == ("cpu", "FP32")
