#!/usr/bin/env python3
"""Measure peer influence-function libraries (pyDVL, kronfluence) on an infl task.

The peers live in their own virtual environment (benchmarks/.peers-venv), created
on first use; they are never dependencies of infl. Each method runs in its own
subprocess so that its peak RSS is its own. Every peer's scores are converted to
infl's convention (docs/MATH.md):

    S[t, i] = I_up,loss(z_i, z_test_t) = -grad L(z_test_t)^T H^{-1} grad L(z_i),

H the Hessian of R = mean_i CE(f(x_i), y_i) + (l2/2)||theta||^2 and grad L the
per-example unregularised cross-entropy gradient; f is the task's Linear (W, b) or,
when the task holds W1, b1, W2, b2, a Linear-Tanh-Linear network. Usage:

    python benchmarks/peers.py --task TASK.npz --out RESULT.npz [--methods a,b] [--reference]
    python benchmarks/peers.py --selftest

Wall times are only meaningful on an otherwise idle machine: with 2 cores and a busy
neighbour, 2-thread BLAS/OpenMP regions stall (OMP_NUM_THREADS=1 is then steadier);
CPU seconds are saved next to wall seconds. Children inherit OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers-venv"
VPY = VENV / "bin" / "python"
TORCH_PIN = "torch==2.13.0"  # the CPU build; an unpinned torch pulls CUDA wheels
PEER_REQS = {"pydvl": ["pydvl[influence]==0.10.*"], "kronfluence": ["kronfluence==1.0.*"]}
PEER_MODULE = {"pydvl": "pydvl.influence.torch", "kronfluence": "kronfluence.analyzer"}
METHODS = {"pydvl_cg": "pydvl", "pydvl_direct": "pydvl", "pydvl_arnoldi": "pydvl", "kronfluence_ekfac": "kronfluence"}
ARNOLDI_RANK = 100  # infl.Arnoldi's default; pyDVL's own default is 10
# pyDVL stops block CG when ||r_j|| <= max(rtol**2 * ||b_j||, atol**2) (it squares both).
CG_RTOL, CG_ATOL, CG_MAXITER = 1e-5, 1e-7, 2000


def _imports(stmt: str) -> bool:
    """True when `stmt` runs in the peers venv."""
    return subprocess.run([str(VPY), "-c", stmt], capture_output=True, check=False).returncode == 0


def ensure_venv() -> list[str]:
    """Create or reuse the peers venv; return the peers that import there."""
    if not VPY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VPY), "-m", "pip", "install", "-q", TORCH_PIN]
    if not _imports("import torch, numpy, scipy"):
        subprocess.run([*pip, "numpy", "scipy"], check=True)
    ok = []
    for peer, reqs in PEER_REQS.items():
        if not _imports(f"import {PEER_MODULE[peer]}"):
            subprocess.run([*pip, *reqs], check=False)
        if _imports(f"import {PEER_MODULE[peer]}"):
            ok.append(peer)
        else:
            print(f"[peers] SKIPPING {peer}: pip could not install {reqs} into {VENV} "
                  f"(or `import {PEER_MODULE[peer]}` fails there); continuing without it.", file=sys.stderr)
    return ok


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def current_rss_kib() -> int:
    """Resident set size of this process now, in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def run_pydvl(method: str, model: Any, d: dict, l2: float, bs: int, cg_maxiter: int = CG_MAXITER
              ) -> tuple[Any, str]:
    """pyDVL returns <H^{-1} g_test, g_train> with H = batch-averaged Hessian + l2 I."""
    import torch.nn.functional as F
    from pydvl.influence import InfluenceMode
    from pydvl.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(d["X_train"], d["y_train"]), batch_size=bs)
    if method == "pydvl_cg":
        inf = CgInfluence(model, F.cross_entropy, regularization=l2, rtol=CG_RTOL, atol=CG_ATOL,
                          maxiter=cg_maxiter, solve_simultaneously=True)
        how = f"block CG (solve_simultaneously=True, rtol={CG_RTOL}, atol={CG_ATOL}, maxiter={cg_maxiter})"
    elif method == "pydvl_arnoldi":
        inf = ArnoldiInfluence(model, F.cross_entropy, regularization=l2, rank=ARNOLDI_RANK)
        how = f"Arnoldi, rank {ARNOLDI_RANK}, dropped eigen-directions ignored"
    else:
        inf = DirectInfluence(model, F.cross_entropy, regularization=l2)
        how = "dense Hessian + torch.linalg.solve"
    inf = inf.fit(loader)
    raw = inf.influences(d["X_test"], d["y_test"], d["X_train"], d["y_train"], mode=InfluenceMode.Up)
    notes = (f"float64; {how}; pyDVL computes +g_test^T (H_mean + regularization*I)^-1 g_train with "
             f"regularization=l2={l2}, mean-reduction CE, batch {bs} dividing n; S = -raw")
    return -raw, notes


