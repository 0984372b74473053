"""Inputs and models beyond the usual: index masks, NumPy and tensor scalars, narrow integer labels,
layers that break per-example gradients, tied weights, and the CLI's test files."""

import warnings

import click
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import infl
from infl.cli import main
from infl.data import DataError, csv_features, load_csv
from infl.errors import InputError
from infl.testing import dense_scores


def influence(problem, **kw):
    return infl.Influence(problem.model, problem.loss_fn, l2=problem.l2, **kw).fit(problem.train)


def test_a_loss_that_mixes_the_examples_of_a_batch_is_refused(logreg):
    class Centred(nn.Module):  # subtracts half the batch mean: one example's output depends on the others
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(logreg.X.shape[1], 3)

        def forward(self, x):
            h = self.a(x)
            return h - 0.5 * h.mean(0)

    with pytest.raises(InputError, match="depends on the other examples in its batch.*x - x.mean"):
        infl.Influence(Centred().double(), logreg.loss_fn, l2=logreg.l2).fit(logreg.train)


def test_batchnorm_without_running_statistics_is_refused(logreg):
    model = nn.Sequential(nn.Linear(logreg.X.shape[1], 4), nn.BatchNorm1d(4, track_running_stats=False),
                          nn.Linear(4, 3)).double().eval()
    with pytest.raises(InputError, match="track_running_stats=False.*statistics of each batch"):
        infl.Influence(model, logreg.loss_fn, l2=0.01).fit(logreg.train)


def test_a_boolean_mask_selects_rows_and_float_indices_are_refused(logreg):
    inf = influence(logreg)
    mask = torch.zeros(len(logreg.y), dtype=torch.bool)
    mask[[10, 20]] = True
    torch.testing.assert_close(inf.up_params(mask), inf.up_params([10, 20]))
    torch.testing.assert_close(inf.up_params(mask.numpy()), inf.up_params([10, 20]))
    with pytest.raises(InputError, match="integers"):
        inf.up_params([2.9])
    with pytest.raises(InputError, match="one entry per training point"):
        inf.up_params(mask[:5])


def test_numbers_may_be_numpy_or_tensor_scalars_but_not_bools(logreg):
    ref = influence(logreg, damping=0.01, batch_size=16).scores(logreg.test)
    for l2, damping, batch in ((np.float32(logreg.l2), np.float64(0.01), np.int64(16)),
                               (torch.tensor(logreg.l2), torch.tensor(0.01), 16)):
        inf = infl.Influence(logreg.model, logreg.loss_fn, l2=l2, damping=damping, batch_size=batch)
        torch.testing.assert_close(inf.fit(logreg.train).scores(logreg.test), ref, rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match="not a bool"):
        infl.Influence(logreg.model, logreg.loss_fn, damping=True)


