"""Progress of long work: where it is, how long it took so far and about how long is left.

``Progress`` is one line rewritten in place on a terminal, and plain lines (at most one every
``every`` seconds) in a log or a pipe.  ``RoundReport`` is -mode=o's: one line after each round
of the optimization (between the original's per-step lines) and a closing summary.
No TensorFlow, no NumPy: the clock and the output stream are parameters, so tests drive them.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def duration(seconds: float) -> str:
    """A duration for people: 42 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def remaining(elapsed: float, done: float, total: float) -> Optional[float]:
    """Seconds left if the rest goes at the pace so far (None before anything is done)."""
    if done <= 0:
        return None
    return elapsed / done * max(0.0, total - done)


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 round', '2 rounds'; ``many`` for a plural that is not word + s ('passes')."""
    return f"{count} {word}" if count == 1 else f"{count} {many or word + 's'}"


class Progress:
    """A count of ``total`` units of work, shown as ``label: done/total (note), elapsed, about R left``."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.label, self.every, self.clock = total, label, every, clock
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self._last_shown: Optional[float] = None
        self._width = 0

    def line(self, done: int, note: str = "") -> str:
        elapsed = self.clock() - self.start
        left = remaining(elapsed, done, self.total)
        text = f"{self.label}: {done}/{self.total}"
        if note:
            text += f" ({note})"
        text += f", {duration(elapsed)} elapsed"
        if left is not None and done < self.total:
            text += f", about {duration(left)} left"
        return text

    def update(self, done: int, note: str = "") -> None:
        """Show the count: always on a terminal (in place); in a log when ``every`` seconds passed."""
        now = self.clock()
        if not self.tty and self._last_shown is not None and now - self._last_shown < self.every:
            return
        self._last_shown = now
        text = self.line(done, note)
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the in-place line (a terminal) so that what follows starts on a new line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class RoundReport:
    """-mode=o's progress: after each round, ``round r/N`` with the mean accuracy, the time so far
    and about how long is left; at the end, one summary line."""

    def __init__(self, rounds: int, passes: int, iters: int, num_tasks: int, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.rounds, self.passes, self.iters, self.num_tasks = rounds, passes, iters, num_tasks
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.start = clock()

    def round_done(self, r: int, rounds: int, accuracies: dict) -> None:
        elapsed = self.clock() - self.start
        mean = sum(accuracies.values()) / max(1, len(accuracies))
        left = remaining(elapsed, r, rounds)
        tail = f", about {duration(left)} left" if r < rounds else ""
        self.stream.write(f"round {r}/{rounds} done: mean test accuracy {mean:.6f}; {duration(elapsed)} "
                          f"elapsed{tail}\n")
        self.stream.flush()

    def finish(self, history: list) -> None:
        elapsed = self.clock() - self.start
        means = [sum(h.values()) / max(1, len(h)) for h in history]
        change = ""
        if len(means) == 1:
            change = f"; mean test accuracy {means[0]:.6f}"
        elif means:
            change = f"; mean test accuracy {means[0]:.6f} after round 1, {means[-1]:.6f} after round {len(means)}"
        self.stream.write(f"optimization done: {plural(self.rounds, 'round')} x {plural(self.passes, 'pass', 'passes')} x "
                          f"{plural(self.iters, 'step')} of {plural(self.num_tasks, 'task')} in "
                          f"{duration(elapsed)}{change}\n")
        self.stream.flush()
