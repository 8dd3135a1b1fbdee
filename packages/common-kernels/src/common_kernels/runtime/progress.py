"""Progress for long jobs: a bar on a terminal, plain lines in a log file.

A tqdm bar redraws itself with carriage returns, which a log file (a batch job's stdout, a CI
log) keeps as one endless line. :func:`progress` shows tqdm's bar only when the stream is a
terminal, and otherwise writes a plain line every ``log_every`` seconds and one at the end:
``semanir restore: 12/40 images (30%), 41 s``. A progress nested in another (the windows of one
image inside a loop over images) passes ``leave=False``: its bar is removed when done, and in a
log it writes no line at the end, so a fast inner loop adds nothing to the log. Standard library
only; tqdm is used when it is installed (every method package depends on it).

:func:`reporting_to` hands every progress made inside it, shown or not, to a callback as well
(a web page's progress bar over the tiles of the image it restores).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")
# told (desc, done, total, unit) before the first item and after each one
Listener = Callable[[str, int, "int | None", str], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar(
    "progress_listener", default=None
)


@contextlib.contextmanager
def reporting_to(listener: Listener) -> Iterator[None]:
    """Inside, every :func:`progress` (in this thread or task) also tells ``listener``
    ``(desc, done, total, unit)`` before its first item and after each one, even when it shows
    nothing (``disable=True``).

    Args:
        listener: the callback (a page's progress bar: ``gr.Progress``).
    """
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    log_every: float = 10.0,
    disable: bool = False,
    leave: bool = True,
    file: IO[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Iterate over ``iterable``, showing progress on ``file`` (default: stderr).

    Args:
        iterable: the work items.
        desc: what is counted, first on each line (e.g. the command).
        total: the number of items (default: ``len(iterable)`` when it has one).
        unit: the items' name (``"images"``).
        log_every: seconds between two plain lines when ``file`` is not a terminal.
        disable: show nothing (``-q``).
        leave: keep the finished bar on a terminal and write the final line in a log; False for
            a progress nested in another (the bar is removed, no final line).
        file: the stream (default: ``sys.stderr`` at call time).
        clock: seconds, monotonic (tests pass a fake one).
    """
    stream = sys.stderr if file is None else file
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    listener = _LISTENER.get()
    if listener is not None:
        iterable = _reported(iterable, listener, desc, total, unit)
    if disable:
        yield from iterable
        return
    if is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(iterable, desc=desc, total=total, unit=f" {unit}", leave=leave, file=stream)
            yield from bar
            return
    yield from _logged(iterable, desc, total, unit, log_every, stream, clock, leave)


def _reported(
    iterable: Iterable[T], listener: Listener, desc: str, total: int | None, unit: str
) -> Iterator[T]:
    listener(desc, 0, total, unit)
    for done, item in enumerate(iterable, 1):
        yield item
        listener(desc, done, total, unit)


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (where a tqdm bar belongs) rather than a file or pipe."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _logged(
    iterable: Iterable[T],
    desc: str,
    total: int | None,
    unit: str,
    log_every: float,
    stream: IO[str],
    clock: Callable[[], float],
    leave: bool,
) -> Iterator[T]:
    """Plain progress lines: one every ``log_every`` seconds, one when done (if ``leave``, and
    unless the last timed line already counted every item)."""
    start = last = clock()
    done = shown = 0
    for item in iterable:
        yield item
        done += 1
        now = clock()
        if now - last >= log_every:
            print(_line(desc, done, total, unit, now - start), file=stream, flush=True)
            last, shown = now, done
    if leave and shown != done:
        print(_line(desc, done, total, unit, clock() - start), file=stream, flush=True)


def _line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    count = f"{done}/{total}" if total else f"{done}"
    share = f" ({100 * done // total}%)" if total else ""
    return f"{desc}: {count} {unit}{share}, {elapsed:.0f} s"