def run_kronfluence(model: Any, d: dict, l2: float, bs: int, damping: str) -> tuple[Any, str]:
    """kronfluence EK-FAC: g_test^T (F_ekfac + damping I)^{-1} g_train, F ~ mean true Fisher."""
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class CETask(Task):
        def compute_train_loss(self, batch: Any, model: Any, sample: bool = False) -> Any:
            x, y = batch
            logits = model(x)
            if sample:  # labels drawn from the model: the true Fisher (= GGN = H here)
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: Any) -> Any:
            return self.compute_train_loss(batch, model)

    f64 = torch.float64
    fargs = FactorArguments(strategy="ekfac", activation_covariance_dtype=f64,
                            gradient_covariance_dtype=f64, per_sample_gradient_dtype=f64, lambda_dtype=f64)
    sargs = ScoreArguments(per_sample_gradient_dtype=f64, precondition_dtype=f64, score_dtype=f64,
                           query_gradient_svd_dtype=f64)
    if damping != "default":  # kronfluence's default: an absolute 1e-8 added to every eigenvalue
        sargs.damping_factor = {"l2": l2, "heuristic": None}.get(damping, damping)
        sargs.damping_factor = None if sargs.damping_factor is None else float(sargs.damping_factor)
    task, train = CETask(), TensorDataset(d["X_train"], d["y_train"])
    query = TensorDataset(d["X_test"], d["y_test"])
    if not isinstance(model, torch.nn.Sequential):
        model = torch.nn.Sequential(model)  # a bare root Linear recurses forever in prepare_model
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as tmp:
        an = Analyzer("peers", model, task, cpu=True, disable_tqdm=True, output_dir=tmp, log_level=40)
        an.fit_all_factors("f", train, per_device_batch_size=bs, factor_args=fargs, overwrite_output_dir=True)
        an.compute_pairwise_scores("s", "f", query, train, per_device_query_batch_size=len(query),
                                   per_device_train_batch_size=bs, score_args=sargs, overwrite_output_dir=True)
        raw = an.load_pairwise_scores("s")["all_modules"]
    notes = (f"float64 model and factors; EK-FAC of the true Fisher (sampled labels, seed 0; = GGN, = H for a linear model), "
             f"sum-reduced CE, covariances averaged per example (same scale as H); damping_factor="
             f"{sargs.damping_factor} ({damping}; None = 0.1*mean eigenvalue) instead of l2*I (l2={l2}); "
             f"approximate curvature; kronfluence returns +g_test^T (F+damping)^-1 g_train; S = -raw")
    return -raw, notes


def softmax_probs_grads(theta: Any, X: Any, y: Any) -> tuple[Any, Any, Any]:
    """Closed forms for theta = [W | b] (k, d+1): [X, 1], softmax p_i, per-example CE gradients."""
    import numpy as np

    Xa = np.hstack([X, np.ones((len(X), 1))])
    Z = Xa @ theta.T
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    E = P.copy()
    E[np.arange(len(y)), y] -= 1.0  # dCE/dlogits = p - onehot(y)
    return Xa, P, (E[:, :, None] * Xa[:, None, :]).reshape(len(X), -1)


def dense_reference(t: dict) -> tuple[Any, str]:
    """Exact S by closed form: H = mean_i (diag p_i - p_i p_i^T) (x) x~_i x~_i^T + l2 I."""
    import numpy as np
    from scipy.linalg import cho_factor, cho_solve

    theta = np.hstack([t["W"], t["b"][:, None]])
    Xa, P, Gtr = softmax_probs_grads(theta, t["X_train"], t["y_train"])
    n, k, q = len(Xa), *theta.shape
    H = np.zeros((k, q, k, q))
    for c in range(k):
        for c2 in range(c, k):
            w = P[:, c] * (float(c == c2) - P[:, c2]) / n
            H[c, :, c2, :] = H[c2, :, c, :] = (Xa * w[:, None]).T @ Xa
    H = H.reshape(k * q, k * q) + t["l2"] * np.eye(k * q)
    Gte = softmax_probs_grads(theta, t["X_test"], t["y_test"])[2]
    S = -cho_solve(cho_factor(H), Gte.T).T @ Gtr.T
    return S, "float64 numpy; closed-form softmax-regression Hessian, Cholesky solve"


