"""Does an index build stay within max_memory? The plan's estimate against resident memory sampled every 2 ms.

    python benchmarks/memory.py [--project 256] [--budget 840MiB] [--n 8000] [--queries M]

A float32 784-128-10 tanh MLP (p = 101,770) on n random 28x28 images, Gauss-Newton curvature, damping 1e-3,
built into a temporary folder with infl.Index.build(project=k, max_memory=budget); --project 0 stores full
gradients of a 784-10 linear model instead. Prints the plan, then the measured peak of each build phase.
--queries M then asks the index for the top 10 of M random test images (Index.top_k) and scores them with
Influence.scores (EK-FAC), each phase's peak and time printed: neither holds M x n or M x p x (solver copies)
at once (test points are solved in groups, the index scores 512 training rows at a time).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import torch
from torch import nn

import infl
import infl.index
from infl.budget import current_rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=int, default=256)
    ap.add_argument("--budget", default="840MiB")
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--queries", type=int, default=0, help="test images for top_k and scores afterwards (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(args.n, 784, generator=g), torch.randint(0, 10, (args.n,), generator=g)
    model = (nn.Sequential(nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 10)) if args.project
             else nn.Linear(784, 10).double())
    X = X if args.project else X.double()
    loss = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    inf = infl.Influence(model, loss, l2=0.01, damping=1e-3, curvature="gauss-newton", stationarity_tol=float("inf"))

    phase, peaks = ["setup"], {}

    def sample() -> None:
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), current_rss())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    chunks, curvature = infl.index.Index._write_chunks, infl.index.Index._write_curvature

    def in_phase(name, method):
        def run(self, *a, **kw):
            phase[0] = name
            try:
                return method(self, *a, **kw)
            finally:
                phase[0] = "after"
        return run

    infl.index.Index._write_chunks = in_phase("gradient chunks", chunks)
    infl.index.Index._write_curvature = in_phase("curvature", curvature)
    with tempfile.TemporaryDirectory() as folder:
        index = infl.Index.build(inf, folder, (X, y), project=args.project or None, max_memory=args.budget)
        if args.queries:
            Xq, yq = torch.rand(args.queries, 784, generator=g).to(X.dtype), torch.randint(0, 10, (args.queries,),
                                                                                           generator=g)
            for name, query in [("top_k", lambda: index.top_k((Xq, yq), 10)),
                                ("scores (ekfac)", lambda: infl.Influence(
                                    model, loss, l2=0.01, damping=1e-3, curvature="gauss-newton", solver="ekfac",
                                    stationarity_tol=float("inf")).fit((X, y)).scores((Xq, yq)))]:
                phase[0], start = f"{name}, {args.queries} queries", time.perf_counter()
                query()
                print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
                phase[0] = "after"
    time.sleep(0.05)
    print(f"budget {args.budget}: measured peak " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
