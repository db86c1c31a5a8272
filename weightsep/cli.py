"""What every command-line script shares: an absl main that reports user errors in one line,
and the validation of numeric flags before any work (and before TensorFlow is imported).

This module imports neither TensorFlow nor NumPy, so that a usage error, -help and the modes
that need no network answer at once.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

from absl import flags

from weightsep.errors import WeightSepError

SEED_MAX = 2**32 - 1  # NumPy's and Keras' seeds are 32-bit


class FlagError(WeightSepError):
    """A flag value out of its range: reported in one line, exit status 2, before any work."""


def main_of(action: Callable[[], None]) -> Callable[[list[str]], int]:
    """An absl ``main`` running ``action()``: a WeightSepError becomes one ``error: ...`` line
    on stderr and exit status 1 (2 for a bad flag); tracebacks are left for bugs."""
    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are written -name=value)",
                  file=sys.stderr)
            return 2
        try:
            action()
        except FlagError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except WeightSepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return main


def check_range(name: str, value, low: Optional[float] = None, high: Optional[float] = None) -> None:
    """Raise FlagError unless value (a number; None means "not given") is finite and in [low, high]."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise FlagError(f"-{name}={value}: must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            wanted = f">= {low}"
        elif low is None:
            wanted = f"<= {high}"
        else:
            wanted = f"between {low} and {high}"
        raise FlagError(f"-{name}={value}: must be {wanted}")


def check_flags(flag_values: flags.FlagValues, bounds: dict[str, tuple[Optional[float], Optional[float]]]) -> None:
    """Check every flag named in ``bounds`` ({name: (low, high)}) against its range."""
    for name, (low, high) in bounds.items():
        check_range(name, flag_values[name].value, low, high)


EXECUTION_BOUNDS = {"num_execution": (1, 1_000_000), "seed": (0, SEED_MAX), "data_seed": (0, SEED_MAX),
                    "batch_size": (1, 100_000)}


def define_execution_flags() -> None:
    """The flags ws_execution.py and baseline_execution.py share (same names, same defaults)."""
    flags.DEFINE_string("state_dir", ".", "where the separated state lives")
    flags.DEFINE_integer("num_execution", 50, "how many random tasks to switch to and run")
    flags.DEFINE_integer("seed", 0, "seed of the random task sequence (the same in both scripts)")
    flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "where the shared pool and the networks run")
    flags.DEFINE_enum("data", None, ["real", "synthetic"], "test data (default: what each task was added with)")
    flags.DEFINE_integer("data_seed", None, "seed of the synthetic data (default: the one recorded with each task)")
    flags.DEFINE_integer("batch_size", 1000, "inference batch size")
    flags.DEFINE_list("network_path", [], "folders of tasks with a custom build_model (their task.py runs)")


def execution_specs() -> dict:
    """{task name: spec} of the folders given with -network_path (empty: the registry's specs)."""
    from weightsep.tasks import load_task
    specs = [load_task(folder) for folder in flags.FLAGS.network_path]
    return {spec.name: spec for spec in specs}