def task_model(t: dict) -> Any:
    """The task's float64 model: a Linear (W, b), or Linear-Tanh-Linear when the task holds W1, b1, W2, b2."""
    import torch

    if "W1" in t:
        model = torch.nn.Sequential(torch.nn.Linear(t["W1"].shape[1], t["W1"].shape[0]), torch.nn.Tanh(),
                                    torch.nn.Linear(t["W2"].shape[1], t["W2"].shape[0])).double()
        weights = [t["W1"], t["b1"], t["W2"], t["b2"]]
    else:
        model = torch.nn.Linear(t["W"].shape[1], t["W"].shape[0]).double()
        weights = [t["W"], t["b"]]
    with torch.no_grad():
        for param, value in zip(model.parameters(), weights):
            param.copy_(torch.from_numpy(value))
    return model


def child(method: str, task_path: str, out_path: str, bs: int, damping: str, cg_maxiter: int = CG_MAXITER) -> None:
    """Run one method on the task (inside the venv) and save its timings and scores."""
    import numpy as np

    t = dict(np.load(task_path))
    n = len(t["y_train"])
    bs = max(b for b in range(1, min(bs, n) + 1) if n % b == 0)  # pyDVL averages chunks unweighted
    l2 = float(t["l2"])
    if method == "dense_reference":
        rss0, c0, t0 = current_rss_kib(), cpu_seconds(), time.perf_counter()
        S, notes = dense_reference(t)
    else:
        import importlib

        import torch

        importlib.import_module(PEER_MODULE[METHODS[method]])  # import time is not timed
        torch.func.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.ones(2, 2))  # nor torch.func's lazy imports
        torch.manual_seed(0)
        d = {k: torch.from_numpy(t[k]) for k in ("X_train", "y_train", "X_test", "y_test")}
        model = task_model(t)
        rss0, c0, t0 = current_rss_kib(), cpu_seconds(), time.perf_counter()
        if method == "kronfluence_ekfac":
            S, notes = run_kronfluence(model, d, l2, bs, damping)
        else:
            S, notes = run_pydvl(method, model, d, l2, bs, cg_maxiter)
        S = S.detach().cpu().double().numpy()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(out_path, scores=np.asarray(S, dtype=np.float64), seconds=seconds, cpu_seconds=cpu, peak_rss_kib=peak,
             rss_before_kib=rss0, notes=notes)


