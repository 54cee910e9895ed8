"""A plain-text progress line for long loops (measurement campaigns, LUT builds)."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """Progress on stderr: done/total, rate, ETA, last note.

    On a terminal the line is rewritten in place; elsewhere (CI logs, cluster
    job files) one line per update. With ``time_budget_s`` (> 0) the ETA is
    the earlier of the end of the work and the end of the budget, and says
    which (``ETA 4.2m (budget)``).
    """

    def __init__(self, total: int, enabled: bool = True, time_budget_s: float = 0.0):
        self.total = max(int(total), 1)
        self.enabled = bool(enabled)
        self.time_budget_s = float(time_budget_s)
        self.start = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def update(self, note: str = '') -> None:
        """Counts one finished item and redraws the line."""
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed * 60 if elapsed > 0 else 0.0
        eta = (self.total - self.done) / (rate / 60) if rate > 0 else float('inf')
        eta_s = f'{eta / 60:.1f}m' if math.isfinite(eta) else '?'
        if self.time_budget_s > 0 and self.time_budget_s - elapsed < eta:
            eta_s = f'{max(self.time_budget_s - elapsed, 0.0) / 60:.1f}m (budget)'
        bar = '#' * int(20 * self.done / self.total)
        line = (f'[{bar:<20}] {self.done}/{self.total} {100 * self.done / self.total:5.1f}% '
                f'{rate:.1f}/min ETA {eta_s} {note}')
        sys.stderr.write(('\r' + line) if self.tty else line + '\n')
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A message on its own line, between updates."""
        if self.enabled:
            sys.stderr.write(('\n' if self.tty else '') + text + '\n')
            sys.stderr.flush()

    def close(self) -> None:
        """Ends the line on a terminal."""
        if self.enabled and self.tty:
            sys.stderr.write('\n')
