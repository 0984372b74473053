"""Tests for infl.data: built-in splits, user file round trips, and every DataError message."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from infl.data import (DataError, Split, check_arrays, csv_features, load_builtin, load_csv, load_file, load_idx,
                       load_npz, stored_image_shape)


# --- helpers that build small files in tmp_path ---------------------------------------


def _xy(n: int = 6, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), np.arange(n, dtype=np.int64) % 3


def _write_csv(path, text: str):
    path.write_text(text)
    return path


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(tmp_path, n: int = 5, gz: bool = False):
    """Write images (n, 3, 2) and labels (n,) as IDX files; return paths and arrays."""
    images = np.arange(n * 6, dtype=np.uint8).reshape(n, 3, 2) * 8
    labels = np.arange(n, dtype=np.uint8) % 2
    suffix = "-ubyte.gz" if gz else "-ubyte"
    opener = gzip.open if gz else open
    paths = tmp_path / f"images-idx3{suffix}", tmp_path / f"labels-idx1{suffix}"
    for path, array, magic in zip(paths, (images, labels), (0x803, 0x801)):
        with opener(path, "wb") as handle:
            handle.write(_idx_bytes(array, magic))
    return paths, images, labels


# --- built-in data sets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Split:
    return load_builtin("mnist")


def _rows(X: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in X}


def test_mnist_split_shapes_types_and_range(mnist):
    assert mnist.X_train.shape == (4000, 784) and mnist.X_test.shape == (1000, 784)
    assert mnist.y_train.shape == (4000,) and mnist.y_test.shape == (1000,)
    assert mnist.X_train.dtype == np.float64 and mnist.y_train.dtype == np.int64
    assert 0.0 <= mnist.X_train.min() and mnist.X_train.max() == 1.0
    assert mnist.image_shape == (28, 28) and mnist.classes == 10 and mnist.name == "mnist"
    assert set(np.unique(mnist.y_test)) == set(range(10))


def test_mnist_train_and_test_are_disjoint_and_cover_all(mnist):
    train, test = _rows(mnist.X_train), _rows(mnist.X_test)
    assert not train & test
    assert len(train | test) == 5000


def test_builtin_is_deterministic_under_seed(mnist):
    again, other = load_builtin("mnist", seed=0), load_builtin("mnist", seed=1)
    np.testing.assert_array_equal(again.X_train, mnist.X_train)
    np.testing.assert_array_equal(again.y_test, mnist.y_test)
    assert not np.array_equal(other.y_train, mnist.y_train)


def test_n_train_keeps_first_rows_and_same_test_set(mnist):
    small = load_builtin("mnist", n_train=100)
    np.testing.assert_array_equal(small.X_train, mnist.X_train[:100])
    np.testing.assert_array_equal(small.y_train, mnist.y_train[:100])
    np.testing.assert_array_equal(small.X_test, mnist.X_test)


def test_digits_split():
    split = load_builtin("digits", seed=3)
    assert split.X_train.shape == (1438, 64) and split.X_test.shape == (359, 64)
    assert split.X_train.min() >= 0.0 and split.X_train.max() == 1.0
    assert split.image_shape == (8, 8) and split.classes == 10 and split.name == "digits"
    assert not _rows(split.X_train) & _rows(split.X_test)


def test_split_is_frozen(mnist):
    with pytest.raises(AttributeError):
        mnist.classes = 3


def test_unknown_builtin_lists_names():
    with pytest.raises(DataError, match=r"unknown built-in data set 'cifar'.*digits, mnist"):
        load_builtin("cifar")


@pytest.mark.parametrize("n_train", [0, 1439, -1])
def test_n_train_out_of_range(n_train):
    with pytest.raises(DataError, match=rf"n_train must be between 1 and 1438 for 'digits', got {n_train}"):
        load_builtin("digits", n_train=n_train)


def test_n_train_and_seed_must_be_integers():
    with pytest.raises(DataError, match=r"n_train must be an integer or None, got 0.5"):
        load_builtin("digits", n_train=0.5)
    with pytest.raises(DataError, match=r"seed must be an integer, got 'a'"):
        load_builtin("digits", seed="a")


# --- round trips ---------------------------------------------------------------------------


def test_npz_round_trip_leaves_file_unchanged(tmp_path):
    X, y = _xy()
    path = tmp_path / "d.npz"
    np.savez(path, X=X.astype(np.float32), y=y.astype(np.int32))
    before = path.read_bytes()
    X2, y2 = load_npz(path)
    assert X2.dtype == np.float64 and y2.dtype == np.int64
    np.testing.assert_allclose(X2, X.astype(np.float32))
    np.testing.assert_array_equal(y2, y)
    assert path.read_bytes() == before


def test_npz_custom_keys_and_images_flattened(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.ones((4, 2, 3)), targets=np.array([0.0, 1.0, 1.0, 0.0]))
    X, y = load_file(path, x_key="images", y_key="targets")
    assert X.shape == (4, 6) and y.tolist() == [0, 1, 1, 0]


def test_csv_round_trip_with_label_in_middle(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,target,b\n0.5,1,2\n1e-3,0,-4\n3,2,5\n")
    X, y = load_file(path, label_column="target")
    np.testing.assert_array_equal(X, [[0.5, 2], [1e-3, -4], [3, 5]])
    assert y.tolist() == [1, 0, 2] and y.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    (images_path, labels_path), images, labels = _write_idx(tmp_path, gz=gz)
    X, y = load_file(images_path, labels_path=labels_path)
    np.testing.assert_allclose(X, images.reshape(5, 6) / 255.0)
    np.testing.assert_array_equal(y, labels)
    assert X.dtype == np.float64 and y.dtype == np.int64
    X2, _ = load_idx(images_path, labels_path)
    np.testing.assert_array_equal(X, X2)
    assert stored_image_shape(images_path) == (3, 2)


def test_images_are_known_by_how_a_file_stores_them_not_by_a_square_feature_count(tmp_path):
    y = np.arange(6) % 2
    np.savez(tmp_path / "images.npz", X=np.zeros((6, 3, 2)), y=y)
    np.savez(tmp_path / "iris_like.npz", X=np.zeros((6, 4)), y=y)  # 4 = 2 x 2 features, still a table
    assert stored_image_shape(tmp_path / "images.npz") == (3, 2)
    assert stored_image_shape(tmp_path / "iris_like.npz") is None
    for i, layout in enumerate(((6, 3, 2, 1), (6, 1, 3, 2))):  # one grey channel, last or first
        np.savez_compressed(tmp_path / f"channel{i}.npz", X=np.zeros(layout), y=y)
        assert stored_image_shape(tmp_path / f"channel{i}.npz") == (3, 2)
    np.savez(tmp_path / "rgb.npz", X=np.zeros((6, 3, 2, 3)), y=y)  # colour: drawn as a table of h * w * 3 values
    assert stored_image_shape(tmp_path / "rgb.npz") is None


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_npz, load_csv, load_file])
def test_missing_file(tmp_path, loader):
    suffix = {"load_npz": ".npz", "load_csv": ".csv", "load_file": ".npz"}[loader.__name__]
    with pytest.raises(DataError, match=r"nope.*file does not exist; check the path"):
        loader(tmp_path / f"nope{suffix}")


def test_missing_idx_labels_file(tmp_path):
    (images_path, _), _, _ = _write_idx(tmp_path)
    with pytest.raises(DataError, match=r"missing-labels.*file does not exist"):
        load_idx(images_path, tmp_path / "missing-labels")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match=r"file is a directory"):
        load_csv(tmp_path)


def test_bad_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match=r"bad\.npz: not a readable \.npz archive.*np\.savez"):
        load_npz(path)


def test_single_array_file_is_not_an_npz(tmp_path):
    path = tmp_path / "one.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.ones((3, 2)))
    with pytest.raises(DataError, match=r"one\.npz: holds one array, not an \.npz archive"):
        load_npz(path)


def test_npz_missing_key_lists_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((3, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"no array named 'X'; the file holds 'features', 'y'\. Pass x_key"):
        load_npz(path)


def test_idx_wrong_magic_and_swapped_arguments(tmp_path):
    (images_path, labels_path), _, _ = _write_idx(tmp_path)
    junk = tmp_path / "junk-ubyte"
    junk.write_bytes(struct.pack(">IIII", 0x1234, 1, 1, 1) + b"\x00")
    with pytest.raises(DataError, match=r"wrong IDX magic number 0x00001234, expected 0x00000803"):
        load_idx(junk, labels_path)
    with pytest.raises(DataError, match=r"This is an IDX labels file; check the argument order"):
        load_idx(labels_path, images_path)


def test_idx_truncated_payload_and_header(tmp_path):
    (images_path, labels_path), _, _ = _write_idx(tmp_path)
    labels_path.write_bytes(labels_path.read_bytes()[:6])
    with pytest.raises(DataError, match=r"labels-idx1-ubyte: truncated IDX header \(6 bytes, expected 8\)"):
        load_idx(images_path, labels_path)
    labels_path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"truncated IDX header \(2 bytes, expected 8\)"):
        load_idx(images_path, labels_path)
    images_path.write_bytes(images_path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"promises shape \(5, 3, 2\) \(30 bytes\) but the file holds 27"):
        load_idx(images_path, labels_path)


def test_idx_corrupt_gzip(tmp_path):
    (images_path, labels_path), _, _ = _write_idx(tmp_path, gz=True)
    labels_path.write_bytes(labels_path.read_bytes()[:12])
    with pytest.raises(DataError, match=r"labels-idx1-ubyte\.gz: cannot read the file"):
        load_idx(images_path, labels_path)


def test_length_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((4, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"d\.npz: X has 4 rows but y has 3 labels"):
        load_npz(path)


def test_idx_count_mismatch(tmp_path):
    (images_path, _), _, _ = _write_idx(tmp_path, n=5)
    (tmp_path / "short").mkdir()
    (_, labels_path), _, _ = _write_idx(tmp_path / "short", n=4)
    with pytest.raises(DataError, match=r"labels-idx1-ubyte: X has 5 rows but y has 4 labels"):
        load_idx(images_path, labels_path)


def test_empty_data(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((0, 3)), y=np.zeros(0, dtype=int))
    with pytest.raises(DataError, match=r"no data \(X has shape \(0, 3\)\)"):
        load_npz(path)
    with pytest.raises(DataError, match=r"no data"):
        load_csv(_write_csv(tmp_path / "h.csv", "a,b,label\n"))
    with pytest.raises(DataError, match=r"the file is empty; expected a header row"):
        load_csv(_write_csv(tmp_path / "e.csv", ""))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features(value):
    X, y = _xy()
    X[2, 1] = value
    with pytest.raises(DataError, match=r"NaN or inf in 1 row\(s\), first row 2; impute or drop"):
        check_arrays(X, y, "mine")


def test_non_numeric_feature_column(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,color,label\n1,2,0\n3,red,1\n")
    with pytest.raises(DataError, match=r"non-numeric column 'color' \(line 3: 'red'\); features must be numbers"):
        load_csv(path)


def test_labels_beyond_int64_are_refused_not_wrapped():
    for y in (np.array([2**64 - 1, 3], dtype=np.uint64), np.array([1e19, 2e19])):
        with pytest.raises(DataError, match="labels must fit in int64"):
            check_arrays(np.ones((2, 1)), y)
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max])
    assert check_arrays(np.ones((2, 1)), extremes)[1].tolist() == extremes.tolist()
    assert check_arrays(np.ones((2, 1)), np.array([-(2.0**63), 5.0]))[1].tolist() == [-(2**63), 5]  # in int64
    top = np.array([2**63 - 1, 2**63], dtype=np.uint64)  # the first above int64 is caught, compared exactly
    assert check_arrays(np.ones((1, 1)), top[:1], min_classes=1)[1].tolist() == [2**63 - 1]
    with pytest.raises(DataError, match="labels must fit in int64"):
        check_arrays(np.ones((2, 1)), top)


def test_non_integer_labels(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,label\n1,cat\n2,dog\n")
    with pytest.raises(DataError, match=r"non-numeric column 'label' \(line 2: 'cat'\).*labels must be integers "
                                         r"\(or class names, with text_labels=True\)"):
        load_csv(path)
    with pytest.raises(DataError, match=r"labels must be integers, got non-integer values"):
        check_arrays(np.ones((2, 1)), np.array([0.5, 1.0]))
    assert check_arrays(np.ones((2, 1)), np.array([-1, 1]))[1].tolist() == [-1, 1]  # the commands renumber them


def test_the_commands_renumber_any_integer_labels(tmp_path):
    """Labels 1 and 2 were renumbered to classes 0 and 1, but -1 and +1 were refused; both are renumbered."""
    from click.testing import CliRunner

    from infl.cli import main

    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 6)):
        y = np.where(np.arange(n) % 2, 1, -1)
        rows = "\n".join(f"{a:.3f},{b:.3f},{c}" for (a, b), c in zip(rng.normal(size=(n, 2)) + y[:, None], y))
        _write_csv(tmp_path / f"{name}.csv", f"a,b,label\n{rows}\n")
    run = CliRunner().invoke(main, ["explain", "--train", str(tmp_path / "train.csv"), "--test",
                                    str(tmp_path / "test.csv"), "--loo", "0", "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert "labels renumbered as classes 0..1 for the model (-1 -> 0, 1 -> 1)" in run.output


def test_fewer_than_two_classes(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,label\n1,4\n2,4\n")
    with pytest.raises(DataError, match=r"at least 2 classes, got only \[4\]"):
        load_csv(path)


def test_csv_without_a_header_or_with_an_unnamed_index_column_is_refused(tmp_path):
    """A header-less file was read with its first data row as column names (and --label-column 1 made that row a
    header silently); pandas' default to_csv adds an unnamed row-index column, which was used as a feature."""
    path = _write_csv(tmp_path / "d.csv", "0.5,1.5,0\n0.2,1.1,1\n")
    with pytest.raises(DataError, match=r"first row holds only numbers, so the file has no header row"):
        load_csv(path, label_column="1")
    named = _write_csv(tmp_path / "n.csv", "0,1,2\n0.5,1.5,0\n0.2,1.1,1\n")  # pandas' header for an array
    assert load_csv(named, label_column="2")[1].tolist() == [0, 1]
    path = _write_csv(tmp_path / "i.csv", ",a,label\n0,1.5,0\n1,1.1,1\n")
    with pytest.raises(DataError, match=r"column 1 has no name in the header .*to_csv\(index=False\)"):
        load_csv(path)


