"""Solvers on a network too large for a dense Hessian: an MLP of ~100k parameters.

Task: the built-in MNIST (4,000 train / first 100 test points), a
784-128-10 tanh MLP (p = 101,770) trained with L-BFGS to a stationary point of
R = mean CE + (l2/2)||theta||^2 (cached in benchmarks/out). There the Hessian is
indefinite (CG meets negative curvature), as usual for a network, so every infl
method uses the Gauss-Newton matrix + l2 I, and the reference is CG on it to a
relative residual of 1e-10. Each method computes the (tests) x 4,000
score matrix in its own subprocess (wall time from fit to scores; training,
imports and torch.func's lazy imports excluded), then the script prints its time,
the ratio against infl's CG (and each peer's time over infl's counterpart), and its
Pearson and Spearman correlation with the reference (mean over test points, and
over all pairs).

Methods: cg (Nystrom rank 200, tol 1e-6), cg-ekfac (EK-FAC preconditioner; not run by default),
arnoldi (rank 100), ekfac, kfac, and ekfac-refineK / arnoldi-refineK (arnoldiR-refineK: rank R): the
factored or low-rank inverse followed by K steps of block CG on the Gauss-Newton
matrix preconditioned by it (infl.EKFAC(refine=K), infl.Arnoldi(refine=K)).

    python benchmarks/deep.py [--l2 1e-3] [--tests 100] [--methods ...] [--peers ... | --no-peers] [--pydvl-cg-maxiter N]
                              [--repeats N] [--fresh-reference]

--repeats N runs each infl method N times and reports its shortest time (the scores are identical); the
reference is kept in --out with the model and test count it was computed for, and recomputed only when
those change or with --fresh-reference.

Peers (pyDVL 0.10 CG and Arnoldi rank 100 on the Hessian, kronfluence 1.0 EK-FAC
with damping l2) run through benchmarks/peers.py in their own environment.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
OURS = ["cg", "arnoldi", "arnoldi-refine5", "arnoldi-refine10", "ekfac", "kfac", "ekfac-refine3", "ekfac-refine4", "ekfac-refine5",
        "ekfac-refine10"]
PEERS = "pydvl_cg,pydvl_arnoldi,kronfluence_ekfac"
COUNTERPART = {"pydvl_cg": "cg", "pydvl_arnoldi": "arnoldi", "kronfluence_ekfac": "ekfac"}
HIDDEN = 128


def task(out: Path, l2: float, tests: int = 100):
    """The trained MLP and data (float64), training cached per l2."""
    import torch
    from torch import nn

    from infl.data import load_builtin
    from infl.objective import Objective
    from infl.train import assign, minimize
    from task import cross_entropy

    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train), torch.tensor(split.y_train)
    Xt, yt = torch.tensor(split.X_test[:tests]), torch.tensor(split.y_test[:tests])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(X.shape[1], HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, split.classes)).double()
    obj = Objective(model, cross_entropy, l2)
    cache = out / f"mlp_theta_l2_{l2:g}.pt"
    if cache.exists():
        theta = torch.load(cache)
    else:
        theta = minimize(obj, X, y, tol=1e-6, max_iter=1500)
        torch.save(theta, cache)
    assign(model, obj, theta)
    return model, (X, y), (Xt, yt)


def run_one(method: str, out: Path, l2: float, tests: int) -> None:
    """Child: one method's score matrix, saved with a JSON line of figures."""
    import torch

    import infl
    from task import cross_entropy

    model, train, test = task(out, l2, tests)
    torch.func.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.ones(2, 2))  # lazy imports: untimed
    solver = {"reference": infl.CG(tol=1e-10, max_iter=5000), "cg-ekfac": infl.CG(preconditioner="ekfac")}.get(method, method)
    if "-refine" in method:  # ekfac-refineK, arnoldi-refineK, arnoldiR-refineK (rank R)
        base, steps = method.split("-refine")
        rank = {"rank": int(base[len("arnoldi"):])} if base[len("arnoldi"):].isdigit() else {}
        solver = {"ekfac": infl.EKFAC, "arnoldi": infl.Arnoldi}[base.rstrip("0123456789")](refine=int(steps), **rank)
    t0 = time.perf_counter()
    inf = infl.Influence(model, cross_entropy, l2=l2, solver=solver, curvature="gauss-newton", stationarity_tol=1e-3)
    S = inf.fit(train).scores(test)
    seconds = time.perf_counter() - t0
    np.save(out / f"deep_scores_{method}.npy", S.numpy())
    print(json.dumps({"method": method, "seconds": seconds, "note": inf.info.note, "iterations": inf.info.iterations,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def reference(out: Path, l2: float, tests: int, fresh: bool) -> dict:
    """The reference row: recomputed (a child) unless a saved one belongs to the same trained model and tests."""
    import hashlib

    import torch

    theta = torch.load(out / f"mlp_theta_l2_{l2:g}.pt")
    key = {"l2": l2, "tests": tests, "theta_sha256": hashlib.sha256(theta.numpy().tobytes()).hexdigest()}
    saved = out / "deep_reference.json"
    if not fresh and saved.exists() and (out / "deep_scores_reference.npy").exists():
        row = json.loads(saved.read_text())
        if row.pop("key") == key:
            print(f"  reference: saved ({row['seconds']:.1f} s when computed), {row['iterations']} iterations", flush=True)
            return row
    row = child("reference", out, l2, tests)
    saved.write_text(json.dumps({**row, "key": key}))
    return row


def best_of(repeats: int, method: str, out: Path, l2: float, tests: int) -> dict:
    """The run with the shortest time among `repeats` runs of one method (each in its own process)."""
    runs = [child(method, out, l2, tests) for _ in range(repeats)]
    return min(runs, key=lambda r: r["seconds"])


def child(method: str, out: Path, l2: float, tests: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", method, "--out", str(out), "--l2", str(l2),
                           "--tests", str(tests)],
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{method} failed")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {method}: {row['seconds']:.1f} s, {row['iterations']} iterations; {row['note']}", flush=True)
    return row


def peers(out: Path, l2: float, tests: int, methods: str = PEERS, cg_maxiter: int | None = None) -> list[dict]:
    """The same task through pyDVL and kronfluence (benchmarks/peers.py)."""
    from task import run_peers

    model, (X, y), (Xt, yt) = task(out, l2, tests)
    W1, b1, W2, b2 = (p.detach().numpy() for p in model.parameters())
    path = out / "deep_peers_task.npz"
    np.savez(path, X_train=X.numpy(), y_train=y.numpy(), X_test=Xt.numpy(), y_test=yt.numpy(),
             W1=W1, b1=b1, W2=W2, b2=b2, l2=np.float64(l2))
    rows = run_peers(path, out, methods, () if cg_maxiter is None else ("--cg-maxiter", str(cg_maxiter)))
    for r in rows:
        (out / f"scores_{r['method']}.npy").rename(out / f"deep_scores_{r['method']}.npy")
    return rows


def agreement(S: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    """Mean per-test-point Pearson and Spearman, then both over all pairs."""
    pr = np.mean([np.corrcoef(s, r)[0, 1] for s, r in zip(S, ref)])
    sr = np.mean([spearmanr(s, r)[0] for s, r in zip(S, ref)])
    return pr, sr, np.corrcoef(S.ravel(), ref.ravel())[0, 1], spearmanr(S.ravel(), ref.ravel())[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--methods", default=",".join(OURS))
    ap.add_argument("--tests", type=int, default=100, help="test points (the first of the built-in test split)")
    ap.add_argument("--peers", default=PEERS, help="peer methods (benchmarks/peers.py names)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--pydvl-cg-maxiter", type=int, default=None, help="cap pyDVL CG's block iterations (default: peers.py's 2000)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per infl method; the shortest time is reported")
    ap.add_argument("--fresh-reference", action="store_true", help="recompute the reference even if one is saved")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        return run_one(args.one, args.out, args.l2, args.tests)
    print("training / loading the MLP ...", flush=True)
    task(args.out, args.l2)
    rows = [reference(args.out, args.l2, args.tests, args.fresh_reference)]
    rows += [best_of(args.repeats, m, args.out, args.l2, args.tests) for m in args.methods.split(",")]
    if not args.no_peers:
        rows += peers(args.out, args.l2, args.tests, args.peers, args.pydvl_cg_maxiter)
    ref = np.load(args.out / "deep_scores_reference.npy")
    secs = {r["method"]: r["seconds"] for r in rows}
    print(f"\n4,000 x {args.tests} scores, MNIST 784-128-10 tanh MLP (p = 101,770), l2 = {args.l2:g}, "
          f"{time.strftime('%Y-%m-%d')}; Gauss-Newton curvature; reference: CG, tol 1e-10; infl methods: best of "
          f"{args.repeats} run(s)")
    print(f"{'method':>18s} {'seconds':>8s} {'cg/this':>8s} {'peak MiB':>9s} {'Pearson':>8s} {'Spearman':>8s}"
          f" {'P(all)':>7s} {'S(all)':>7s} {'this/infl':>9s}")
    for r in rows:
        S = np.load(args.out / f"deep_scores_{r['method']}.npy")
        pr, sr, pa, sa = agreement(S, ref)
        ours = COUNTERPART.get(r["method"])
        vs = f"{r['seconds'] / secs[ours]:8.2f}x" if ours in secs else ""
        print(f"{r['method']:>18s} {r['seconds']:8.2f} {secs.get('cg', np.nan) / r['seconds']:7.2f}x "
              f"{r['peak_rss_mib']:9.0f} {pr:8.4f} {sr:8.4f} {pa:7.4f} {sa:7.4f} {vs}")
    print("(cg/this: infl CG's seconds / this method's; above 1 means faster than infl CG. Pearson, Spearman: mean "
          f"over the {args.tests} test points of the correlation across the 4,000 training points; (all): over all "
          "pairs. this/infl: a peer's seconds / its infl counterpart's (pydvl_cg: cg, pydvl_arnoldi: arnoldi, "
          "kronfluence_ekfac: ekfac))")


if __name__ == "__main__":
    main()