def test_arrays_with_negative_strides_are_read(logreg):
    """X[::-1] and friends are valid arrays (torch.as_tensor refuses negative strides; they were refused)."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    Xt, yt = logreg.Xt.numpy(), logreg.yt.numpy()
    flipped = inf.scores((Xt[::-1], yt[::-1]))
    assert flipped.flip(0).allclose(inf.scores((Xt, yt)), rtol=1e-12, atol=0)


def test_narrow_integer_labels_give_the_same_scores(logreg):
    ref = influence(logreg).scores(logreg.test)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit((logreg.X, logreg.y.to(dtype)))
        torch.testing.assert_close(inf.scores((logreg.Xt, logreg.yt.to(dtype))), ref)


def test_a_loss_that_squeezes_every_dimension_gets_the_fix(logreg):
    model = nn.Linear(logreg.X.shape[1], 1).double()
    bce = lambda out, t: F.binary_cross_entropy_with_logits(out.squeeze(), t, reduction="none")  # noqa: E731
    with pytest.raises(InputError, match=r"squeeze\(1\)"):
        infl.Influence(model, bce, l2=0.01).fit((logreg.X, (logreg.y == 1).double()))


def test_integer_inputs_for_a_float_model_get_the_fix(logreg):
    with pytest.raises(InputError, match="pass float inputs"):
        infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit((logreg.X.round().long(), logreg.y))


def test_a_random_forward_pass_is_refused_with_the_fix(logreg):
    class Noisy(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, training=True)

    model = nn.Sequential(nn.Linear(logreg.X.shape[1], 3), Noisy()).double().eval()
    with pytest.raises(InputError, match="random numbers.*model.eval"):
        infl.Influence(model, logreg.loss_fn, l2=0.01).fit(logreg.train)


class _Recurrent(nn.Module):
    """Token ids -> GRU -> logits; explicit_h0 passes the initial state built from the input."""

    def __init__(self, explicit_h0: bool):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(12, 4), nn.GRU(4, 5, batch_first=True), nn.Linear(5, 3)
        self.explicit_h0 = explicit_h0

    def forward(self, x):
        e = self.emb(x)
        h, _ = self.rnn(e, e.new_zeros(1, e.shape[0], 5)) if self.explicit_h0 else self.rnn(e)
        return self.head(h[:, -1])


def test_a_recurrent_layer_with_its_default_state_gets_the_fix(logreg):
    torch.manual_seed(0)
    X, y = torch.randint(0, 12, (20, 6)), torch.randint(0, 3, (20,))
    with pytest.raises(InputError, match=r"recurrent layer .* pass one explicitly"):
        infl.Influence(_Recurrent(False).double(), logreg.loss_fn, l2=0.01, damping=1.0).fit((X, y))
    with pytest.warns(UserWarning, match="stationary"):  # the fix works (the model is untrained)
        inf = infl.Influence(_Recurrent(True).double(), logreg.loss_fn, l2=0.01, damping=1.0).fit((X, y))
    assert inf.scores((X[:2], y[:2])).shape == (2, 20)


def test_pert_loss_refuses_token_ids():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(6, 2)).double()
    X, y = torch.randint(0, 10, (20, 2)), torch.randint(0, 2, (20,))
    inf = infl.Influence(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), l2=0.1, damping=1.0)
    with pytest.warns(UserWarning, match="stationary"):
        inf.fit((X, y))
    with pytest.raises(InputError, match="token ids"):
        inf.pert_loss((X[:1], y[:1]), [0])


def test_kronecker_factors_leave_tied_weights_to_the_diagonal(logreg):
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    model = nn.Sequential(nn.Linear(logreg.X.shape[1], 3), nn.Tanh(), a, nn.Tanh(), b).double()
    inf = infl.Influence(model, logreg.loss_fn, l2=0.01, curvature="gauss-newton", solver=infl.EKFAC(others="error"))
    with pytest.raises(InputError, match="2.weight"), pytest.warns(UserWarning, match="stationary"):
        inf.fit(logreg.train)


def test_dense_reference_is_right_through_layernorm(logreg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(logreg.X.shape[1], 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)).double()
    inf = infl.Influence(model, logreg.loss_fn, l2=0.01, damping=5.0)
    with pytest.warns(UserWarning, match="stationary"):
        inf.fit(logreg.train)
    ref = dense_scores(model, logreg.loss_fn, logreg.train, logreg.test, 0.01, damping=5.0)
    torch.testing.assert_close(inf.scores(logreg.test), ref, rtol=1e-8, atol=1e-10)


def _csv(path, names, X, y):
    """A CSV of X's columns a, b, c, d and the labels, in the column order `names`."""
    column = {"a": 0, "b": 1, "c": 2, "d": 3, "zz": 3}
    cells = lambda i: [str(int(y[i])) if c == "label" else f"{X[i, column[c]]:.6f}" for c in names]  # noqa: E731
    path.write_text("\n".join([",".join(names)] + [",".join(cells(i)) for i in range(len(y))]) + "\n")
    return path


