"""Helpers for the packages' tests of their commands. Standard library only.

Every command must end on SIGTERM (what a batch scheduler sends) with one line and exit 143,
having written nothing half-way; :func:`signal_while_working` drives such a test: it runs a
script that patches the command's work to announce itself and wait, and sends the signal from
outside once the work has begun.

Every shell example of a README runs in its package's tests as written:
:func:`shell_examples` gives each fenced ``bash``/``sh``/``shell``/``console`` block with how
it is tested, :func:`example_params` gives them as pytest parameters. A block runs unless the
line before it says otherwise, in an HTML comment that readers of the rendered page do not see
and that gives the reason::

    <!-- example: check (trains for an hour on a GPU) -->

``check`` blocks are verified without being run to the end (each package's tests say how:
the command's parser, Lightning's ``--print_config``, pip's ``--dry-run``); ``slow`` blocks
(``<!-- example: slow (six commands at 1024 px: a minute and a half) -->``) run as written in
the slow lane only (``RUN_SLOW=1``, ``nox -s slow``), which keeps the default lane inside its
time budget. :func:`run_shell_block` runs a block as the README's reader would,
:func:`option_values`, :func:`check_script_flags`,
:func:`nox_sessions` and :func:`python_blocks` read what the examples name.

Every benchmark script checks its setup (optional modules, output folders) before it works:
:func:`load_script` imports a script by its path, :func:`hidden_modules` makes modules look
uninstalled, :func:`no_work` stands in for the work, and :func:`refusal` returns the one line a
refused command wrote; :func:`run_benchmark` runs a script through and reads its report.

The packages' tests share the rest: :func:`interrupted_run` (Ctrl-C while a command works),
:func:`numeric_flag_help` (what ``--help`` prints for every numeric flag),
:func:`unreachable_hub` (the network down), :func:`check_example_commands` (a README ``check``
block) and :func:`precision_variants` (the GPU lane's devices and precisions); the kernels'
tests share :class:`AttentionCase` and :func:`neighbour_lists` (one k-NN attention problem).
What a package imports is checked with :mod:`common_kernels.runtime.imports`.
The batch commands' ``--shard``/``--ray`` tests have :mod:`common_kernels.runtime.batch_testing`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, NoReturn
from unittest import mock

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
_MARKER = re.compile(r"<!--\s*example:\s*(run|check|slow)\s*(?:\((.*)\))?\s*-->")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

WORKING = "working"


class Stopped(NamedTuple):
    """What a command stopped by a signal left: its exit status and its output after the
    ``working`` line (stdout) and in all (stderr)."""

    returncode: int
    stdout: str
    stderr: str


def signal_while_working(
    script: str,
    argv: Sequence[str],
    *,
    signal_number: int = signal.SIGTERM,
    timeout: float = 120.0,
) -> Stopped:
    """Run ``python -c script ARGV...``, wait until it prints a line ``working`` on stdout,
    send it ``signal_number`` and wait for it to end.

    Args:
        script: Python source that patches the command's work to ``print("working",
            flush=True)`` and sleep, then runs the command's ``main(sys.argv[1:])``.
        argv: the command's arguments.
        signal_number: the signal (default SIGTERM).
        timeout: seconds the command may take to end after the signal.

    Raises:
        AssertionError: the command ended before printing ``working`` (its stderr is shown).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: _default_disposition(signal_number),
    )  # fmt: skip
    try:
        for line in iter(process.stdout.readline, ""):  # blocks until the command works
            if line.rstrip("\n") == WORKING:
                break
        else:
            _, err = process.communicate(timeout=timeout)
            raise AssertionError(f"the command ended before it worked: {err[-2000:]}")
        process.send_signal(signal_number)  # from outside, as a scheduler sends it
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return Stopped(process.returncode, out, err)


def _default_disposition(signal_number: int) -> None:
    """In the child before exec: ``signal_number`` handled by default, as in a terminal.

    A job started in the background by a non-interactive shell (``cmd &``, ``nohup``, CI
    runners) starts its children with SIGINT ignored, and Python then installs no
    ``KeyboardInterrupt`` handler: the command would never see the signal the test sends.
    """
    signal.signal(signal_number, signal.SIG_DFL)


