"""Scale: build an influence index on augmented MNIST, query it, bound its memory, run it on 2 processes.

    python benchmarks/scale.py                       # full size: 50,000 training points
    python benchmarks/scale.py --train-size 10000 --proj 64   # reduced

Data: the built-in MNIST training images (4,000) with seeded augmentations
(shifts of up to 2 pixels, Gaussian pixel noise 0.05), n rows; queries: the
1,000 built-in test images. Model: MLP 784-128-10 (tanh, 101,770 parameters,
float32), trained with Adam for 2 epochs (not to convergence, so the
curvature is Gauss-Newton + damping). Steps, each build in a fresh process:

1. build the index with projection k (1 process, then 2 under torchrun):
   build time, speed-up, peak RSS; then top-10 queries for all test points.
2. a build under a memory budget whose full training gradients need at least
   10x the budget: peak RSS against the budget.
3. projection accuracy where the unprojected scores can be computed exactly:
   the paper's logistic regression (p = 7,850, float64) on the same data;
   Spearman of projected against exact scores per test point, for both ways
   of projecting (both sides with P H P^T, as the index does; and only the
   training gradients, with s_test in full).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import infl
from infl import dist
from infl.data import load_builtin
from infl.index import Index
from infl.objective import Objective
from infl.train import assign, minimize

OUT = Path(__file__).parent / "out" / "scale"
L2, DAMPING, P_MLP = 1e-4, 1e-3, 784 * 128 + 128 + 128 * 10 + 10


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def augmented(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n training rows from the 4,000 MNIST images (row i from image i mod 4000), shifted and noised; the test set."""
    split = load_builtin("mnist")
    base, labels = torch.tensor(split.X_train, dtype=torch.float32), torch.tensor(split.y_train)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % base.shape[0]
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    out = torch.empty(n, 784)
    for i in range(n):  # a copy of image idx[i], rolled by its own shift
        out[i] = torch.roll(base[idx[i]].view(28, 28), tuple(shifts[i].tolist()), (0, 1)).reshape(-1)
    for rows in torch.arange(n).split(4096):  # noise in slices: no second n x 784 copy
        out[rows] += 0.05 * torch.randn(len(rows), 784, generator=gen)
    return out, labels[idx], torch.tensor(split.X_test, dtype=torch.float32), torch.tensor(split.y_test)


def mlp(X: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """MLP 784-128-10 trained with Adam (2 epochs, weight decay L2), cached by n."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 10))
    path = OUT / f"mlp-{X.shape[0]}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for rows in torch.randperm(X.shape[0], generator=gen).split(256):
            loss = ce(model(X[rows]), y[rows]).mean()
            loss = loss + 0.5 * L2 * sum(p.square().sum() for p in model.parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), path)
    return model.eval()


def peak_rss() -> int:
    """Peak resident memory of this process (VmHWM), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_build(args: argparse.Namespace) -> None:
    """One build (and optionally the queries), run in its own process (or under torchrun); JSON on stdout."""
    rank, size = dist.init()
    X, y, Xt, yt = augmented(args.n)
    model = mlp(X, y)
    inf = infl.Influence(model, ce, l2=L2, damping=DAMPING, curvature="gauss-newton", batch_size=256)
    before = peak_rss()
    began = time.perf_counter()
    idx = Index.build(inf, args.folder, (X, y), project=args.k, max_memory=args.budget, force=True,
                      verbose=rank == 0)
    result = {"processes": size, "build_s": time.perf_counter() - began, "peak_rss": peak_rss(),
              "peak_rss_before_build": before}
    if args.queries:
        began = time.perf_counter()
        for rows in torch.arange(args.queries).split(100):
            idx.top_k((Xt[rows], yt[rows]), 10)
        result["query_s_per_point"] = (time.perf_counter() - began) / args.queries
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, *, n: int, k: int, budget: str | None, folder: Path, procs: int = 1,
              queries: int = 0) -> dict:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
                              if procs > 1 else [])
    cmd += [__file__, "build", "--train-size", str(n), "--proj", str(k), "--folder", str(folder),
            "--queries", str(queries)] + (["--budget", budget] if budget else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stderr.write(out.stderr[-3000:] if out.returncode else "")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"build failed: {' '.join(cmd)}")
    return json.loads(line[-1][7:])


