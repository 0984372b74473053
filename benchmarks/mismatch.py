"""Koh & Liang's section 5.3 on a real data set: create a domain mismatch, then let the tool find it.

    python benchmarks/mismatch.py [--feature "mean texture"] [--keep 4] [--seed 0]

Data: scikit-learn's built-in breast cancer set (569 tumours, 30 measurements; label 1 = benign),
each measurement encoded as its quartile bracket (4 indicator columns, 120 in all), as the paper's
hospital data encodes age brackets. The subgroup (default: tumours in the top quartile of mean
texture, about a third of them benign) is filtered out of training except `keep` benign ones, the
paper's "all but 4 children". A logistic regression trained on that gets subgroup test points wrong;
find_drivers, given only the wrong predictions, should rank the kept subgroup points far above the
rest, and over_represented should name the subgroup's bracket.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from infl import Influence
from infl.losses import cross_entropy
from infl.mismatch import find_drivers, over_represented
from infl.train import fit_logistic


def brackets(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each column as 4 quartile indicators: (n, 4d) floats and names like 'mean texture Q4'."""
    edges = np.quantile(X, [0.25, 0.5, 0.75], axis=0)
    codes = np.stack([np.searchsorted(edges[:, j], X[:, j], side="right") for j in range(X.shape[1])], 1)
    Z = np.concatenate([(codes == q).astype(float) for q in range(4)], axis=1)
    return Z, [f"{names[j]} Q{q + 1}" for q in range(4) for j in range(X.shape[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature", default="mean texture")
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l2", type=float, default=0.001)
    args = parser.parse_args()
    data = load_breast_cancer()
    Z, columns = brackets(data.data, list(data.feature_names))
    y = data.target.astype(np.int64)
    subgroup = Z[:, columns.index(f"{args.feature} Q4")] == 1
    order = np.random.default_rng(args.seed).permutation(len(y))
    train, test = order[:455], order[455:]
    in_sub = train[subgroup[train]]
    kept = in_sub[y[in_sub] == 1][: args.keep]
    train = np.concatenate([train[~subgroup[train]], kept])
    print(f"subgroup '{args.feature} Q4': {subgroup.sum()} tumours, {y[subgroup].mean():.0%} benign; "
          f"training keeps {len(kept)} of its {len(in_sub)} (all benign), {len(train)} training points in all")
    model = fit_logistic(Z[train], y[train], 2, args.l2)
    inf = Influence(model, cross_entropy, l2=args.l2).fit((Z[train], y[train]))
    predicted = model(torch.as_tensor(Z[test])).argmax(1).detach().numpy()
    wrong = np.flatnonzero(predicted != y[test])
    sub_test = subgroup[test]
    print(f"test accuracy {np.mean(predicted == y[test]):.3f}; in the subgroup {np.mean(predicted[sub_test] == y[test][sub_test]):.3f} "
          f"({sub_test.sum()} points), elsewhere {np.mean(predicted[~sub_test] == y[test][~sub_test]):.3f}; "
          f"{len(wrong)} wrong, {sub_test[wrong].sum()} of them in the subgroup")
    drivers = find_drivers(inf, (Z[test], y[test]), wrong, k=20)
    kept_rows = np.arange(len(train) - len(kept), len(train))
    rank = np.argsort(np.argsort(-drivers.weight, kind="stable"))
    print(f"kept subgroup points: weight {np.round(drivers.weight[kept_rows], 1).tolist()} (x the mean |influence|), "
          f"ranks {(rank[kept_rows] + 1).tolist()} of {len(train)}; median weight of the others "
          f"{np.median(np.delete(drivers.weight, kept_rows)):.2f}")
    print(f"flagged (weight >= {drivers.threshold:g}): {len(drivers.outsized)} points, "
          f"{np.isin(kept_rows, drivers.outsized).sum()} of them the kept subgroup points; "
          f"the top 20 carry {drivers.share:.0%} of the |influence| on the wrong predictions")
    per_point = [np.abs(s) / np.abs(s).mean() for s in drivers.scores[sub_test[wrong]]]
    for t, w in zip(test[wrong][sub_test[wrong]], per_point):
        print(f"  wrong subgroup test point {t}: kept points at {np.round(w[kept_rows], 1).tolist()} x the mean")
    print("feature values over-represented among the top 20 drivers (share top / share train):")
    for o in over_represented(Z[train], drivers.top, columns, min_count=2, most=5):
        print(f"  {o.feature} = {o.value}: {o.count} of 20 ({o.share_top:.0%}) vs {o.share_train:.1%}, lift {o.lift:.1f}")


if __name__ == "__main__":
    main()
