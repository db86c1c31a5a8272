"""User-facing errors.

Every problem a user can fix (a missing file, a corrupt state, a bad flag, a full
disk) is raised as a WeightSepError whose message says what is wrong, which file,
and what to run.  The CLI prints the message on one line and exits non-zero;
tracebacks are for bugs.
"""

from __future__ import annotations

import os
import shlex
import sys


class WeightSepError(Exception):
    """An error the user can act on; its message is shown as is."""


class DataError(WeightSepError):
    """A dataset file is missing, unreadable or inconsistent."""


class WriteError(WeightSepError):
    """A file could not be written (disk full, read-only, no permission); the target is unchanged."""


class StateError(WeightSepError):
    """The separated state on disk is missing, corrupt or inconsistent."""


class StateLockedError(StateError):
    """Another process holds the state's writer lock."""


class StateReadOnlyError(StateError):
    """The state directory cannot be written, so the writer lock cannot be taken; reading still works."""


# Helpers of the validations that raise these errors.

def is_int(value) -> bool:
    """A plain integer from JSON or Python (not a bool, which is an int subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """A value for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(name: str, known) -> str | None:
    """The known name a mistyped ``name`` most likely meant (None when nothing is close)."""
    import difflib
    found = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return found[0] if found else None


def command(script: str, *args: str, env: str = "") -> str:
    """A command line that runs ``script`` of this repository (a .py through this Python) with
    ``args``, as a user can paste it into a shell in the current directory: what hints print."""
    here = os.getcwd()

    def short(path: str) -> str:
        relative = os.path.relpath(path, here)
        if relative.startswith(".."):
            return path
        return relative if "/" in relative else f"./{relative}"

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = short(os.path.join(root, script))
    words = [short(sys.executable), path.removeprefix("./")] if script.endswith(".py") else [path]
    return (f"{env} " if env else "") + shlex.join([*words, *args])


def formation_hint(state_dir) -> str:
    """How to fill a state directory with tasks, as a command to paste: formation.sh (the original's)."""
    return f"{command('formation.sh', f'-state_dir={state_dir}')} (the ten tasks; TASKS=\"a b\" for some)"