_INTERRUPTING = """
import importlib, os, signal, sys, time

# a background job of a non-interactive shell starts with SIGINT ignored: restore Python's
# default handler, as a terminal session has it
signal.signal(signal.SIGINT, signal.default_int_handler)
owner = importlib.import_module({module!r})
for name in {names!r}[:-1]:
    owner = getattr(owner, name)
real = getattr(owner, {names!r}[-1])
calls = []

def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == {at_call!r}:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    return real(*args, **kwargs)

setattr(owner, {names!r}[-1], interrupted)
sys.exit(importlib.import_module({command!r}).main(sys.argv[1:]))
"""


def interrupted_run(
    command: str,
    target: str,
    argv: Sequence[str],
    *,
    at_call: int = 1,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``main(argv)`` of the module ``command`` in a fresh interpreter (one thread), which
    interrupts itself as Ctrl-C does (SIGINT) at the ``at_call``-th call of ``target``; the
    earlier calls run as they are. The output is captured.

    Args:
        command: the module whose ``main`` runs (``"itaclip.cli"``).
        target: ``"module:Attribute.path"``, the callable that is interrupted
            (``"itaclip.segmenter:Segmenter.query_logits"``).
        argv: the command's arguments.
        at_call: the call that is interrupted (1: the first).
        timeout: seconds the command may take.
    """
    module, _, path = target.partition(":")
    script = _INTERRUPTING.format(
        module=module, names=tuple(path.split(".")), at_call=at_call, command=command
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip


@dataclass(frozen=True)
class ShellExample:
    """One fenced shell block of a README.

    Args:
        readme: the file.
        line: the line number of its opening fence (1-based).
        code: the block's text.
        mode: ``"run"`` (run as written), ``"slow"`` (run as written, in the slow lane only) or
            ``"check"`` (verified without running it through).
        reason: why a ``check`` block is not run, or why a ``slow`` one is slow ("" for ``run``).
    """

    readme: Path
    line: int
    code: str
    mode: str
    reason: str

    @property
    def id(self) -> str:
        """``README.md:42``, a test id."""
        return f"{self.readme.name}:{self.line}"

    def commands(self) -> list[list[str]]:
        """The block's commands as argument lists: continuation lines joined, comments and
        blank lines left out, ``VAR=value`` prefixes kept as leading words."""
        return shell_commands(self.code)


def example_params(examples: Iterable[ShellExample], mode: str) -> list[Any]:
    """pytest parameters for the ``examples`` of one kind, with their ids: ``"run"`` gives the
    ``run`` blocks and the ``slow`` ones (marked ``slow``), ``"check"`` the ``check`` blocks.

    Args:
        examples: blocks from :func:`shell_examples`.
        mode: ``"run"`` or ``"check"``.
    """
    import pytest  # only the tests call this; the module itself needs nothing but the stdlib

    if mode not in ("run", "check"):
        raise ValueError(f"mode must be 'run' or 'check', got {mode!r}")
    kinds = ("run", "slow") if mode == "run" else ("check",)
    return [
        pytest.param(e, id=e.id, marks=[pytest.mark.slow] if e.mode == "slow" else [])
        for e in examples
        if e.mode in kinds
    ]


def shell_examples(readme: str | os.PathLike) -> list[ShellExample]:
    """Every fenced shell block of ``readme``, with the mode its marker line gives (``run``
    when there is none).

    Args:
        readme: a Markdown file.

    Raises:
        ValueError: a marker line that is not followed by a shell block, or a ``check`` without
            its reason.
    """
    readme = Path(readme)
    lines = readme.read_text(encoding="utf-8").splitlines()
    found: list[ShellExample] = []
    marker: tuple[int, str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        match = _MARKER.fullmatch(line)
        if match:
            if match[1] != "run" and not (match[2] or "").strip():
                raise ValueError(f"{readme}:{index + 1}: 'example: {match[1]}' needs (a reason)")
            marker = (index, match[1], (match[2] or "").strip())
        elif line.startswith("```"):
            language = line[3:].strip().split(" ")[0]
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            if language in SHELL_LANGUAGES:
                mode, reason = ("run", "") if marker is None else marker[1:]
                found.append(ShellExample(readme, index + 1, "\n".join(lines[index + 1 : end]),
                                          mode, reason))  # fmt: skip
            elif marker is not None:
                raise ValueError(f"{readme}:{marker[0] + 1}: a marker before a {language} block")
            marker = None
            index = end
        elif line and marker is not None:
            raise ValueError(f"{readme}:{marker[0] + 1}: the marker is not followed by a block")
        index += 1
    return found


class PackagePages(NamedTuple):
    """A package's documentation pages and their shell examples (:func:`package_pages`)."""

    package: Path  # packages/<name>
    repository: Path  # the repository's root
    readme: Path
    docs: list[Path]  # docs/<name>.md, in the order asked for
    pages: list[Path]  # the README, then the docs pages
    examples: list[ShellExample]  # every page's shell blocks, in order


def package_pages(test_file: str | os.PathLike, doc_names: Sequence[str]) -> PackagePages:
    """The README and ``docs/<name>.md`` pages of the package whose ``tests/`` hold
    ``test_file``, and their shell examples (what each package's README test reads).

    Args:
        test_file: a test module of the package (``__file__``).
        doc_names: the docs pages' names without ``.md``.
    """
    package = Path(test_file).resolve().parents[1]
    readme = package / "README.md"
    docs = [package / "docs" / f"{name}.md" for name in doc_names]
    pages = [readme, *docs]
    examples = [example for page in pages for example in shell_examples(page)]
    return PackagePages(package, package.parents[1], readme, docs, pages, examples)


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell snippet as argument lists (see :meth:`ShellExample.commands`).

    Args:
        code: shell text; ``&&`` and ``;`` separate commands too.
    """
    joined = re.sub(r"\\\n", " ", code)
    commands: list[list[str]] = []
    for line in _logical_lines(joined):
        words = _shell_words(line)
        current: list[str] = []
        for word in words:
            if word in ("&&", ";"):
                commands.append(current) if current else None
                current = []
            else:
                current.append(word)
        if current:
            commands.append(current)
    return commands


def _shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


def _logical_lines(text: str) -> list[str]:
    """``text``'s lines, a line whose quote is still open joined with the next ones (a quoted
    argument may span lines, as in ``printf '...multi-line...' > file``)."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            _shell_words(pending)
        except ValueError:  # "No closing quotation": the quote goes on
            continue
        lines.append(pending)
        pending = ""
    if pending:
        raise ValueError(f"a quote is never closed in: {pending!r}")
    return lines


