"""Progress bars in logs: lines instead of carriage-return redraws, quiet when short."""

import io
import itertools
import re

import pytest
from tqdm import std
from tqdm._monitor import TMonitor

from unlearnscope.progress import LOG_INTERVAL_S, progress_bar


def test_log_output_is_one_line_per_redraw(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    for _ in progress_bar(range(3), desc="work", mininterval=0, delay=0, miniters=1):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("work:   0%")
    assert lines[-1].startswith("work: 100%") and "3/3" in lines[-1]
    assert all(line.strip() for line in lines)


def test_short_loop_prints_nothing_to_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert sum(progress_bar(range(5), desc="quick")) == 10
    assert log.getvalue() == ""


def test_only_on_a_terminal_bar_stays_silent_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    list(progress_bar(range(3), disable=None, mininterval=0, delay=0))
    assert log.getvalue() == ""


def test_nested_bars_leave_no_cursor_moves_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    for _ in progress_bar(range(2), desc="outer", mininterval=0, delay=0, miniters=1):
        for _ in progress_bar(range(2), desc="inner", mininterval=0, delay=0, miniters=1,
                              leave=False):
            pass
    text = log.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert any(line.startswith("inner: 100%") for line in text.splitlines())
    assert text.splitlines()[-1].startswith("outer: 100%")


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class _SlowLoop:
    """What tqdm's monitor thread sleeps on, standing in for the work done meanwhile: each
    `wait(seconds)` runs that many seconds of a loop that adds `items` to the bar every
    `period` seconds."""

    def __init__(self, bar, clock: _FakeClock, period: int, items: int) -> None:
        self.bar, self.clock, self.period, self.items = bar, clock, period, items
        self.elapsed = 0

    def wait(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            if self.is_set():
                return
            self.clock.now += 1.0
            self.elapsed += 1
            if self.elapsed % self.period == 0:
                self.bar.update(self.items)

    def is_set(self) -> bool:
        return self.bar.n >= self.bar.total

    def set(self) -> None:
        self.bar.n = self.bar.total


def _bar_lines(text: str) -> list[tuple[int, int]]:
    """(items done, seconds elapsed) of each line tqdm wrote, e.g. `... 30/95 [00:30<...`."""
    found = re.findall(r"(\d+)/\d+ \[(\d\d):(\d\d)", text)
    return [(int(n), 60 * int(minutes) + int(seconds)) for n, minutes, seconds in found]


@pytest.mark.parametrize(("period", "items", "total"), [(1, 1, 95), (15, 8, 64)])
def test_slow_loop_logs_a_new_line_at_most_every_interval(monkeypatch, period, items, total):
    # one item a second for 95 s, or a batch of 8 every 15 s for 120 s, with tqdm's monitor
    # thread (it wakes every 10 s) run in step with the loop
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    clock = _FakeClock()
    monkeypatch.setattr(std, "time", clock)
    bar = progress_bar(total=total, desc="slow")
    work = _SlowLoop(bar, clock, period, items)
    monitor = TMonitor.__new__(TMonitor)
    monitor.tqdm_cls, monitor.sleep_interval = type(bar), 10
    monitor._time, monitor.was_killed = clock, work
    monitor.run()
    bar.close()
    lines = _bar_lines(log.getvalue())
    assert len(lines) == len(log.getvalue().splitlines())
    assert lines[-1] == (total, total // items * period)
    counts = [n for n, _ in lines]
    assert len(set(counts)) == len(counts), f"repeated lines: {counts}"
    times = [t for _, t in lines]
    assert times[0] >= LOG_INTERVAL_S
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the closing line may be sooner
    assert all(gap >= LOG_INTERVAL_S for gap in gaps), f"lines at {times} s"


def test_finished_bar_does_not_repeat_its_last_line(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    clock = _FakeClock()
    monkeypatch.setattr(std, "time", clock)
    with progress_bar(total=60, desc="even") as bar:
        for _ in range(60):
            clock.now += 1.0
            bar.update(1)
        bar.set_postfix(loss=0.5)  # redraws at once, with the same count
    assert _bar_lines(log.getvalue()) == [(30, 30), (60, 60)]
