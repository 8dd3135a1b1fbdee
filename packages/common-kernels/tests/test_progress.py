"""common_kernels.runtime.progress: tqdm's bar on a terminal, plain timed lines in a log file."""

from __future__ import annotations

import io
import sys

from common_kernels.runtime.progress import progress


class FakeClock:
    """Seconds that advance by ``step`` at every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines_every_interval_and_at_the_end() -> None:
    log = io.StringIO()
    items = list(progress(range(10), desc="semanir restore", unit="images", log_every=3.0,
                          file=log, clock=FakeClock(1.0)))  # fmt: skip
    assert items == list(range(10))
    lines = log.getvalue().splitlines()
    assert lines[0] == "semanir restore: 3/10 images (30%), 3 s"  # 3 s after the start
    assert lines[-1] == "semanir restore: 10/10 images (100%), 11 s"
    assert len(lines) == 4 and "\r" not in log.getvalue()


def test_unknown_totals_count_items() -> None:
    log = io.StringIO()
    list(progress(iter("abc"), desc="eval", log_every=100.0, file=log, clock=FakeClock(1.0)))
    assert log.getvalue() == "eval: 3 it, 4 s\n"


def test_a_terminal_gets_the_bar_and_disable_shows_nothing() -> None:
    terminal = Terminal()
    assert list(progress(range(3), desc="tiles", unit="tiles", file=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    quiet = io.StringIO()
    assert list(progress(range(3), desc="tiles", disable=True, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_a_nested_progress_leaves_no_bar_and_no_final_line() -> None:
    log = io.StringIO()
    items = list(progress(range(5), desc="windows", unit="windows", log_every=2.0, leave=False,
                          file=log, clock=FakeClock(1.0)))  # fmt: skip
    assert items == list(range(5))
    assert log.getvalue() == "windows: 2/5 windows (40%), 2 s\nwindows: 4/5 windows (80%), 4 s\n"
    fast = io.StringIO()
    list(progress(range(5), desc="windows", leave=False, file=fast, clock=FakeClock(0.1)))
    assert fast.getvalue() == ""  # a fast inner loop adds nothing to the log
    terminal = Terminal()
    list(progress(range(3), desc="windows", unit="windows", leave=False, file=terminal))
    shown = terminal.getvalue()
    assert "0/3" in shown and shown.endswith("\r")  # the bar was drawn, then cleared


def test_the_last_item_is_reported_once() -> None:
    log = io.StringIO()
    list(progress(range(1), desc="itaclip segment", unit="images", log_every=1.0, file=log,
                  clock=FakeClock(5.0)))  # fmt: skip
    assert log.getvalue() == "itaclip segment: 1/1 images (100%), 5 s\n"  # once, not twice


def test_a_terminal_without_tqdm_gets_the_plain_lines(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    terminal = Terminal()
    list(progress(range(3), desc="tiles", unit="tiles", file=terminal, clock=FakeClock(1.0)))
    assert terminal.getvalue() == "tiles: 3/3 tiles (100%), 4 s\n"


def test_reporting_to_hears_every_progress_inside_shown_or_not() -> None:
    from common_kernels.runtime.progress import reporting_to

    heard = []
    with reporting_to(lambda *report: heard.append(report)):
        assert list(progress(range(3), desc="tiles", unit="tiles", disable=True)) == [0, 1, 2]
        list(progress(iter("ab"), desc="images", file=io.StringIO()))
    list(progress(range(2), desc="after", disable=True))  # outside: nobody hears
    assert heard == [
        ("tiles", 0, 3, "tiles"), ("tiles", 1, 3, "tiles"), ("tiles", 2, 3, "tiles"),
        ("tiles", 3, 3, "tiles"), ("images", 0, None, "it"), ("images", 1, None, "it"),
        ("images", 2, None, "it"),
    ]  # fmt: skip
