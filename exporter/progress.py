"""Progress for long work: a live line on a terminal, a line every tenth of the way in logs."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, max(1, total), enabled
        self.done, self.start = 0, time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last_tenth = -1

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        line = f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) {elapsed:.0f}s, eta {eta:.0f}s"
        if self._tty:
            sys.stderr.write("\r" + line + ("\n" if self.done == self.total else ""))
            sys.stderr.flush()
        else:
            tenth = 10 * self.done // self.total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                print(line, file=sys.stderr, flush=True)
