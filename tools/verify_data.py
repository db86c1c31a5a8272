#!/usr/bin/env python3
"""Check a task's data files on disk, one line per file: ok / missing / bad (download_dataset.sh runs it).

  tools/verify_data.py --task=hhar                      every data file of the task
  tools/verify_data.py --task=hhar --file=hhar_test_data.npy --file=hhar_test_label.npy=/tmp/y.npy
                                                        named files; NAME=PATH checks PATH as NAME
  tools/verify_data.py --task=hhar --list               print the task's data file names
  flags: --root=DIR (folder of the task folders; default: this repository),
         --checksums=FILE (a sha256sum list, paths relative to the root; takes precedence
         over the manifest), --record (add the SHA-256 of each ok file to the manifest
         <root>/<task>/SHA256SUMS where it lacks one)

A file is ok when it loads as the task's data (shape, labels, finite values, at least
one sample), its split's data and labels agree in count, and its SHA-256 matches the
checksum list's or the manifest's entry, where one exists.  Exit status: 0 when every
checked file is ok; 1 when one is missing or bad (the lines say which; stderr sums them
up in one `error: ...` line), on an error (one `error: ...` line: an unknown task, an
unreadable or malformed checksum list) or a bad flag (absl's message); 2 for stray
arguments.  The task's spec always comes from this repository (a task.py under --root
is never run).  It never imports TensorFlow: it runs once per downloaded file.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# The repository root, so that `weightsep` imports when run as tools/verify_data.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from weightsep import data, datacheck  # noqa: E402
from weightsep.cli import main_of  # noqa: E402
from weightsep.errors import WeightSepError  # noqa: E402
from weightsep.tasks import TaskSpec, list_tasks, load_task  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("task", None, "task name (one of this repository's task folders)")
flags.DEFINE_string("root", None, "folder holding the task folders (default: this repository)")
flags.DEFINE_multi_string("file", [], "a data file name in the task folder (default: all); "
                          "NAME=PATH checks PATH as NAME (e.g. a downloaded .part file)")
flags.DEFINE_string("checksums", None, "a sha256sum list ('<hex>  <task>/<file>' per line, paths relative "
                    "to --root); its sums take precedence over the manifest's")
flags.DEFINE_bool("record", False, "add the SHA-256 of every ok file to <root>/<task>/SHA256SUMS "
                  "where it lacks one")
flags.DEFINE_bool("list", False, "print the task's data file names, one per line, and check nothing")
flags.mark_flag_as_required("task")


def task_under_root(name: str, root: str | None) -> TaskSpec:
    """This repository's spec of task ``name``, with its folder under ``root`` when one is given."""
    known = list_tasks()
    if name not in known:
        raise WeightSepError(f"unknown task {name!r}; known tasks: {' '.join(known)}")
    task = load_task(name)
    if root is None:
        return task
    return dataclasses.replace(task, folder=Path(root).absolute() / name)


def requested_files(items: list[str]) -> list[tuple[str, Path | None]] | None:
    """--file values as (name, path or None); None (all files) when none is given."""
    if not items:
        return None
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not name or (sep and not path):
            raise WeightSepError(f"--file={item}: give NAME or NAME=PATH")
        pairs.append((name, Path(path) if sep else None))
    return pairs


def run() -> None:
    task = task_under_root(FLAGS.task, FLAGS.root)
    if FLAGS.list:
        print("\n".join(data.data_files(task)))
        return
    files = requested_files(FLAGS.file)
    checksums = datacheck.read_checksums(Path(FLAGS.checksums)) if FLAGS.checksums else None
    checks = datacheck.check_files(task, files, checksums=checksums, record=FLAGS.record)
    paths = dict(files or [])
    for check in checks:
        shown = f" (checked {paths[check.name]})" if paths.get(check.name) else ""
        print(f"{check.status:<8} {task.name}/{check.name}  {check.detail}{shown}")
    failed = [c for c in checks if c.status != "ok"]
    if failed:
        names = ", ".join(f"{c.name} {c.status}" for c in failed)
        raise WeightSepError(f"{len(failed)} of {len(checks)} files of task {task.name} are not ok ({names}); "
                             f"run ./download_dataset.sh {task.name}")


if __name__ == "__main__":
    app.run(main_of(run))
