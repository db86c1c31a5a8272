"""Checks of a task's data files on disk, one by one, for download_dataset.sh (via tools/verify_data.py).

``verify_file`` checks one file's content on its own, with the same checks loading does
(weightsep.data: loadable, at least one sample, sample shape, labels in range, finite
values), so that a bad download is named before training meets it.  ``check_files``
adds what a single file cannot show: its split's data and labels agree in sample count,
and its SHA-256 matches the expected one, from a user's `sha256sum` list or the task's
manifest ``<task folder>/SHA256SUMS``, which it can record.  It never imports TensorFlow:
it runs once per downloaded file.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import posixpath
import re
import stat
from pathlib import Path
from typing import Mapping, Optional, Sequence

from weightsep import atomic
# The single file readers and checks that loading uses, so that verifying a file and loading it agree.
from weightsep.data import (_check_finite, _check_sample_shape, _download_hint, _file_role, _read_idx,
                            _read_npy, _to_class_indices, data_files)
from weightsep.errors import DataError
from weightsep.tasks import SPLITS, TaskSpec

__all__ = ["CHECKSUM_MANIFEST", "Checksums", "FileCheck", "verify_file", "sha256_of", "manifest_path",
           "read_checksums", "write_checksums", "check_files"]

# The per-task manifest of SHA-256 sums, in the task folder, in `sha256sum` format
# with paths relative to the root holding the task folders ("<hex>  <task>/<file>").
CHECKSUM_MANIFEST = "SHA256SUMS"

_SHA256_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_MAX_CHECKSUM_LIST = 1 << 20  # bytes; far more than the 46 lines of the ten tasks


@dataclasses.dataclass(frozen=True)
class Checksums:
    """A list of SHA-256 sums: {path relative to the task folders' root: lowercase hex}, and its file."""

    source: Path
    sha256: dict[str, str]


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """The verdict on one data file: status "ok", "missing" or "bad", and one line saying why."""

    name: str                      # the file's name in the task folder
    status: str
    detail: str                    # ok: "<N> samples, ..."; otherwise the reason
    samples: Optional[int] = None
    sha256: Optional[str] = None
    matched: Optional[Path] = None  # the checksum list whose SHA-256 the file matched


def verify_file(task: TaskSpec, filename: str, path: Optional[Path] = None) -> int:
    """Check one data file (at ``path``, default its place in the task folder) on its own.

    Returns its sample count; raises DataError when it is missing or bad.
    Checks: loadable, at least one sample, sample shape (data) or label shape, range
    and one-hotness (labels), finite values.  Data files are memory-mapped and
    scanned in chunks.
    """
    split, index = _file_role(task, filename)
    path = Path(path) if path is not None else task.path(filename)
    if not path.is_file():
        raise DataError(f"missing data file {path}; {_download_hint(task)}")
    if task.data.format == "mnist_idx":
        array = _read_idx(task, path, 2051 if index == 0 else 2049)
    else:
        array = _read_npy(task, path)
    if array.shape[0] == 0:
        raise DataError(f"{path} holds 0 samples; {_download_hint(task)}")
    if index == 0:
        _check_sample_shape(task, tuple(array.shape[1:]), path)
        _check_finite(task, array, path)
    else:
        _to_class_indices(task, array, path)
    return int(array.shape[0])


def sha256_of(path: Path) -> tuple[str, int]:
    """Lowercase hex SHA-256 of a regular file and its size in bytes, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def manifest_path(task: TaskSpec) -> Path:
    """Where the task's recorded SHA-256 sums live: ``<task folder>/SHA256SUMS``."""
    return task.path(CHECKSUM_MANIFEST)


def read_checksums(path: Path) -> Checksums:
    """Parse a `sha256sum` list ("<64 hex>  <path>" per line; blank lines allowed); DataError if malformed.

    Paths are normalized ("./a/b" is "a/b"); a path listed twice with two sums is an error.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CHECKSUM_LIST + 1)
    except OSError as exc:
        raise DataError(f"cannot read checksum list {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CHECKSUM_LIST:
        raise DataError(f"{path} is larger than {_MAX_CHECKSUM_LIST} bytes: not a checksum list of data files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file: not a checksum list in sha256sum format") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SHA256_LINE.fullmatch(line.rstrip("\r"))
        if match is None:
            raise DataError(f"{path}, line {number}: expected '<64 hex digits>  <path relative to the "
                            f"root>' (sha256sum format); fix or delete that line")
        digest, name = match.group(1).lower(), posixpath.normpath(match.group(2))
        if sums.get(name, digest) != digest:
            raise DataError(f"{path}, line {number}: {name} is listed twice with different SHA-256; "
                            "keep one line for it")
        sums[name] = digest
    return Checksums(source=path, sha256=sums)


def write_checksums(path: Path, sums: Mapping[str, str]) -> None:
    """Write a `sha256sum` list atomically (weightsep.atomic), sorted by path; WriteError if it fails."""
    lines = []
    for name, digest in sorted(sums.items()):
        if "\n" in name or "\r" in name or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"not a checksum entry: {name!r} {digest!r}")
        lines.append(f"{digest}  {name}\n")
    atomic.write_bytes(Path(path), "".join(lines).encode("utf-8"))


def check_files(task: TaskSpec, files: Optional[Sequence[tuple[str, Optional[Path]]]] = None,
                checksums: Optional[Checksums] = None, record: bool = False) -> list[FileCheck]:
    """Check a task's data files; one FileCheck per file, in the order asked.

    files: (name, path) pairs, path None for the file's place in the task folder (a
    downloaded ``.part`` file is checked as the file it will become); default: all.
    A file is ok when ``verify_file`` passes, its split's data and labels agree in
    sample count (when both are checked), and its SHA-256 matches the expected one:
    the ``checksums`` list's entry for "<task>/<name>" first, else the manifest's.
    With ``record``, the SHA-256 of every ok file the manifest lacks is added to it.
    Raises WeightSepError for a name that is not the task's, or an unreadable manifest.
    """
    if task.data is None:
        raise DataError(f"task {task.name} declares no data files in its task.py")
    files = list(files) if files is not None else [(name, None) for name in data_files(task)]
    manifest_file = manifest_path(task)
    manifest = read_checksums(manifest_file) if manifest_file.is_file() else Checksums(manifest_file, {})
    results: dict[str, FileCheck] = {}
    for name, path in files:
        _file_role(task, name)
        path = Path(path) if path is not None else task.path(name)
        if not path.is_file():
            results[name] = FileCheck(name, "missing", f"missing data file {path}; {_download_hint(task)}")
            continue
        try:
            samples = verify_file(task, name, path)
        except DataError as exc:
            results[name] = FileCheck(name, "bad", str(exc))
            continue
        results[name] = _check_sum(task, name, path, samples, checksums, manifest)
    # Data and labels of a split must agree in sample count.
    for split in SPLITS:
        pair = task.data.split(split)
        if pair and all(f in results and results[f].status == "ok" for f in pair):
            n_data, n_labels = results[pair[0]].samples, results[pair[1]].samples
            if n_data != n_labels:
                results[pair[1]] = FileCheck(pair[1], "bad", f"{n_labels} labels but {pair[0]} has {n_data} "
                                             f"samples; {_download_hint(task)}", n_labels)
    if record:
        # Learn the sum of every ok file the manifest lacks (or holds another sum for, which
        # only happens when the user's list vouched for the file).
        new = {c.name: c for c in results.values()
               if c.status == "ok" and manifest.sha256.get(f"{task.name}/{c.name}") != c.sha256}
        if new:
            write_checksums(manifest_file, {**manifest.sha256,
                                            **{f"{task.name}/{n}": c.sha256 for n, c in new.items()}})
            for name, check in new.items():
                detail = (f"{check.detail}, recorded in {manifest_file}" if check.matched else
                          f"{check.samples} samples, SHA-256 recorded in {manifest_file}")
                results[name] = dataclasses.replace(check, detail=detail)
    return [results[name] for name, _ in files]


def _check_sum(task: TaskSpec, name: str, path: Path, samples: int,
               checksums: Optional[Checksums], manifest: Checksums) -> FileCheck:
    """The verdict on a file whose content passed: by its SHA-256 against the expected one, if any."""
    key = f"{task.name}/{name}"
    actual, _ = sha256_of(path)
    for listed in (checksums, manifest):
        if listed is not None and key in listed.sha256:
            expected = listed.sha256[key]
            if actual != expected:
                return FileCheck(name, "bad", f"SHA-256 mismatch: {path} has {actual}, but {listed.source} "
                                 f"expects {expected}", samples, actual)
            return FileCheck(name, "ok", f"{samples} samples, SHA-256 as in {listed.source}", samples, actual,
                             listed.source)
    return FileCheck(name, "ok", f"{samples} samples, SHA-256 not recorded", samples, actual)
