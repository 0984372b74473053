"""infl.to_frame: scores as a pandas DataFrame."""

import builtins

import numpy as np
import pandas as pd
import pytest
import torch

import infl


def test_frame_rows_follow_training_order_with_rank_by_harm():
    scores = torch.tensor([[0.5, -2.0, 3.0, 0.0]])
    ids = pd.Series(["a", "b", "c", "d"], name="doc_id")
    frame = infl.to_frame(scores[0], labels=[1, 0, 1, 1], ids=ids)
    assert list(frame.columns) == ["index", "doc_id", "label", "score", "rank"]
    assert frame["index"].tolist() == [0, 1, 2, 3]
    assert frame["rank"].tolist() == [2, 4, 1, 3]  # 1 = largest score = most harmful
    assert frame.sort_values("rank")["doc_id"].tolist() == ["c", "a", "d", "b"]
    np.testing.assert_array_equal(frame["score"], scores[0].numpy())


def test_frame_matches_influence_scores(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    S = inf.scores(logreg.test)
    frame = infl.to_frame(S[0], labels=logreg.y, ids=[f"x{i}" for i in range(len(logreg.y))])
    worst = int(S[0].argmax())
    assert frame.loc[frame["rank"] == 1, "id"].item() == f"x{worst}"
    assert frame.loc[worst, "label"] == int(logreg.y[worst])


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=torch.zeros(2, 3)), r"one test point, shape \(n,\).*pass scores\[i\]"),
    (dict(scores=torch.zeros(3), labels=[1, 2]), r"labels must hold one value per training point \(3\)"),
    (dict(scores=torch.zeros(3), ids=[1, 2, 3], id_name="score"), "clashes with a column"),
])
def test_frame_refuses_mismatched_input(kwargs, match):
    with pytest.raises(infl.InputError, match=match):
        infl.to_frame(**kwargs)


def test_missing_pandas_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match="pip install pandas"):
        infl.to_frame(torch.zeros(3))
