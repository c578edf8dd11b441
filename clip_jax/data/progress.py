"""A progress display for the long preparation steps (demo corpus, shard writing).

On a terminal one line is redrawn in place with ``\\r`` (at most every :data:`REDRAW_SECONDS`);
in a log file or a pipe a line is printed per tenth of the work, so logs stay short. It writes
to stderr by default: what a run prints on stdout stays its status lines and metrics.
"""

from __future__ import annotations

import sys
import time

REDRAW_SECONDS = 0.2  # a terminal line is redrawn at most this often
LOG_STEP_PERCENT = 10  # off a terminal: one line per this much of the work


class Progress:
    """``with Progress("demo corpus", total, "images") as p: ... p.update(n)``.

    Lines read ``demo corpus: 6,000/31,200 images (19%) 12 s, ~50 s left``; the last one, at
    :meth:`close`, gives the total time."""

    def __init__(self, label: str, total: int, unit: str = "", stream=None):
        if total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.done = 0
        self.start = time.monotonic()
        self._drawn = -float("inf")  # when the terminal line was last drawn
        self._next_log = LOG_STEP_PERCENT  # off a terminal: the next percentage to print at
        self._closed = False

    def _line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        pct = 100 * self.done // self.total if self.total else 100
        unit = f" {self.unit}" if self.unit else ""
        if final:
            return f"{self.label}: {self.done:,}{unit} in {elapsed:.1f} s"
        text = f"{self.label}: {self.done:,}/{self.total:,}{unit} ({pct}%) {elapsed:.0f} s"
        if 0 < self.done < self.total:
            text += f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._drawn >= REDRAW_SECONDS or self.done >= self.total:
                self._drawn = now
                self.stream.write("\r" + self._line() + "\033[K")
                self.stream.flush()
            return
        pct = 100 * self.done // self.total if self.total else 100
        if pct >= self._next_log and self.done < self.total:
            self._next_log = (pct // LOG_STEP_PERCENT + 1) * LOG_STEP_PERCENT
            print(self._line(), file=self.stream, flush=True)

    def print(self, message: str) -> None:
        """A line of its own (e.g. a skipped file) without breaking the progress line."""
        if self.tty:
            self.stream.write("\r\033[K")
        print(message, file=self.stream, flush=True)
        if self.tty and not self._closed:
            self.stream.write(self._line())
            self.stream.flush()

    def close(self, message: str | None = None) -> None:
        """The last line (once): ``message``, else what was done in how long."""
        if self._closed:
            return
        self._closed = True
        text = self._line(final=True) if message is None else message
        print("\r" + text + "\033[K" if self.tty else text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
