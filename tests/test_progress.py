"""Progress bars in logs: lines instead of carriage-return redraws, quiet when short."""

import io

from unlearnscope.progress import progress_bar


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
