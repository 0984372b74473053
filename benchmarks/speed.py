"""Time the full 4,000 x 100 score matrix on the built-in MNIST logistic regression.

Each method runs in its own subprocess (so its peak RSS is its own) and reports
wall time from fitting to the finished score matrix (training the model, loading
data, imports and torch.func's one-time lazy imports excluded, for peers too), peak RSS, and Pearson R with infl's exact scores:

- infl exact / cg / lissa (float64), and cg in float32;
- a per-example loop baseline, as older tools do: one autograd backward per
  training and test point for the gradients, the Hessian by
  torch.autograd.functional.hessian (a loop of backward passes), one dense solve;
- peers (pyDVL 0.10 block CG and direct, kronfluence 1.0 EK-FAC), through
  benchmarks/peers.py in their own virtual environment (--no-peers skips them).

    python benchmarks/speed.py [--no-peers] [--no-baseline] [--out benchmarks/out]
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

HERE = Path(__file__).resolve().parent
OURS = ["exact", "cg", "lissa", "exact-float32", "cg-float32"]


def run_one(method: str, out: Path) -> None:
    """Child: compute the score matrix with one method, save scores and a JSON line of figures."""
    import torch

    import infl
    from task import cross_entropy, mnist_task

    dtype = torch.float32 if method.endswith("float32") else torch.float64
    task = mnist_task(dtype, cache=out / "mnist_theta.pt")
    test = task.test(slice(0, 100))
    torch.func.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.ones(2, 2))  # torch.func's lazy imports: untimed
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "loop":
        S = loop_baseline(task, test)
    else:
        solver = method.split("-")[0]
        inf = infl.Influence(task.model, cross_entropy, l2=task.l2, solver=solver, stationarity_tol=1e-2)
        S = inf.fit(task.train).scores(test)
    seconds = time.perf_counter() - t0
    np.save(out / f"scores_{method}.npy", S.double().numpy())
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": rss0 / 1024}))


def loop_baseline(task, test):
    """One backward per example for gradients; Hessian by autograd.functional.hessian; dense solve."""
    import torch

    from task import cross_entropy

    params = [p for p in task.model.parameters()]

    def flat_grad(x, y):
        loss = cross_entropy(task.model(x[None]), y[None]).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    G = torch.stack([flat_grad(x, y) for x, y in zip(*task.train)])
    Gt = torch.stack([flat_grad(x, y) for x, y in zip(*test)])
    shapes = [p.shape for p in params]

    def risk(theta):
        W, b = theta[: shapes[0].numel()].view(shapes[0]), theta[shapes[0].numel():]
        out = task.X @ W.T + b
        return cross_entropy(out, task.y).mean() + 0.5 * task.l2 * theta.square().sum()

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(risk, theta)
    return -Gt @ torch.linalg.solve(H, G.T)


def child(method: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", method, "--out", str(out)],
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{method} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peers(out: Path) -> list[dict]:
    """Run benchmarks/peers.py on the same task; [] when it cannot run."""
    import torch

    from task import mnist_task, run_peers

    task = mnist_task(cache=out / "mnist_theta.pt")
    W, b = task.model.weight.detach().numpy(), task.model.bias.detach().numpy()
    path = out / "peers_task.npz"
    np.savez(path, X_train=task.X.numpy(), y_train=task.y.numpy(), X_test=task.Xt[:100].numpy(),
             y_test=task.yt[:100].numpy(), W=W, b=b, l2=np.float64(task.l2))
    del torch
    return run_peers(path, out, "pydvl_cg,pydvl_direct,kronfluence_ekfac")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        return run_one(args.one, args.out)
    rows = [child(m, args.out) for m in OURS + ([] if args.no_baseline else ["loop"])]
    if not args.no_peers:
        rows += peers(args.out)
    exact = np.load(args.out / "scores_exact.npy")
    base = {r["method"]: r["seconds"] for r in rows}
    print(f"\n4,000 x 100 scores, MNIST logistic regression (p = 7,850), {time.strftime('%Y-%m-%d')}")
    print(f"{'method':>18s} {'seconds':>8s} {'vs loop':>8s} {'vs pydvl_cg':>11s} {'peak MiB':>9s} {'Pearson':>10s}")
    for r in rows:
        S = np.load(args.out / f"scores_{r['method']}.npy")
        corr = np.corrcoef(S.ravel(), exact.ravel())[0, 1]
        vs_loop = f"{base['loop'] / r['seconds']:8.1f}x" if "loop" in base else f"{'-':>9s}"
        vs_cg = f"{base['pydvl_cg'] / r['seconds']:10.2f}x" if "pydvl_cg" in base else f"{'-':>11s}"
        print(f"{r['method']:>18s} {r['seconds']:8.2f} {vs_loop} {vs_cg} {r['peak_rss_mib']:9.0f} {corr:10.6f}")
    print("(vs X = X's seconds / this method's seconds: above 1 means faster; - where X was not run)")


if __name__ == "__main__":
    main()