def accuracy(args: argparse.Namespace) -> list[dict]:
    """Spearman of projected against exact scores on logistic regression (p = 7,850), per test point, averaged."""
    X, y, Xt, yt = (t.double() if t.is_floating_point() else t for t in augmented(args.n))
    model = nn.Linear(784, 10).double()
    obj = Objective(model, ce, 0.01)
    assign(model, obj, minimize(obj, X, y, tol=1e-7))
    test = (Xt[: args.accuracy_queries], yt[: args.accuracy_queries])
    inf = infl.Influence(model, ce, l2=0.01).fit((X, y))
    exact, s_full = inf.scores(test).numpy(), inf.s_test(test)
    rows = []
    for k in args.ks:
        idx = Index.build(inf, OUT / f"acc-{k}", (X, y), project=k, force=True, verbose=False)
        both = idx.scores(test).numpy()
        Ps = idx.projection.apply(s_full)  # only the training gradients projected: -(P s_test) . (P g_i)
        one = torch.cat([-(Ps @ G.T) for _, G in idx.chunks()], 1).numpy()
        rows.append({"k": k, "both": _mean_spearman(both, exact), "train_only": _mean_spearman(one, exact)})
    return rows


def _mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([spearmanr(x, z)[0] for x, z in zip(a, b)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", nargs="?", default="all", choices=["all", "build"])
    parser.add_argument("--train-size", dest="n", type=int, default=50_000)
    parser.add_argument("--proj", dest="k", type=int, default=256, help="projection of the timed builds")
    parser.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[64, 256, 1024, 4096])
    parser.add_argument("--budget", default=None)
    parser.add_argument("--mem-n", type=int, default=26_400, help="training points of the memory-budget build")
    parser.add_argument("--folder", type=Path, default=OUT / "index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--accuracy-queries", type=int, default=100)
    parser.add_argument("--steps", type=lambda s: s.split(","), default=["speed", "memory", "accuracy"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.step == "build":
        return child_build(args)
    for n in [args.n] * ("speed" in args.steps) + [args.mem_n] * ("memory" in args.steps):
        mlp(*augmented(n)[:2])  # trained once, before any timing
    if "speed" in args.steps:
        one = run_child(args, n=args.n, k=args.k, budget=None, folder=OUT / "index-1", queries=args.queries)
        print(f"n = {args.n} augmented MNIST, MLP p = {P_MLP}, float32, k = {args.k}, Gauss-Newton + {DAMPING} I")
        print(f"build, 1 process: {one['build_s']:.1f} s, peak RSS {one['peak_rss'] / 2**20:.0f} MiB", flush=True)
        two = run_child(args, n=args.n, k=args.k, budget=None, folder=OUT / "index-2", procs=2)
        print(f"build, 2 processes (torchrun): {two['build_s']:.1f} s, speed-up {one['build_s'] / two['build_s']:.2f}x")
        print(f"top-10 query: {1000 * one['query_s_per_point']:.2f} ms per test point ({args.queries} test points)")
    if "memory" in args.steps:
        budget, full = 2**30, args.mem_n * P_MLP * 4  # 1 GiB; the full float32 gradients need >= 10x
        mem = run_child(args, n=args.mem_n, k=16, budget="1GiB", folder=OUT / "index-mem")
        print(f"n = {args.mem_n}, budget 1024 MiB, full gradients {full / 2**20:.0f} MiB ({full / budget:.1f}x): "
              f"peak RSS {mem['peak_rss'] / 2**20:.0f} MiB, build {mem['build_s']:.1f} s")
    if "accuracy" in args.steps:
        print(f"projection accuracy, logistic regression p = 7850, first {args.accuracy_queries} test points, "
              "mean Spearman vs exact:")
        print("  k      both sides (index)   training side only (s_test in full)")
        for row in accuracy(args):
            print(f"  {row['k']:<6} {row['both']:.4f}               {row['train_only']:.4f}")


if __name__ == "__main__":
    main()
