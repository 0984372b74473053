"""The score matrix's last stage, T @ grad L(z_i)^T over the training set: forward-mode products against
per-example gradients, and which one Influence.scores picks.

    python benchmarks/scoring.py [--tests 10 100] [--repeats 2]

For each model on the built-in MNIST (4,000 training images; weights at their random initialisation,
which does not change the cost) and each number of test rows k (T = the first k test gradients), the
best of `repeats` timings of
  gradients: per-example gradients in chunks of 512 (b x p each), then T @ G^T (infl.grads.iter_grads);
  forward:   one forward-mode product of the chunk's losses per row of T (infl.grads.iter_directional);
their ratio, the largest difference between the two results (relative to the largest entry), and the
path infl.grads.directional_pays chooses. Models: the paper's logistic regression (a Linear layer:
closed form), the 784-128-10 tanh MLP of benchmarks/deep.py, a deeper MLP with LayerNorm (more work per
example besides the matrix products) and the tanh CNN of Figure 2 (benchmarks/figure2_cnn.py), whose
convolutions reuse each weight at many positions.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from figure2_cnn import SmallCNN
from infl.data import load_builtin
from infl.grads import directional_pays, iter_directional, iter_grads, stack_grads
from infl.linear import make_objective
from task import cross_entropy

CHUNK = 512


def best_of(repeats: int, run) -> tuple[float, torch.Tensor]:
    """The shortest wall time of `repeats` calls of run() and its result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train), torch.tensor(split.y_train)
    Xt, yt = torch.tensor(split.X_test), torch.tensor(split.y_test)
    torch.manual_seed(0)
    models = {"logistic regression": nn.Linear(784, 10),
              "MLP 784-128-10": nn.Sequential(nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 10)),
              "MLP 784-256-256-10, LayerNorm": nn.Sequential(
                  nn.Linear(784, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, 256), nn.LayerNorm(256), nn.Tanh(),
                  nn.Linear(256, 10)),
              "CNN of Figure 2": SmallCNN()}
    print(f"T @ grad L(z_i)^T over {X.shape[0]} training points, float64, chunks of {CHUNK}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| model | p | k | gradients s | forward s | gradients / forward | max rel. difference | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        obj = make_objective(model.double(), cross_entropy, 0.01, X[:2])
        for k in args.tests:
            T = stack_grads(obj, Xt[:k], yt[:k], CHUNK)
            grads_s, A = best_of(args.repeats, lambda: torch.cat([T @ G.T for _, G in iter_grads(obj, X, y, CHUNK)], 1))
            fwd_s, B = best_of(args.repeats, lambda: torch.cat([P for _, P in iter_directional(obj, T, X, y, CHUNK)], 1))
            diff = float((A - B).abs().max() / A.abs().max())
            chosen = "forward" if directional_pays(obj, X, y, k) else "gradients"
            print(f"| {name} | {obj.p:,} | {k} | {grads_s:.2f} | {fwd_s:.2f} | {grads_s / fwd_s:.2f}x | {diff:.1e} "
                  f"| {chosen} |", flush=True)


if __name__ == "__main__":
    main()
