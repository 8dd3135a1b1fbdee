"""common_kernels.runtime.cli: the exit statuses and one-line messages of every command (through a
tiny
fake command), argparse errors, one-line messages and the ``--device`` check."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from common_kernels.runtime.cli import (
    Parser,
    UsageError,
    WorkError,
    available_devices,
    check_device,
    command_prog,
    one_line,
    run_main,
)


class FakeFailure(Exception):
    """An error of the fake command's own that counts as a failure while working."""


def fake_main(argv: Sequence[str], action: Callable[[], int | None] = lambda: None) -> int:
    """``fake echo [--count N]`` / ``fake nest deep``: parses, then runs ``action``."""
    parser = Parser(prog="fake")
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo")
    echo.add_argument("--count", type=int, default=1)
    nest = commands.add_parser("nest").add_subparsers(dest="sub", required=True)
    nest.add_parser("deep").add_argument("--size", type=int, required=True)

    def run() -> int | None:
        parser.parse_args(argv)
        return action()

    prog = command_prog("fake", argv, ("echo", "nest"))
    return run_main(prog, run, usage_errors=(FileNotFoundError,), work_errors=(FakeFailure,))


def raising(error: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise error

    return action


def outcome(capsys: pytest.CaptureFixture[str], status: int) -> tuple[int, str, str]:
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_success_returns_the_command_status(capsys):
    assert outcome(capsys, fake_main(["echo"])) == (0, "", "")
    assert outcome(capsys, fake_main(["echo"], lambda: 3)) == (3, "", "")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["echo", "--count", "x"], "fake echo: error: argument --count: invalid int value: 'x'"),
        (["echo", "--bogus"], "fake echo: error: unrecognized arguments: --bogus"),  # top parser
        (["nest", "deep"], "fake nest deep: error: the following arguments are required: --size"),
        ([], "fake: error: the following arguments are required: command"),
        (
            ["bogus"],
            "fake: error: argument command: invalid choice: 'bogus' (choose from echo, nest)",
        ),
    ],
)
def test_argparse_errors_are_one_line_exit_2(argv, line, capsys):
    status, out, err = outcome(capsys, fake_main(argv, raising(AssertionError("ran"))))
    assert (status, out) == (2, "")
    assert err.replace("'echo', 'nest'", "echo, nest") == f"{line}\n"  # Python < 3.12 quotes


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (UsageError("--count must be >= 1,\n  got 0"), 2, "error: --count must be >= 1, got 0"),
        (ValueError("a box off the image"), 2, "error: a box off the image"),
        (FileNotFoundError("in.png does not exist"), 2, "error: in.png does not exist"),
        (OSError(28, "No space left on device"), 1, "error: [Errno 28] No space left on device"),
        (WorkError("cannot load m:\nno such\tfile"), 1, "error: cannot load m: no such file"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory."), 1, "error: CUDA out of memory."),
        (FakeFailure(), 1, "error: FakeFailure"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_errors_map_to_exit_status_and_one_line(error, status, message, capsys):
    line = f"fake echo: {message}\n"
    assert outcome(capsys, fake_main(["echo"], raising(error))) == (status, "", line)


@pytest.mark.parametrize(
    ("prog", "named"), [("fake echo sub", "fake echo sub"), ("other", "fake echo")]
)
def test_usage_error_names_its_own_prog_when_it_is_a_subcommand(prog, named, capsys):
    status = fake_main(["echo"], raising(UsageError("bad", prog)))
    assert outcome(capsys, status) == (2, "", f"{named}: error: bad\n")


def test_other_exceptions_propagate(capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        fake_main(["echo"], raising(RuntimeError("a bug")))
    assert capsys.readouterr().err == ""


def test_interrupt_hint_and_describe(capsys):
    hint = "; run it again to resume"
    status = run_main("fake echo", raising(KeyboardInterrupt()), interrupt_hint=hint)
    assert outcome(capsys, status) == (130, "", f"fake echo: interrupted{hint}\n")
    status = run_main("fake echo", raising(ValueError("x")), describe=lambda e: f"<{e}>")
    assert outcome(capsys, status) == (2, "", "fake echo: error: <x>\n")


def test_parser_error_raises_usage_error_with_its_prog():
    with pytest.raises(UsageError, match=r"^unrecognized arguments: --bogus$") as caught:
        Parser(prog="fake").parse_args(["--bogus"])
    assert caught.value.prog == "fake"
    assert isinstance(caught.value, ValueError)
    assert UsageError("x").prog is None


def test_one_line_collapses_newlines_and_spaces():
    assert one_line(ValueError("first line\n  second\t\tline \n")) == "first line second line"
    assert one_line(WorkError()) == "WorkError"
    assert one_line(KeyError("k")) == "'k'"


def test_command_prog():
    assert command_prog("fake", ["echo", "--count", "2"], ("echo",)) == "fake echo"
    assert command_prog("fake", ["--help"], ("echo",)) == "fake"
    assert command_prog("fake", [], ("echo",)) == "fake"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, bool], None]:
    """Sets the machine's devices: ``machine(cuda_count, mps)``."""

    def set_devices(cuda_count: int, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_devices


@pytest.mark.parametrize(
    ("cuda_count", "mps", "value", "device"),
    [
        (0, False, None, "cpu"),
        (1, False, None, "cuda"),
        (0, False, "cpu", "cpu"),
        (2, False, "cuda", "cuda"),
        (2, False, "cuda:1", "cuda:1"),
        (0, True, "mps", "mps"),
    ],
)
def test_check_device_accepts(machine, cuda_count, mps, value, device):
    machine(cuda_count, mps)
    assert check_device(value) == torch.device(device)


@pytest.mark.parametrize(
    ("cuda_count", "mps", "value", "message"),
    [
        (0, False, "cuda", "--device cuda: no CUDA device is available (available: cpu)"),
        (0, True, "cuda:1", "--device cuda:1: no CUDA device is available (available: cpu, mps)"),
        (2, False, "cuda:2", "--device cuda:2: only 2 CUDA device(s) present (available: cpu, "
                             "cuda:0, cuda:1)"),
        (1, False, "mps", "--device mps: no MPS device is available (available: cpu, cuda:0)"),
        (0, False, "tpu", "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)"),
        (0, False, "cuda:x", "--device cuda:x: expected cpu, cuda, cuda:N or mps (available: cpu)"),
        (0, False, "meta", "--device meta: expected cpu, cuda, cuda:N or mps (available: cpu)"),
    ],
)  # fmt: skip
def test_check_device_refuses_with_the_available_devices(machine, cuda_count, mps, value, message):
    machine(cuda_count, mps)
    with pytest.raises(UsageError) as caught:
        check_device(value)
    assert str(caught.value) == message


def test_check_device_names_the_flag(machine):
    machine(0, False)
    with pytest.raises(UsageError, match=r"^--text-device cuda: no CUDA device is available"):
        check_device("cuda", flag="--text-device")


def test_available_devices(machine):
    machine(2, True)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]
    machine(0, False)
    assert available_devices() == ["cpu"]


def test_output_path_checks_name_the_flag_and_the_blocking_path(tmp_path, monkeypatch) -> None:
    from common_kernels.runtime.cli import check_file_writable, check_folder_writable

    (tmp_path / "file.txt").write_text("x")
    check_folder_writable(tmp_path / "new" / "deeper", "-o")  # creatable: fine
    check_file_writable(tmp_path / "new" / "out.png", "-o")
    cases = {
        "-o {t}/file.txt is a file, not a folder": lambda: check_folder_writable(
            tmp_path / "file.txt", "-o"
        ),
        "-o {t}/file.txt/sub: cannot create it, {t}/file.txt is a file": lambda: (
            check_folder_writable(tmp_path / "file.txt" / "sub", "-o")
        ),
        "--json {t} is a folder, not a file": lambda: check_file_writable(tmp_path, "--json"),
        "--json {t}/file.txt/r.json: cannot create its folder, {t}/file.txt is a file": lambda: (
            check_file_writable(tmp_path / "file.txt" / "r.json", "--json")
        ),
    }
    for message, check in cases.items():
        with pytest.raises(UsageError) as caught:
            check()
        assert str(caught.value) == message.format(t=tmp_path)
    before = tmp_path.stat().st_mtime_ns
    check_file_writable(tmp_path / "out.png", "-o")
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # the write probe left nothing
    assert tmp_path.stat().st_mtime_ns == before  # not even the folder's time
    # a folder whose permission bits allow writing, but which takes no file (root on /proc):
    # refused before any work, not after the model ran (diffeat extract -o /proc/x.safetensors)
    with pytest.raises(UsageError) as caught:
        check_file_writable(Path("/proc/x.safetensors"), "-o", (".safetensors",))
    assert str(caught.value).startswith("-o /proc/x.safetensors: cannot write to /proc (")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests run as root
    with pytest.raises(UsageError) as caught:
        check_folder_writable(tmp_path / "new", "-o")
    assert str(caught.value) == f"-o {tmp_path}/new: cannot write to {tmp_path} (permission denied)"


MISSING = "common_kernels_test_no_such_module"  # a name no environment has


def test_require_modules_names_the_missing_modules_and_the_install_command() -> None:
    from common_kernels.runtime.cli import install_command, require_modules

    require_modules(["json", "torch"], "semanir")  # installed: fine
    assert install_command("itaclip", "bench") == (
        'pip install "itaclip[bench]" '
        '(from a clone: pip install ./packages/common-kernels "./packages/itaclip[bench]")'
    )
    assert install_command("common-kernels", "bench") == (
        'pip install "common-kernels[bench]" '
        '(from a clone: pip install "./packages/common-kernels[bench]")'
    )
    with pytest.raises(UsageError) as caught:
        require_modules(["json", MISSING], "semanir")
    assert str(caught.value) == (
        f"module {MISSING} is not installed; install the [bench] extra: "
        'pip install "semanir[bench]" '
        '(from a clone: pip install ./packages/common-kernels "./packages/semanir[bench]")'
    )
    with pytest.raises(UsageError) as caught:
        require_modules([MISSING, "json", f"{MISSING}_2"], "common-kernels", extra="plots")
    assert str(caught.value) == (
        f"modules {MISSING}, {MISSING}_2 are not installed; install the [plots] extra: "
        'pip install "common-kernels[plots]" '
        '(from a clone: pip install "./packages/common-kernels[plots]")'
    )


def test_require_modules_imports_nothing(tmp_path, monkeypatch) -> None:
    import importlib.util
    import sys

    from common_kernels.runtime.cli import require_modules

    (tmp_path / "cktest_side_effect.py").write_text("raise AssertionError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    require_modules(["cktest_side_effect"], "semanir")  # found, not run
    assert "cktest_side_effect" not in sys.modules
    looked_up = []  # the lookup goes through importlib.util.find_spec (what tests patch)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: looked_up.append(name))
    with pytest.raises(UsageError, match=r"^modules matplotlib, psutil are not installed"):
        require_modules(["matplotlib", "psutil"], "itaclip")
    assert looked_up == ["matplotlib", "psutil"]


def benchmark_setup(capsys: pytest.CaptureFixture[str], **options) -> tuple[int, str, str]:
    """``check_benchmark_setup("run.py", "itaclip", **options)``: (exit status, out, err);
    status 0 when it returned."""
    from common_kernels.runtime.cli import check_benchmark_setup

    try:
        check_benchmark_setup("run.py", "itaclip", **options)
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    return outcome(capsys, status)


def test_check_benchmark_setup_passes_and_creates_nothing(tmp_path, capsys) -> None:
    folders = {"--results": tmp_path / "new" / "results", "--workdir": None}
    files = {"--out": tmp_path / "plots" / "a.png", "--json": None}
    status = benchmark_setup(capsys, modules=["json"], folders=folders, files=files)
    assert status == (0, "", "")
    assert list(tmp_path.iterdir()) == []  # checked, not created


def test_check_benchmark_setup_exits_2_with_one_line(tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    hint = (
        'pip install "itaclip[bench]" '
        '(from a clone: pip install ./packages/common-kernels "./packages/itaclip[bench]")'
    )
    cases = [
        (
            {"modules": ["json", MISSING], "folders": {"--results": blocker}},  # modules first
            f"module {MISSING} is not installed; install the [bench] extra: {hint}",
        ),
        ({"folders": {"--results": blocker}}, f"--results {blocker} is a file, not a folder"),
        (
            {"folders": {"--results": tmp_path, "--workdir": blocker / "tmp"}},
            f"--workdir {blocker}/tmp: cannot create it, {blocker} is a file",
        ),
        ({"files": {"--out": tmp_path}}, f"--out {tmp_path} is a folder, not a file"),
        (
            {"files": {"--out": tmp_path / "a.png", "--json": blocker / "a.json"}},
            f"--json {blocker}/a.json: cannot create its folder, {blocker} is a file",
        ),
    ]
    for options, message in cases:
        assert benchmark_setup(capsys, **options) == (2, "", f"run.py: error: {message}\n")
    assert sorted(tmp_path.iterdir()) == [blocker]


def assert_permission_refusals(locked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both kinds of output under ``locked`` are refused, naming the flag and the folder."""
    message = f"--results {locked}/out: cannot write to {locked} (permission denied)"
    status = benchmark_setup(capsys, folders={"--results": locked / "out"})
    assert status == (2, "", f"run.py: error: {message}\n")
    message = f"--out {locked}/a.png: cannot write to {locked} (permission denied)"
    status = benchmark_setup(capsys, files={"--out": locked / "a.png"})
    assert status == (2, "", f"run.py: error: {message}\n")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="os.access grants root write access to any folder")
def test_check_benchmark_setup_refuses_a_read_only_folder(tmp_path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_permission_refusals(locked, capsys)
    finally:
        locked.chmod(0o700)


def test_check_benchmark_setup_refuses_a_folder_os_access_denies(
    tmp_path, capsys, monkeypatch
) -> None:
    """The same refusals as root, where a 0o500 folder is writable: os.access says no."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    assert_permission_refusals(locked, capsys)


def test_sigterm_while_working_is_one_line_and_exit_143(capsys):
    """A real SIGTERM to this process while ``run`` works: cleanup runs, one line, status 143,
    and the handler that was there before is back afterwards."""
    import os
    import signal

    cleaned = []

    def work() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler raises at the next bytecode
                pass
            raise AssertionError("SIGTERM did not stop the command")
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    status = run_main("fake echo", work, interrupt_hint="; run it again to resume")
    assert outcome(capsys, status) == (143, "", "fake echo: terminated; run it again to resume\n")
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_loader_workers_leave_the_signals_to_the_main_process():
    """A worker that ran the helper survives the SIGINT and SIGTERM sent to the whole job, and
    the main process still gets them (as ``KeyboardInterrupt`` and its own handler)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal, sys, time
        import torch
        from torch.utils.data import DataLoader
        from common_kernels.runtime.cli import leave_signals_to_the_main_process

        class Slow(torch.utils.data.Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                if i == 1:  # the job gets both signals while a worker loads
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        os.killpg(os.getpgrp(), sig)
                    time.sleep(0.3)
                return torch.tensor([i])

        got = []
        signal.signal(signal.SIGTERM, lambda *_: got.append("TERM"))
        signal.signal(signal.SIGINT, lambda *_: got.append("INT"))
        loader = DataLoader(Slow(), batch_size=1, num_workers=1,
                            worker_init_fn=leave_signals_to_the_main_process)
        print([int(b) for b in loader], sorted(got))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0, 1, 2, 3] ['INT', 'TERM']"


def test_invalid_argument_is_printed_with_the_commands_flags(capsys):
    from common_kernels.runtime.errors import InvalidArgument

    def fail() -> None:
        raise InvalidArgument("output", "x.png is an input; pass {in_place}", mentions={
            "in_place": "in_place=True"})  # fmt: skip

    with pytest.raises(InvalidArgument) as raised:
        fail()
    error = raised.value
    assert str(error) == "output: x.png is an input; pass in_place=True"
    flags = {"output": "-o/--output", "in_place": "--in-place"}
    assert run_main("tool run", fail, flags=flags) == 2
    assert capsys.readouterr().err == (
        "tool run: error: -o/--output: x.png is an input; pass --in-place\n"
    )
    assert run_main("tool run", fail) == 2  # no table: the Python names
    assert (
        capsys.readouterr().err
        == "tool run: error: output: x.png is an input; pass in_place=True\n"
    )


def test_the_interrupt_hint_is_asked_when_the_signal_comes(capsys):
    done = []

    def work() -> None:
        done.append(1)
        raise KeyboardInterrupt

    assert run_main("tool", work, interrupt_hint=lambda: f" after {len(done)} image(s)") == 130
    assert capsys.readouterr().err == "tool: interrupted after 1 image(s)\n"


def test_version_line_names_the_package_and_what_it_runs_on():
    import sys
    from importlib import metadata

    from common_kernels.runtime.cli import version_line

    python = ".".join(map(str, sys.version_info[:3]))
    assert version_line("common-kernels", "common-kernels") == (
        f"common-kernels {metadata.version('common-kernels')} (torch {torch.__version__}, "
        f"Python {python})"
    )
    assert version_line("x", "no-such-dist").startswith(
        f"x not installed (common-kernels {metadata.version('common-kernels')}, torch "
    )
