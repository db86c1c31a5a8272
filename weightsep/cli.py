"""What every command-line script shares: an absl main that reports user errors in one line
(and exits quietly when its output pipe closes), the validation of numeric flags before any
work (and before TensorFlow is imported), the flags of the method's settings (one definition
for WeightSeparation.py and demo.py) and the arguments of corrected command lines.

This module imports neither TensorFlow nor NumPy, so that a usage error, -help and the modes
that need no network answer at once.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Callable, Optional

from absl import flags

from weightsep.errors import WeightSepError, command  # noqa: F401  (command: the scripts' hints)
from weightsep.limits import DEFAULT_GROUP_SIZE, DEFAULT_INT8_PAGES, MAX_NUM_PAGES, MAX_PAGE_SIZE, PAGE_DTYPES

SEED_MAX = 2**32 - 1  # NumPy's and Keras' seeds are 32-bit


class FlagError(WeightSepError):
    """A flag value out of its range: reported in one line, exit status 2, before any work."""


def main_of(action: Callable[[], None]) -> Callable[[list[str]], int]:
    """An absl ``main`` running ``action()``: a WeightSepError becomes one ``error: ...`` line
    on stderr and exit status 1 (2 for a bad flag), and so does an OSError (naming its path);
    tracebacks are left for bugs.  When the reader of stdout goes away (``| head``), the script
    stops quietly with status 0."""
    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are written -name=value)",
                  file=sys.stderr)
            return 2
        try:
            action()
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            return 0
        except FlagError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except WeightSepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            # An OS error on a user-given path (a file where a folder is expected, a name too
            # long, a full disk) that no closer handler turned into a WeightSepError.
            from weightsep.atomic import os_error_line
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            return 1
        return 0
    return main


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


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


# --- the method's settings (pipeline.Options), one flag definition for every script ---------

METHOD_FLAGS = ("page_size", "num_pages", "page_dtype", "group_size", "int8_pages", "transpose", "alpha", "margin", "target_accuracy",
                "use_exclusive_page", "matching", "init", "loss", "select_on", "validation_split", "lamb", "batch_size",
                "lr", "fisher_samples", "seed", "data")
METHOD_BOUNDS = {
    "transpose": (0, 1), "alpha": (0.0, 1.0), "margin": (0.0, 1.0), "target_accuracy": (0.0, 1.0),
    "use_exclusive_page": (0, 1), "page_size": (1, MAX_PAGE_SIZE), "num_pages": (1, MAX_NUM_PAGES), "lamb": (0.0, 1e6),
    "batch_size": (1, 100_000), "lr": (1e-12, 1e6), "fisher_samples": (1, 100_000), "seed": (0, SEED_MAX),
    "validation_split": (0.0, 0.9), "group_size": (2, MAX_PAGE_SIZE), "int8_pages": (0.0, 1.0),
}
# Flags whose value, when given, must agree with an existing state (or with how a task was added).
EXPLICIT = ("page_size", "num_pages", "page_dtype", "transpose", "margin")


def define_method_flags(defaults: Optional[dict] = None, skip: tuple[str, ...] = ()) -> None:
    """Define the flags of the method's settings (the fields of pipeline.Options, the original's
    names); ``defaults`` overrides some defaults (the demo's), ``skip`` leaves some out."""
    d = {"page_size": 512, "num_pages": 128, "page_dtype": "float32", "group_size": DEFAULT_GROUP_SIZE,
         "int8_pages": DEFAULT_INT8_PAGES, "transpose": 0, "alpha": 0.5, "margin": 0.1,
         "target_accuracy": None, "use_exclusive_page": 1, "matching": "greedy", "init": "none",
         "loss": "batch_softmax", "select_on": "test", "validation_split": None, "lamb": 0.1, "batch_size": 100, "lr": 1e-3,
         "fisher_samples": 50, "seed": 0, "data": None, **(defaults or {})}
    define = {
        "page_size": lambda: flags.DEFINE_integer(
            "page_size", d["page_size"], "weights per page (state-wide, chosen at the first -mode=a)"),
        "num_pages": lambda: flags.DEFINE_integer("num_pages", d["num_pages"], "pages in the shared pool (state-wide)"),
        "page_dtype": lambda: flags.DEFINE_enum(
            "page_dtype", d["page_dtype"], list(PAGE_DTYPES),
            "storage of weight-pages (state-wide): float32 (the paper), int8 (one scale per page) or int4 (float16 "
            "scales per -group_size weights, the -int8_pages share of pages with the most Fisher information int8)"),
        "group_size": lambda: flags.DEFINE_integer(
            "group_size", d["group_size"], "int4 pages: at most this many weights per float16 scale (state-wide)"),
        "int8_pages": lambda: flags.DEFINE_float(
            "int8_pages", d["int8_pages"], "-mode=quantize to int4: the share of pages (most summed Fisher information "
            "first) stored as int8"),
        "transpose": lambda: flags.DEFINE_integer(
            "transpose", d["transpose"], "1: the network vector in microcontroller layout (conv [out, in, kh, kw], "
            "dense [out, in]); chosen when the state is created"),
        "alpha": lambda: flags.DEFINE_float("alpha", d["alpha"], "alpha of the alpha-loss used for the target "
                                            "performance rate"),
        "margin": lambda: flags.DEFINE_float("margin", d["margin"], "margin of the exclusive-page walk"),
        "target_accuracy": lambda: flags.DEFINE_float("target_accuracy", d["target_accuracy"],
                                                      "target accuracy; without it the TPR is 1.0"),
        "use_exclusive_page": lambda: flags.DEFINE_integer(
            "use_exclusive_page", d["use_exclusive_page"], "0: no exclusive pages unless the pool is too small"),
        "matching": lambda: flags.DEFINE_enum(
            "matching", d["matching"], ["greedy", "optimal"],
            "page matching: greedy (the original's PageAlloc) or optimal (exact per level)"),
        "init": lambda: flags.DEFINE_enum("init", d["init"], ["none", "merge"],
                                          "pool values at add: none (original) or Fisher-weighted merge"),
        "loss": lambda: flags.DEFINE_enum(
            "loss", d["loss"], ["batch_softmax", "per_example"],
            "training cross-entropy: the original graphs' batch-normalized softmax, or per example"),
        "select_on": lambda: flags.DEFINE_enum(
            "select_on", d["select_on"], ["test", "validation"],
            "model selection of training: the original's test split (before each evaluated step's update), "
            "or a validation split"),
        "validation_split": lambda: flags.DEFINE_float(
            "validation_split", d["validation_split"], "fraction of the train files cut off as a validation split for "
            "a task without validation files (default: none, as the original, except 0.1 for -select_on=validation "
            "and -mode=pretrain)"),
        "lamb": lambda: flags.DEFINE_float("lamb", d["lamb"], "weight of the overlapping loss"),
        "batch_size": lambda: flags.DEFINE_integer("batch_size", d["batch_size"], "training batch size"),
        "lr": lambda: flags.DEFINE_float("lr", d["lr"], "Adam learning rate"),
        "fisher_samples": lambda: flags.DEFINE_integer("fisher_samples", d["fisher_samples"],
                                                       "examples drawn for the Fisher information"),
        "seed": lambda: flags.DEFINE_integer(
            "seed", d["seed"], "random seed (batches, Fisher samples, pool init; synthetic data of new tasks)"),
        "data": lambda: flags.DEFINE_enum("data", d["data"], ["real", "synthetic"],
                                          "dataset kind (default: real, or what the task was added with)"),
    }
    for name in METHOD_FLAGS:
        if name not in skip:
            define[name]()


def method_options(flag_values: flags.FlagValues, **fixed):
    """pipeline.Options from the method flags (those defined), ``fixed`` overriding them.  Imports
    TensorFlow (through the pipeline): call it when the work starts."""
    from weightsep.pipeline import Options
    values = {name: flag_values[name].value for name in METHOD_FLAGS if name in flag_values}
    for name in ("transpose", "use_exclusive_page"):
        if name in values:
            values[name] = bool(values[name])
    explicit = frozenset(name for name in EXPLICIT if name in flag_values and flag_values[name].present)
    return Options(**{**values, **fixed}, explicit=explicit)


def flag_args(flag_values: flags.FlagValues, names, **changed) -> list[str]:
    """The -name=value arguments of the given flags that the user set, with ``changed`` values
    replacing (or adding) some: the arguments of a corrected command line."""
    args = []
    for name in names:
        if name in changed:
            continue
        flag = flag_values[name]
        if flag.present:
            args.append("-" + flag.serialize().lstrip("-"))
    args += [f"-{name}={value}" for name, value in changed.items()]
    return args
