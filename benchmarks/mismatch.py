"""Koh & Liang's section 5.3 on a real data set: create a domain mismatch, then let the tool find it.

    python benchmarks/mismatch.py [--data diabetes] [--subgroup "age Q1"] [--keep 4] [--seeds 0 1 2 3 4]

Data: one of scikit-learn's built-in sets, each measurement encoded as its quartile bracket (4
indicator columns per measurement), as the paper's hospital data encodes age brackets:
'diabetes' (442 patients, 10 measurements; label 1 = disease progression above the median) or
'breast_cancer' (569 tumours, 30 measurements; label 1 = benign). The subgroup (default: the
youngest quarter of the patients, the paper's children) is filtered out of training except `keep`
points of the subgroup's minority label, the paper's "all but 4 children, all readmitted". A
logistic regression trained on that gets subgroup test points wrong; find_drivers, given only the
wrong predictions, should rank the kept subgroup points near the top, and over_represented should
name the subgroup's bracket. Per seed (80/20 split): subgroup test accuracy of the model trained
without the filtering and with it, the kept points' ranks among the drivers and their weights (x
the mean |influence|; the flag fires at --threshold), the largest weight of any other point, and
the value over_represented ranks first among the top 20 drivers.
"""

from __future__ import annotations

import argparse

import numpy as np
import sklearn.datasets
import torch

from infl import Influence
from infl.losses import cross_entropy
from infl.mismatch import find_drivers, over_represented
from infl.train import fit_logistic


def brackets(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each column as 4 quartile indicators: (n, 4d) floats and names like 'age Q1'."""
    edges = np.quantile(X, [0.25, 0.5, 0.75], axis=0)
    codes = np.stack([np.searchsorted(edges[:, j], X[:, j], side="right") for j in range(X.shape[1])], 1)
    Z = np.concatenate([(codes == q).astype(float) for q in range(4)], axis=1)
    return Z, [f"{names[j]} Q{q + 1}" for q in range(4) for j in range(X.shape[1])]


def load(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bracket-encoded features Z (n, 4d), binary labels (n,), column names."""
    data = getattr(sklearn.datasets, f"load_{name}")()
    y = data.target > np.median(data.target) if name == "diabetes" else data.target
    Z, columns = brackets(data.data, list(data.feature_names))
    return Z, y.astype(np.int64), columns


def one_seed(Z: np.ndarray, y: np.ndarray, columns: list[str], subgroup: np.ndarray, seed: int, *, keep: int = 4,
             l2: float = 0.001, threshold: float = 10.0) -> dict:
    """One 80/20 split: filter the subgroup out of training but `keep` points of its minority label, fit,
    find the drivers of the wrong test predictions; returns the figures of one table row."""
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    sub_test = subgroup[test]
    before = fit_logistic(Z[train], y[train], 2, l2)
    acc_before = float((before(torch.as_tensor(Z[test])).argmax(1).numpy() == y[test])[sub_test].mean())
    minority = int(y[subgroup].mean() < 0.5)
    in_sub = train[subgroup[train]]
    kept = in_sub[y[in_sub] == minority][:keep]
    train = np.concatenate([train[~subgroup[train]], kept])
    model = fit_logistic(Z[train], y[train], 2, l2)
    predicted = model(torch.as_tensor(Z[test])).argmax(1).detach().numpy()
    wrong = np.flatnonzero(predicted != y[test])
    inf = Influence(model, cross_entropy, l2=l2).fit((Z[train], y[train]))
    drivers = find_drivers(inf, (Z[test], y[test]), wrong, k=20, threshold=threshold)
    kept_rows = np.arange(len(train) - len(kept), len(train))
    rank = np.argsort(np.argsort(-drivers.weight, kind="stable")) + 1
    first = over_represented(Z[train], drivers.top, columns, min_count=2, most=1)
    return {"seed": seed, "n": len(train), "kept": len(kept), "acc_before": acc_before,
            "acc_after": float((predicted == y[test])[sub_test].mean()), "sub_test": int(sub_test.sum()),
            "wrong": len(wrong), "wrong_sub": int(sub_test[wrong].sum()), "ranks": rank[kept_rows].tolist(),
            "weights": drivers.weight[kept_rows].round(1).tolist(),
            "other_max": float(np.delete(drivers.weight, kept_rows).max()),
            "flagged_kept": int(np.isin(kept_rows, drivers.outsized).sum()),
            "flagged_other": int((~np.isin(drivers.outsized, kept_rows)).sum()),
            "first": f"{first[0].feature} = {first[0].value} (lift {first[0].lift:.1f})" if first else "none"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["diabetes", "breast_cancer"], default="diabetes")
    parser.add_argument("--subgroup", default="age Q1", help="a bracket column, e.g. 'bmi Q1' or 'mean texture Q4'")
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--l2", type=float, default=0.001)
    parser.add_argument("--threshold", type=float, default=10.0)
    args = parser.parse_args()
    Z, y, columns = load(args.data)
    if args.subgroup not in columns:
        raise SystemExit(f"no column {args.subgroup!r} in {args.data}; choose one of: {', '.join(columns)}")
    subgroup = Z[:, columns.index(args.subgroup)] == 1
    print(f"{args.data}: {len(y)} points; subgroup '{args.subgroup}': {subgroup.sum()}, {y[subgroup].mean():.0%} "
          f"label 1; training keeps up to {args.keep} of the subgroup, all of its minority label; l2 {args.l2:g}")
    print("| seed | subgroup test acc. without / with the filtering | wrong (in subgroup) | kept points' ranks "
          f"of n | their weights | largest other weight | flagged (>= {args.threshold:g}x): kept / other "
          "| first over-represented value |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [one_seed(Z, y, columns, subgroup, s, keep=args.keep, l2=args.l2, threshold=args.threshold)
            for s in args.seeds]
    for r in rows:
        print(f"| {r['seed']} ({r['kept']} kept) | {r['acc_before']:.2f} / {r['acc_after']:.2f} ({r['sub_test']} points) | "
              f"{r['wrong']} ({r['wrong_sub']}) | {r['ranks']} of {r['n']} | {r['weights']} | {r['other_max']:.1f} "
              f"| {r['flagged_kept']} / {r['flagged_other']} | {r['first']} |")
    top5 = sum(min(r["ranks"]) <= 5 for r in rows)
    named = sum(r["first"].startswith(f"{args.subgroup} = 1 ") for r in rows)
    print(f"a kept point among the top 5 drivers in {top5} of {len(rows)} seeds; the subgroup's bracket ranked "
          f"first in {named} of {len(rows)}")


if __name__ == "__main__":
    main()
