"""What every command-line script shares: an absl main that reports user errors in one line."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app

from weightsep.errors import WeightSepError


def main_of(action: Callable[[], None]) -> Callable[[list[str]], int]:
    """An absl ``main`` running ``action()``: a WeightSepError becomes one ``error: ...``
    line on stderr and exit status 1 (tracebacks are left for bugs)."""
    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            action()
        except WeightSepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return main
