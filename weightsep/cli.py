"""What every command-line script shares: an absl main that reports user errors in one line."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags

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


def define_execution_flags() -> None:
    """The flags ws_execution.py and baseline_execution.py share (same names, same defaults)."""
    flags.DEFINE_string("state_dir", ".", "where the separated state lives")
    flags.DEFINE_integer("num_execution", 50, "how many random tasks to switch to and run")
    flags.DEFINE_integer("seed", 0, "seed of the random task sequence (the same in both scripts)")
    flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "where the shared pool and the networks run")
    flags.DEFINE_enum("data", None, ["real", "synthetic"], "test data (default: what each task was added with)")
    flags.DEFINE_integer("data_seed", 0, "seed of the synthetic data (the -seed the state was built with)")
    flags.DEFINE_integer("batch_size", 1000, "inference batch size")