def run_methods(task: str, methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run each method in its own venv subprocess; return the merged result arrays.

    A child's ru_maxrss starts at this process's peak RSS (Linux carries it over at exec),
    so this orchestrator must stay small: numpy only, no torch, no dense reference."""
    import numpy as np

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            part = os.path.join(tmp, f"{m}.npz")
            cmd = [str(VPY), __file__, "--child", m, "--task", task, "--out", part,
                   "--batch-size", str(args.batch_size), "--kron-damping", args.kron_damping,
                   "--cg-maxiter", str(args.cg_maxiter)]
            print(f"[peers] running {m} ...", flush=True)
            if subprocess.run(cmd, check=False).returncode != 0 or not os.path.exists(part):
                print(f"[peers] {m} FAILED; see its output above.", file=sys.stderr)
                continue
            for k, v in np.load(part).items():
                out[f"{m}__{k}"] = v
            r = {k: float(out[f"{m}__{k}"]) for k in ("seconds", "cpu_seconds", "peak_rss_kib", "rss_before_kib")}
            print(f"[peers] {m}: {r['seconds']:.2f} s wall ({r['cpu_seconds']:.1f} s CPU), peak RSS "
                  f"{r['peak_rss_kib'] / 1024:.0f} MiB (at start {r['rss_before_kib'] / 1024:.0f} MiB)", flush=True)
    return out


def compare(out: dict[str, Any], methods: list[str]) -> None:
    """Print agreement of each method with the dense reference."""
    import numpy as np

    ref = out["dense_reference__scores"]
    for m in methods:
        if f"{m}__scores" not in out:
            continue
        S = out[f"{m}__scores"]
        r_all = np.corrcoef(S.ravel(), ref.ravel())[0, 1]
        r_row = np.mean([np.corrcoef(s, r)[0, 1] for s, r in zip(S, ref)])
        slope = float((S * ref).sum() / (ref * ref).sum())
        rel = float(np.abs(S - ref).max() / np.abs(ref).max())
        print(f"[peers] {m:18s} pearson(all)={r_all:.6f} mean pearson(per test)={r_row:.6f} "
              f"slope vs ref={slope:.4f} max|err|/max|ref|={rel:.2e}")


def make_tiny_task(path: str, n: int = 60, m: int = 10, d: int = 5, k: int = 3, l2: float = 0.01,
                   uniform: bool = False) -> None:
    """Random softmax-regression task trained with scipy L-BFGS; `uniform`: theta = 0, where all
    p_i are equal, so the Hessian is exactly Kronecker-factored and EK-FAC should be exact."""
    import numpy as np
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    y, yt = (X @ rng.normal(size=(d, k))).argmax(1), rng.integers(0, k, m)
    y[:5] = rng.integers(0, k, 5)  # some label noise so the problem is not separable

    def fg(th: Any) -> tuple[float, Any]:
        _, P, G = softmax_probs_grads(th.reshape(k, d + 1), X, y)
        return -np.log(P[np.arange(n), y]).mean() + 0.5 * l2 * th @ th, G.mean(0) + l2 * th

    th = np.zeros((k, d + 1)) if uniform else minimize(
        fg, np.zeros(k * (d + 1)), jac=True, method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 0, "maxiter": 10000}).x.reshape(k, d + 1)
    np.savez(path, X_train=X, y_train=y.astype(np.int64), X_test=Xt, y_test=yt.astype(np.int64),
             W=th[:, :d], b=th[:, d], l2=np.float64(l2))


def selftest(methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Prove the conventions on tiny tasks against the dense reference; return test 1's results."""
    with tempfile.TemporaryDirectory() as tmp:
        task = os.path.join(tmp, "tiny.npz")
        make_tiny_task(task)
        out = run_methods(task, methods + ["dense_reference"], args)
        print("[peers] selftest 1: n=60, d=5, 3 classes, trained; pyDVL should match exactly")
        compare(out, methods)
        if "kronfluence_ekfac" in methods:
            make_tiny_task(task, n=5000, uniform=True)
            args.kron_damping = "l2"
            out2 = run_methods(task, ["kronfluence_ekfac", "dense_reference"], args)
            print("[peers] selftest 2: theta=0 (EK-FAC exact), n=5000, damping=l2: expect slope ~1")
            compare(out2, ["kronfluence_ekfac"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help="task .npz (X_train, y_train, X_test, y_test, W, b, l2)")
    p.add_argument("--out", help="result .npz")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--reference", action="store_true", help="also run the exact dense reference and compare")
    p.add_argument("--selftest", action="store_true", help="tiny random task; compare all methods to the reference")
    p.add_argument("--batch-size", type=int, default=1000, help="train batch size (largest divisor of n <= this)")
    p.add_argument("--kron-damping", default="default",
                   help="kronfluence damping: 'default' (its own, 1e-8), 'l2', 'heuristic', or a number")
    p.add_argument("--cg-maxiter", type=int, default=CG_MAXITER, help="pyDVL CG's block iterations at most")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        __import__("warnings").filterwarnings("ignore", category=FutureWarning)
        return child(args.child, args.task, args.out, args.batch_size, args.kron_damping, args.cg_maxiter)
    if Path(sys.prefix).resolve() != VENV.resolve():  # re-run this script inside the venv
        os.environ["PEERS_AVAILABLE"] = ",".join(ensure_venv())
        os.execv(str(VPY), [str(VPY), __file__, *sys.argv[1:]])
    ok = os.environ.get("PEERS_AVAILABLE", ",".join(PEER_REQS)).split(",")
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        p.error(f"unknown methods {set(methods) - set(METHODS)}")
    for m in (m for m in methods if METHODS[m] not in ok):
        print(f"[peers] skipping {m}: {METHODS[m]} is not available in {VENV}", file=sys.stderr)
    methods = [m for m in methods if METHODS[m] in ok]
    if args.selftest:
        out = selftest(methods, args)
    elif not (args.task and args.out):
        p.error("--task and --out are required (or use --selftest)")
    else:
        out = run_methods(args.task, methods + ["dense_reference"] * args.reference, args)
        if args.reference and "dense_reference__scores" in out:
            compare(out, methods)
    if args.out:
        __import__("numpy").savez(args.out, **out)
        print(f"[peers] wrote {args.out}")


if __name__ == "__main__":
    main()
