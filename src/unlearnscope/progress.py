"""Progress bars for every long loop.

On a terminal or in a notebook they are tqdm's own. Written to a log file or a CI console, tqdm
redraws in place with carriage returns, which turns an hour-long run's log into one unreadable
line; there each bar instead appends a plain line at most every `LOG_INTERVAL_S` seconds, and a
bar that finishes sooner prints nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from tqdm import autonotebook, std

LOG_INTERVAL_S = 30.0
# the cursor moves tqdm writes to stack nested bars on a terminal
CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LineWriter:
    """A stream for tqdm that turns each in-place redraw into one line."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = CURSOR_MOVES.sub("", text).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, **options) -> std.tqdm:
    """A tqdm bar over `iterable` (or a manual one with `total=`); `options` are tqdm's."""
    in_notebook = autonotebook.tqdm is not std.tqdm
    if not in_notebook and "file" not in options and not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_INTERVAL_S)
        options.setdefault("delay", LOG_INTERVAL_S)
        options["file"] = _LineWriter(sys.stderr)
        if options.get("disable", False) is None:  # tqdm's "only on a terminal"
            options["disable"] = True
    return autonotebook.tqdm(iterable, **options)
