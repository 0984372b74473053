"""Atomic, checksummed files: what the index folder is made of.

Every file is written to a temporary name in the same folder, flushed and
fsync'ed, then renamed over its final name (atomic on POSIX), and the folder
is fsync'ed: a reader sees the old file or the whole new one, never half.
Arrays are .npy files (numpy's format, readable with np.load); their
SHA-256 is kept beside them so a damaged file is detected on read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from .errors import InflError


class CorruptIndexError(InflError, OSError):
    """A file of an index folder does not match the checksum recorded when it was written."""


REPAIR = "run Index.build again with the same arguments: damaged files are found and rewritten"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Atomically give `path` the contents write(f) puts into a temporary file (fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256_file(path: Path, chunk: int = 2**24) -> str:
    """SHA-256 (hex) of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> str:
    """Write `data` to `path` atomically (temp file + fsync + rename); returns its SHA-256 (hex)."""
    _commit(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """JSON, written atomically."""
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON record at `path`; a missing or unreadable one is a CorruptIndexError naming the fix."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CorruptIndexError(f"{path} is missing or damaged ({type(error).__name__}: {error}); {REPAIR}") from error


def write_array(path: Path, a: np.ndarray) -> dict:
    """An .npy file written atomically, straight from the array (no copy in memory); returns its record
    {"file", "sha256", "shape", "dtype"}."""
    _commit(path, lambda f: np.save(f, np.ascontiguousarray(a), allow_pickle=False))
    return {"file": path.name, "sha256": _sha256_file(path), "shape": list(a.shape), "dtype": str(a.dtype)}


def read_array(folder: Path, record: dict) -> np.ndarray:
    """The array of a record written by write_array, after checking its SHA-256; CorruptIndexError if it differs."""
    path = folder / record["file"]
    try:
        digest = _sha256_file(path)
    except FileNotFoundError as exc:
        raise CorruptIndexError(f"{path} is missing although the index lists it as written; {REPAIR}") from exc
    if digest != record["sha256"]:
        raise CorruptIndexError(f"{path} is corrupted: its SHA-256 differs from the one recorded when it was "
                                "written. Run Index.build again with the same arguments: damaged files are found "
                                "and only they are recomputed")
    return np.load(path, allow_pickle=False)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed writer left behind (never a finished file)."""
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