def program_words(command: Sequence[str]) -> list[str]:
    """``command`` without its leading ``VAR=value`` assignments."""
    words = list(command)
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words


def python_blocks(readme: str | os.PathLike) -> list[str]:
    """The code of every fenced ``python`` block of ``readme``, in order.

    Args:
        readme: a Markdown file.
    """
    return re.findall(r"```python\n(.*?)```", Path(readme).read_text(encoding="utf-8"), re.S)


def example_environment(**extra: str) -> dict[str, str]:
    """The environment a README example runs in: this Python's scripts first on ``PATH`` (the
    package's commands), one thread per process (``OMP_NUM_THREADS=1``), then ``extra``.

    Args:
        **extra: more variables (``HF_HUB_OFFLINE="1"``).
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **extra}


def run_shell_block(
    code: str,
    cwd: str | os.PathLike,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a README shell block as written, in ``bash -e`` (the block stops at the first command
    that fails), its output captured.

    Args:
        code: the block.
        cwd: the folder it runs in.
        env: its environment (default: :func:`example_environment`).
        timeout: seconds it may take.
        check: fail unless the block exits 0 without a traceback on stderr.

    Raises:
        AssertionError: with ``check``, the block failed (the end of its stderr is shown).
    """
    done = subprocess.run(
        ["bash", "-e", "-c", code], cwd=cwd, env=example_environment() if env is None else env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and (done.returncode != 0 or "Traceback" in done.stderr):
        raise AssertionError(f"exit status {done.returncode}: {done.stderr[-3000:]}")
    return done


def option_values(commands: Iterable[Sequence[str]], flag: str) -> list[str]:
    """The word after each ``flag`` in ``commands`` (``"-o"``: what the examples write).

    Args:
        commands: argument lists (:meth:`ShellExample.commands`).
        flag: the option.
    """
    return [words[i + 1] for words in commands for i, w in enumerate(words[:-1]) if w == flag]


def check_script_flags(repository: str | os.PathLike, words: Sequence[str]) -> None:
    """``python SCRIPT FLAG...`` of a README names a script of ``repository`` whose source adds
    each flag given (as the quoted string its parser is given).

    Args:
        repository: the clone's root.
        words: the command (``["python", "packages/x/benchmarks/run.py", "--quick"]``).

    Raises:
        AssertionError: no such script, or a flag its source does not name.
    """
    script = Path(repository) / words[1]
    if not script.is_file():
        raise AssertionError(f"no script {words[1]}")
    source = script.read_text(encoding="utf-8")
    missing = [w for w in words[2:] if w.startswith("--") and f'"{w.split("=")[0]}"' not in source]
    if missing:
        raise AssertionError(f"{words[1]} takes no {', '.join(missing)}")


def nox_sessions(repository: str | os.PathLike) -> set[str]:
    """The sessions ``noxfile.py`` of ``repository`` defines.

    Args:
        repository: the clone's root.
    """
    noxfile = (Path(repository) / "noxfile.py").read_text(encoding="utf-8")
    return set(re.findall(r"^def (\w+)\(session", noxfile, re.M))


def load_script(path: str | os.PathLike, name: str | None = None) -> ModuleType:
    """Import a script (``benchmarks/run.py``) by its path, registered in ``sys.modules``.

    Args:
        path: the file.
        name: the module's name (default: ``script_<stem>``).
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up there
    spec.loader.exec_module(module)
    return module


def no_work(*args: object, **kwargs: object) -> NoReturn:
    """Stands in for a script's work in a test of its setup checks: fails when called."""
    raise AssertionError("the script started working before checking its setup")


@contextlib.contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Inside, ``importlib.util.find_spec`` reports the top-level modules ``names`` as not
    installed (how :func:`common_kernels.runtime.cli.require_modules` looks them up).

    Args:
        *names: top-level import names (``"matplotlib"``).
    """
    find_spec = importlib.util.find_spec

    def hiding(name: str, package: str | None = None) -> object:
        return None if name in names else find_spec(name, package)

    with mock.patch.object(importlib.util, "find_spec", hiding):
        yield


def refusal(
    main: Callable[..., object],
    argv: Sequence[str],
    *,
    prog: str | None = None,
    status: int = 2,
) -> str:
    """What a command wrote on stderr when it refused ``argv`` with exit status ``status``
    (raised as ``SystemExit`` or returned).

    Args:
        main: the command: called as ``main(argv)``, or with ``prog`` as ``main()`` while
            ``sys.argv`` is ``[prog, *argv]`` (a script that reads ``sys.argv``).
        argv: the arguments.
        prog: the program name, for a ``main`` without arguments.
        status: the exit status expected.

    Raises:
        AssertionError: another status; what it wrote on stderr is shown.
    """
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.ExitStack() as stack:
        if prog is not None:
            stack.enter_context(mock.patch.object(sys, "argv", [prog, *argv]))
        try:
            result = main() if prog is not None else main(list(argv))
        except SystemExit as exit_:
            result = exit_.code
    if result != status:
        raise AssertionError(f"exit status {result!r}, not {status}: {stderr.getvalue()[-2000:]}")
    return stderr.getvalue()


def assert_setup_checked_first(
    main: Callable[..., object],
    argv: Sequence[str],
    folder: str | os.PathLike,
    package: str,
    *,
    flag: str = "--results",
    modules: Sequence[str] = ("matplotlib", "psutil"),
    prog: str = "run.py",
    sys_argv: bool = True,
    cuda: bool = False,
) -> None:
    """The checks a benchmark script makes before any work (give it :func:`no_work` in place of
    its work): an output folder ``flag`` that is a file, each of ``modules`` missing, and with
    ``cuda`` a ``--device cuda`` where CUDA is not available (made so here), is one line
    ``PROG: error: ...`` and exit status 2, and nothing is written.

    Args:
        main: the script's ``main``.
        argv: its other arguments (``["--quick"]``).
        folder: an empty folder for the output paths.
        package: the distribution whose ``bench`` extra lists ``modules``.
        flag: the output-folder option.
        modules: the optional modules it checks.
        prog: the script's name in the lines.
        sys_argv: ``main`` reads ``sys.argv`` (called as ``main()``), else ``main(argv)``.
        cuda: the script takes ``--device cuda``.

    Raises:
        AssertionError: another line or status, or something written.
    """
    from common_kernels.runtime.cli import install_command  # torch: not for the module itself

    hint = f"install the [bench] extra: {install_command(package, 'bench')}"
    folder = Path(folder)
    blocker = folder / "results"
    blocker.write_text("x")
    name = prog if sys_argv else None
    expected = {(): f"{prog}: error: {flag} {blocker} is a file, not a folder\n"}
    found = {(): refusal(main, [*argv, flag, str(blocker)], prog=name)}
    for module in modules:
        expected[(module,)] = f"{prog}: error: module {module} is not installed; {hint}\n"
        with hidden_modules(module):
            found[(module,)] = refusal(main, [*argv, flag, str(folder / "out")], prog=name)
    if cuda:
        expected[("cuda",)] = (
            f"{prog}: error: --device cuda: no CUDA device is available "
            "(torch.cuda.is_available() is False); use --device cpu\n"
        )
        with mock.patch("torch.cuda.is_available", return_value=False):
            stderr = refusal(
                main, [*argv, "--device", "cuda", flag, str(folder / "out")], prog=name
            )
        found[("cuda",)] = stderr.splitlines(keepends=True)[-1]  # after argparse's usage
    if found != expected:
        raise AssertionError(f"refusals {found}, expected {expected}")
    if sorted(folder.iterdir()) != [blocker] or blocker.read_text() != "x":
        raise AssertionError(f"the refused runs wrote into {folder}")


class BenchmarkResults(NamedTuple):
    """What a benchmark run wrote: its report (``STEM.json``) and its table (``STEM.md``)."""

    report: dict[str, Any]
    table: str


def run_benchmark(
    script: str | os.PathLike, argv: Sequence[str], results: str | os.PathLike, stem: str
) -> BenchmarkResults:
    """Run ``python SCRIPT ARGV... --results RESULTS`` to its end and read the report it wrote.

    Args:
        script: the benchmark script.
        argv: its arguments but ``--results``.
        results: the output folder.
        stem: the name of the report's files (``"diffeat_bench_quick"``).

    Raises:
        subprocess.CalledProcessError: the script failed.
    """
    subprocess.run([sys.executable, str(script), *argv, "--results", str(results)], check=True)
    folder = Path(results)
    report = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    return BenchmarkResults(report, (folder / f"{stem}.md").read_text(encoding="utf-8"))


def subcommands(
    parser: argparse.ArgumentParser, words: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """The parser of every command of ``parser`` by its words (``"eval voc"`` for a subcommand
    of a subcommand); a parser without subcommands is its own only command, ``words``.

    Args:
        parser: the command line's parser.
        words: the words that name ``parser`` ("" for the program itself).
    """
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return {words: parser}
    found = {}
    for name, sub in actions[0].choices.items():
        found.update(subcommands(sub, f"{words} {name}".strip()))
    return found


def numeric_flag_help(
    parser: argparse.ArgumentParser, types: Collection[Callable] = (int, float)
) -> dict[tuple[str, str], str]:
    """What ``--help`` prints for every option of every command that takes a number:
    ``(command, flag) -> help``, ``%(default)s`` filled in as argparse fills it in; the flag is
    the option's last spelling (``--output`` of ``-o/--output``).

    Args:
        parser: the command line's parser.
        types: the ``type=`` of the options that count (add a size parser's).
    """
    return {
        (command, action.option_strings[-1]): action.help % {"default": action.default}
        for command, sub in subcommands(parser).items()
        for action in sub._actions
        if action.type in types and action.option_strings
    }


def unreachable_hub(monkeypatch: Any) -> list[tuple[tuple[str, int], float]]:
    """Take a test's machine off the network: the Hugging Face hub is asked (no
    ``HF_HUB_OFFLINE``) at its default address (no ``HF_ENDPOINT``) and every connection times
    out. Returns the list each attempt is added to, as ``((host, port), timeout)``.

    Args:
        monkeypatch: the test's ``monkeypatch`` fixture (all is undone after the test).
    """
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    tried: list[tuple[tuple[str, int], float]] = []

    def unreachable(address: tuple[str, int], timeout: float) -> NoReturn:
        tried.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr("socket.create_connection", unreachable)
    return tried


def check_example_commands(
    example: ShellExample,
    repository: str | os.PathLike,
    checks: Mapping[str, Callable[[list[str]], object]],
    *,
    unchecked: Collection[str] = (),
) -> None:
    """Check the commands of a README ``check`` block without running them, each by its
    program (:func:`program_words`): the package's own by ``checks`` (its parser, its
    ``--help``), ``python SCRIPT FLAG...`` by :func:`check_script_flags`, ``nox -s SESSION`` by
    :func:`nox_sessions`, ``pip install`` by the block's reason (resolved where the reason
    names an install); the programs ``unchecked`` pass as they are (``mkdir``).

    Args:
        example: the block.
        repository: the clone's root.
        checks: a check by program name (``{"diffeat": check_diffeat}``); it raises on a
            command the program refuses.
        unchecked: shell commands of a recipe, not the package's.

    Raises:
        AssertionError: a command no check takes, a check that fails, or a block with nothing
            checked.
    """
    checked = 0
    for command in example.commands():
        words = program_words(command)
        if words[0] in checks:
            checks[words[0]](words)
        elif words[0] == "python" and words[1].endswith(".py"):
            check_script_flags(repository, words)
        elif words[0] == "nox":
            session = words[words.index("-s") + 1]
            if session not in nox_sessions(repository):
                raise AssertionError(f"{example.id}: no nox session {session}")
        elif words[:2] == ["pip", "install"]:
            if "install" not in example.reason:
                raise AssertionError(f"{example.id}: the reason names no install: {example.reason}")
        elif words[0] in unchecked:
            continue
        else:
            raise AssertionError(f"{example.id}: no check for {words[0]}")
        checked += 1
    if not checked:
        raise AssertionError(f"{example.id}: nothing of this package to check")


PRECISIONS = (("cpu", "fp32"), ("cpu", "bf16"), ("cpu", "fp16"), ("cuda", "fp16"), ("cuda", "bf16"))


def precision_variants(dtype: Callable[[str], object] = str) -> list:
    """The GPU lane's cases, ``pytest.param(device, dtype(name), id="cpu-fp32")`` for each of
    :data:`PRECISIONS`: fp32 (the reference), bf16 and fp16 on the CPU, so that the test body
    runs where there is no GPU, and fp16 and bf16 on CUDA, marked ``gpu`` (``nox -s gpu``).

    Args:
        dtype: what the test takes for ``"fp32"``, ``"bf16"`` and ``"fp16"``
            (:func:`common_kernels.runtime.bench.torch_dtype` for torch dtypes; default: the
            names).
    """
    import pytest  # the tests' own dependency, not this module's

    return [
        pytest.param(device, dtype(name), id=f"{device}-{name}",
                     marks=pytest.mark.gpu if device == "cuda" else ())
        for device, name in PRECISIONS
    ]  # fmt: skip


@dataclass(frozen=True)
class AttentionCase:
    """One k-NN attention problem of the kernels' tests.

    Args:
        name: the test id.
        B, H, N, d, K: batch size, heads, tokens, head width, neighbours per query.
        per_head: one neighbour list per head, (B, H, N, K), instead of (B, N, K).
        duplicates: each query lists a neighbour twice.
        bias: the bias table's layout, one letter per leading dim: "H" = (H, N, N),
            "1H" = (1, H, N, N), "B1" = (B, 1, N, N), "BH" = (B, H, N, N), "11" = (1, 1, N, N);
            ``None``: no bias.
    """

    name: str
    B: int
    H: int
    N: int
    d: int
    K: int
    per_head: bool = False
    duplicates: bool = False
    bias: str | None = None

    @property
    def lead(self) -> tuple[int, ...]:
        """The neighbour lists' leading dims: (B, H, N) per head, else (B, N)."""
        return (self.B, self.H, self.N) if self.per_head else (self.B, self.N)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        """The bias table's shape (``None`` without a bias)."""
        if self.bias is None:
            return None
        sizes = {"1": 1, "B": self.B, "H": self.H}
        return (*(sizes[letter] for letter in self.bias), self.N, self.N)


def neighbour_lists(case: AttentionCase, generator: Any) -> Any:
    """Random int64 neighbour lists (``*case.lead``, K) drawn from the torch ``generator``: K
    distinct tokens per query, or with ``case.duplicates`` K random ones, the last a repeat of
    the first."""
    import torch  # the kernels' tests have it; this module stays standard library only

    if case.duplicates:
        idx = torch.randint(0, case.N, (*case.lead, case.K), generator=generator)
        idx[..., -1] = idx[..., 0]
        return idx
    return torch.rand((*case.lead, case.N), generator=generator).argsort(dim=-1)[..., : case.K]
