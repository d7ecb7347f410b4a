"""Progress bars for every long loop.

On a terminal or in a notebook they are tqdm's own. Written to a log file or a CI console, tqdm
redraws in place with carriage returns, which turns an hour-long run's log into one unreadable
line; there each bar instead appends a plain line at most every `LOG_INTERVAL_S` seconds, each
line with a count the previous one did not have, and a bar that finishes sooner prints nothing.

Two tqdm habits break that in a log and are turned off there: its monitor thread wakes every
10 s and redraws any bar that has not printed for `maxinterval` (10 s), often with the count the
last line already showed; and closing a bar redraws its last state even when that line was just
written.
"""

from __future__ import annotations

import math
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


class _LogBar(std.tqdm):
    """A tqdm bar for a log: it draws a line only when its count moved since its last line, so
    no redraw (closing, `refresh()`, `set_postfix()`) repeats one."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None:  # a redraw of the bar (a message, e.g. '' to clear it, passes through)
            if self.n == getattr(self, "_logged_n", None):
                return True
            self._logged_n = self.n
        return super().display(msg, pos)


def quiet_transformers() -> None:
    """Turn off the bars transformers draws while it loads or saves a model ("Loading weights",
    "Writing model shards", and GGUF's "Converting and de-quantizing GGUF tensors", which
    transformers draws with plain tqdm instead of its own switchable bar) and huggingface_hub's
    download bars. Our own loops keep theirs. The command line calls this before every
    command; API users call it once if they want the same."""
    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    modeling_gguf_pytorch_utils.tqdm = transformers_logging.tqdm


def progress_bar(iterable: Iterable | None = None, **options) -> std.tqdm:
    """A tqdm bar over `iterable` (or a manual one with `total=`); `options` are tqdm's."""
    in_notebook = autonotebook.tqdm is not std.tqdm
    if not in_notebook and "file" not in options and not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_INTERVAL_S)
        options.setdefault("delay", LOG_INTERVAL_S)
        options.setdefault("miniters", 1)  # check the clock at every step, no guessed stride
        options["maxinterval"] = math.inf  # the monitor thread never forces a redraw
        options["file"] = _LineWriter(sys.stderr)
        if options.get("disable", False) is None:  # tqdm's "only on a terminal"
            options["disable"] = True
        return _LogBar(iterable, **options)
    return autonotebook.tqdm(iterable, **options)