def test_cli_matches_csv_columns_by_name_and_explains_a_single_test_point(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 2
    X[:, 0] += 2 * y
    train = _csv(tmp_path / "train.csv", ["a", "b", "c", "d", "label"], X, y)
    test = _csv(tmp_path / "test.csv", ["a", "b", "c", "d", "label"], X[:1], y[:1])
    shuffled = _csv(tmp_path / "shuffled.csv", ["label", "d", "b", "c", "a"], X[:1], y[:1])
    features = csv_features(train)
    np.testing.assert_array_equal(load_csv(shuffled, min_classes=1, features=features)[0],
                                  load_csv(test, min_classes=1, features=features)[0])
    outputs = []
    for name, file in (("o1", test), ("o2", shuffled)):  # one test point, one class: explained, not refused
        result = CliRunner().invoke(main, ["explain", "--train", str(train), "--test", str(file), "--loo", "0",
                                           "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout.split("test point 0:")[1].split("report:")[0])
    assert outputs[0] == outputs[1]
    other = _csv(tmp_path / "other.csv", ["a", "b", "c", "zz", "label"], X[:1], y[:1])
    with pytest.raises(DataError, match="missing 'd'; extra 'zz'"):
        load_csv(other, features=features)


def _npz(path, X, y):
    np.savez(path, X=X, y=y)
    return path


def test_cli_renumbers_labels_to_the_training_classes_and_refuses_unseen_test_labels(tmp_path):
    from infl.cli import load_data

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 5)), np.where(np.arange(30) % 2, 7000, 3)
    split = load_data(None, _npz(tmp_path / "tr.npz", X, y), _npz(tmp_path / "te.npz", X[:4], y[:4]), None, ())
    assert split.classes == 2 and set(split.y_train) == {0, 1}
    np.testing.assert_array_equal(split.y_test, (y[:4] == 7000).astype(int))
    np.testing.assert_array_equal(split.as_given(split.y_train), y)  # what outputs show: the file's labels
    with pytest.raises(DataError, match=r"test labels \[5\] do not occur in the training file"):
        load_data(None, tmp_path / "tr.npz", _npz(tmp_path / "bad.npz", X[:2], np.array([3, 5])), None, ())


def test_cli_outputs_show_the_file_labels_not_the_renumbered_classes(tmp_path):
    """Labels 1..3 become classes 0..2 for the model; ranking.csv, the explain tables and reports show 1..3."""
    import csv

    from click.testing import CliRunner

    from infl.cli import main

    rng = np.random.default_rng(3)
    y = 1 + np.arange(60) % 3
    X = rng.normal(size=(60, 5)) + y[:, None]
    train, test = _npz(tmp_path / "tr.npz", X, y), _npz(tmp_path / "te.npz", X[:6], y[:6])
    run = CliRunner().invoke(main, ["triage", "--train", str(train), "--test", str(test), "--as-is",
                                    "--out", str(tmp_path / "t")])
    assert run.exit_code == 0, run.output
    with open(tmp_path / "t" / "ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == [int(y[int(r["train_index"])]) for r in rows]
    run = CliRunner().invoke(main, ["explain", "--train", str(train), "--test", str(test), "--test-index", "4",
                                    "--loo", "0", "--out", str(tmp_path / "e")])
    assert run.exit_code == 0, run.output
    assert f"test point 4: true label {y[4]}," in run.stdout
    assert f"true label <b>{y[4]}</b>" in (tmp_path / "e" / "report.html").read_text()


def test_cli_takes_class_names_as_labels_and_shows_them_in_every_output(tmp_path):
    """A CSV label column of names (" setosa" etc.) is mapped to classes; outputs show the names, and a numeric
    test file's labels are compared with the names as text."""
    import csv

    from click.testing import CliRunner

    from infl.cli import load_data, main

    rng = np.random.default_rng(4)
    names = np.array(["virginica", "setosa", "versicolor"])[np.arange(60) % 3]
    X = rng.normal(size=(60, 4)) + (np.arange(60) % 3)[:, None]
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in X[i]) + f", {names[i]}" for i in range(60)]
    (tmp_path / "tr.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "te.csv").write_text("\n".join(rows[:7]) + "\n")
    split = load_data(None, tmp_path / "tr.csv", tmp_path / "te.csv", None, ())
    assert split.label_values == ("setosa", "versicolor", "virginica")
    assert (split.as_given(split.y_train) == names).all() and (split.as_given(split.y_test) == names[:6]).all()
    run = CliRunner().invoke(main, ["triage", "--train", str(tmp_path / "tr.csv"), "--test", str(tmp_path / "te.csv"),
                                    "--as-is", "--out", str(tmp_path / "t")])
    assert run.exit_code == 0, run.output
    with open(tmp_path / "t" / "ranking.csv") as f:
        ranked = list(csv.DictReader(f))
    assert [r["label"] for r in ranked] == [names[int(r["train_index"])] for r in ranked]
    run = CliRunner().invoke(main, ["explain", "--train", str(tmp_path / "tr.csv"), "--test", str(tmp_path / "te.csv"),
                                    "--test-index", "4", "--loo", "0", "--out", str(tmp_path / "e")])
    assert run.exit_code == 0, run.output
    assert f"test point 4: true label {names[4]}," in run.stdout

    np.savez(tmp_path / "num.npz", X=X[:3], y=np.array([1, 1, 1]))  # a name that is a number, in a numeric file
    (tmp_path / "tr1.csv").write_text("\n".join(rows).replace("setosa", "1").replace("virginica", "01") + "\n")
    split = load_data(None, tmp_path / "tr1.csv", tmp_path / "num.npz", None, ())
    assert split.label_values == ("01", "1", "versicolor") and (split.y_test == 1).all()
    (tmp_path / "te1.csv").write_text("\n".join(["a,b,c,d,label", "0,0,0,0,01", "0,0,0,0,1", "0,0,0,0, 01"]) + "\n")
    split = load_data(None, tmp_path / "tr1.csv", tmp_path / "te1.csv", None, ())  # text as written: 01 is not 1
    assert split.y_test.tolist() == [0, 1, 0]

    (tmp_path / "one.csv").write_text("a,b,c,d,label\n0,0,0,0,1\n0,0,0,0,01\n")  # numbers: one class
    with pytest.raises(DataError, match="at least 2 classes, got only \\[1\\] \\(as numbers\\)"):
        load_data(None, tmp_path / "one.csv", tmp_path / "one.csv", None, ())
    for label in ("9223372036854775808", "-9223372036854775809", "1e19", "inf", "3.5"):  # refused with the value
        (tmp_path / "bad.csv").write_text(f"a,b,c,d,label\n0,0,0,0,1\n0,0,0,0,2\n0,0,0,0,{label}\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and without numpy's cast or remainder warnings
            with pytest.raises(DataError, match=f"integers within int64 or class names, got \\['{label}'\\]"):
                load_data(None, tmp_path / "bad.csv", tmp_path / "one.csv", None, ())
    (tmp_path / "near.csv").write_text(f"a,b,c,d,label\n0,0,0,0,{2**53 + 1}\n0,0,0,0,{2**53}\n0,0,0,0,1.0\n")
    split = load_data(None, tmp_path / "near.csv", tmp_path / "near.csv", None, ())  # decimals, not float64
    assert split.classes == 3 and split.as_given(split.y_train).tolist() == [2**53 + 1, 2**53, 1]
    big = 2**53 + np.arange(3) % 3  # integers float64 cannot tell apart, in an integer file against a CSV
    np.savez(tmp_path / "big.npz", X=X[:60:20].repeat(20, 0), y=big.repeat(20))
    (tmp_path / "big.csv").write_text(f"a,b,c,d,label\n0,0,0,0,{2**53 + 1}\n")
    split = load_data(None, tmp_path / "big.npz", tmp_path / "big.csv", None, ())
    assert split.classes == 3 and split.as_given(split.y_test).tolist() == [2**53 + 1]

    (tmp_path / "tr2.csv").write_text("\n".join(rows).replace("setosa", "<b>a&b</b>") + "\n")
    (tmp_path / "te2.csv").write_text("\n".join(rows[:7]).replace("setosa", "<b>a&b</b>") + "\n")
    run = CliRunner().invoke(main, ["explain", "--train", str(tmp_path / "tr2.csv"), "--test",
                                    str(tmp_path / "te2.csv"), "--test-index", "1", "--loo", "0", "--out",
                                    str(tmp_path / "e2")])
    assert run.exit_code == 0, run.output
    page = (tmp_path / "e2" / "report.html").read_text()
    assert "&lt;b&gt;a&amp;b&lt;/b&gt;" in page and "<b>a&b</b>" not in page  # names are text, not markup


def test_labels_files_go_to_the_idx_files_and_the_label_column_to_the_csv_files(tmp_path):
    """--labels gives the labels of each IDX file in the order --train, --test (one, with a CSV training file and
    IDX test images, is the test's); --label-column names the CSV file's column whichever file that is."""
    import struct

    from infl.cli import load_data

    def idx(path, array, magic):
        path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
                         + array.astype(np.uint8).tobytes())
        return path

    rng = np.random.default_rng(5)
    images, y = rng.integers(0, 255, size=(12, 2, 2)), np.arange(12) % 2
    te_x, te_y = idx(tmp_path / "te-images-idx3-ubyte", images[:3], 0x803), idx(tmp_path / "te-labels-idx1-ubyte",
                                                                                y[:3], 0x801)
    rows = ["a,b,c,d,kind"] + [",".join(map(str, images[i].ravel())) + f",{y[i]}" for i in range(12)]
    (tmp_path / "tr.csv").write_text("\n".join(rows) + "\n")
    split = load_data(None, tmp_path / "tr.csv", te_x, "kind", (te_y,))
    assert split.y_test.tolist() == y[:3].tolist() and split.X_test.shape == (3, 4)
    tr_x, tr_y = idx(tmp_path / "tr-images-idx3-ubyte", images, 0x803), idx(tmp_path / "tr-labels-idx1-ubyte", y, 0x801)
    assert load_data(None, tr_x, te_x, None, (tr_y, te_y)).y_train.tolist() == y.tolist()
    np.savez(tmp_path / "wide.npz", X=rng.integers(0, 255, size=(12, 1, 4)), y=y)  # 4 features, another shape
    with pytest.raises(DataError, match="images are 2 x 2 but the training images 1 x 4"):
        load_data(None, tmp_path / "wide.npz", te_x, None, (te_y,))
    for given in ((), (te_y, te_y, te_y)):
        with pytest.raises(click.UsageError, match=f"labels file of each IDX image file.*2 here, got {len(given)}"):
            load_data(None, tr_x, te_x, None, given)
    with pytest.raises(click.UsageError, match="--label-column applies to CSV files"):
        load_data(None, tr_x, te_x, "kind", (tr_y, te_y))
    for column, given, named in (("kind", (), "--label-column describes"), ("", (), "--label-column describes"),
                                 (None, (tr_y,), "--labels describes"),
                                 ("kind", (tr_y,), "--label-column and --labels describe")):
        with pytest.raises(click.UsageError, match=f"{named} the files of --train and --test"):
            load_data("digits", None, None, column, given)  # not ignored beside built-in data


def test_class_names_are_read_only_when_asked_and_missing_labels_are_refused(tmp_path):
    from infl.data import DataError, load_csv, load_npz

    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,cat\n2,dog\n3,cat\n")
    with pytest.raises(DataError, match="text_labels=True"):
        load_csv(path)
    X, y = load_csv(path, text_labels=True)
    assert y.tolist() == ["cat", "dog", "cat"] and X[:, 0].tolist() == [1, 2, 3]
    path.write_text(f"a,label\n1,{2**53 + 1}\n2,{2**53}\n3,1.0\n")  # integers, parsed exactly without text_labels
    assert load_csv(path)[1].tolist() == [2**53 + 1, 2**53, 1]
    path.write_text("a,label\n1,-9223372036854775809\n2,0\n")
    with pytest.raises(DataError, match="within int64"):
        load_csv(path)
    path.write_text("a,label\n1,03\n2, 7\n")
    assert load_csv(path, text_labels=True)[1].tolist() == ["03", "7"]  # text as written, stripped
    for missing in ("NA", "nan", " "):
        path.write_text(f"a,label\n1,cat\n2,{missing}\n3,dog\n")
        with pytest.raises(DataError, match=f"1 missing label.*line 3: '{missing.strip()}'\\)"):
            load_csv(path, text_labels=True)
    for y in (np.array([" cat", "dog "]), np.array([b"cat", b"dog"])):
        np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=y)
        assert load_npz(tmp_path / "d.npz", text_labels=True)[1].tolist() == ["cat", "dog"]
    with pytest.raises(DataError, match="labels must be integers"):
        load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array(["cat", ""]))
    with pytest.raises(DataError, match="1 missing label.*row 1"):
        load_npz(tmp_path / "d.npz", text_labels=True)
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array([b"caf\xe9", b"dog"]))
    with pytest.raises(DataError, match="bytes that are not UTF-8"):
        load_npz(tmp_path / "d.npz", text_labels=True)
    np.savez(tmp_path / "d.npz", X=np.ones((3, 3)), y=np.array([2**53, 2**53 + 1, 5]))  # beyond float64's integers
    assert load_npz(tmp_path / "d.npz", text_labels=True)[1].tolist() == [2**53, 2**53 + 1, 5]
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array([True, False]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_npz(tmp_path / "d.npz", text_labels=True)
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array(["cat", 3], dtype=object))
    with pytest.raises(DataError, match=r"object array.*y.astype\(str\)"):
        load_npz(tmp_path / "d.npz", text_labels=True)