def test_csv_missing_label_column_lists_columns(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b,y\n1,2,0\n")
    with pytest.raises(DataError, match=r"no column 'label'; the columns are 'a', 'b', 'y'\. Every file needs its "
                                        r"labels.*Pass label_column"):
        load_csv(path)


def test_csv_line_numbers_count_blank_lines(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,label\n1,0\n\n2,1\nx,1\n")
    with pytest.raises(DataError, match=r"line 5: 'x'"):
        load_csv(path)


def test_csv_nan_and_blank_files_are_named_by_file_line(tmp_path):
    """A NaN or overflowing cell was reported by 0-based data row, missing-value words by file line."""
    path = _write_csv(tmp_path / "d.csv", "\n\na,b,label\n1,2,0\n\n3,1e400,1\n4,nan,0\n")
    with pytest.raises(DataError, match=r"column 'b' has 2 NaN or infinite value\(s\) \(first on line 6: '1e400'\)"):
        load_csv(path)
    with pytest.raises(DataError, match=r"the file is empty"):
        load_csv(_write_csv(tmp_path / "blank.csv", "\n \n,\n"))
    assert csv_features(_write_csv(tmp_path / "lead.csv", "\na,label\n1,0\n2,1\n")) == ["a"]


def test_csv_ragged_row(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,label\n1,0\n2,1,9\n")
    with pytest.raises(DataError, match=r"line 3 has 3 fields but the header has 2"):
        load_csv(path)


def test_array_shape_errors():
    with pytest.raises(DataError, match=r"X must have shape \(n, d\), got \(3,\); reshape"):
        check_arrays(np.ones(3), np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"y must have shape \(n,\), got \(3, 2\)"):
        check_arrays(np.ones((3, 1)), np.ones((3, 2)))
    with pytest.raises(DataError, match=r"X must be numeric, got dtype <U1"):
        check_arrays(np.array([["a"], ["b"]]), np.array([0, 1]))


def test_load_file_dispatch_errors(tmp_path):
    (images_path, _), _, _ = _write_idx(tmp_path)
    with pytest.raises(DataError, match=r"cannot tell the format.*expected a \.npz, \.csv"):
        load_file(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        load_file(tmp_path / "d.csv.gz")
    with pytest.raises(DataError, match=r"IDX images need their labels file; pass labels_path"):
        load_file(images_path)
    with pytest.raises(DataError, match=r"option\(s\) x_key do not apply to csv files; accepted: label_column"):
        load_file(tmp_path / "d.csv", x_key="X")