def test_cli_reads_a_csv_with_a_square_number_of_features_as_a_table(tmp_path):
    from infl.cli import load_data

    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(20, 4)), np.arange(20) % 2
    train, test = _csv(tmp_path / "train.csv", ["a", "b", "c", "d", "label"], X, y), \
        _csv(tmp_path / "test.csv", ["d", "c", "b", "a", "label"], X[:3], y[:3])
    split = load_data(None, train, test, None, ())
    assert split.image_shape is None and split.feature_names == ("a", "b", "c", "d")


def test_rebuilding_an_index_removes_only_its_own_files(tmp_path):
    from infl.index import _start
    from infl.store import CorruptIndexError, read_json

    (tmp_path / "grads").mkdir()
    (tmp_path / "grads" / "notes.txt").write_text("mine")
    (tmp_path / "grads" / "000000.npy").write_bytes(b"old chunk")
    _start(tmp_path, {"format": "test"}, resume=False)
    assert (tmp_path / "grads" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "grads" / "000000.npy").exists()
    with pytest.raises(CorruptIndexError, match="missing or damaged"):
        read_json(tmp_path / "grads" / "000000.json")


def test_to_frame_refuses_nan_scores():
    with pytest.raises(InputError, match="NaN or inf scores"):
        infl.to_frame(torch.tensor([0.1, float("nan")]))


def test_a_one_class_idx_test_file_is_accepted_where_a_training_file_is_not(tmp_path):
    from infl.data import load_file

    images, labels = tmp_path / "t-images-idx3-ubyte", tmp_path / "t-labels-idx1-ubyte"
    images.write_bytes(bytes.fromhex("00000803") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
                       + (2).to_bytes(4, "big") + bytes(8))
    labels.write_bytes(bytes.fromhex("00000801") + (2).to_bytes(4, "big") + bytes([4, 4]))
    X, y = load_file(images, labels_path=labels, min_classes=1)
    assert X.shape == (2, 4) and y.tolist() == [4, 4]
    with pytest.raises(DataError, match="at least 2 classes"):
        load_file(images, labels_path=labels)
