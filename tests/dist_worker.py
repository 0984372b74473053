"""Run under torchrun by test_distributed.py: influence on the test problems, written by rank 0 to an .npz."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import infl  # noqa: E402
from infl import dist, store  # noqa: E402
from infl.index import Index  # noqa: E402
from scale_problems import SOLVERS, logreg, mlp  # noqa: E402


def lose_rank_1_mid_index(folder: str) -> None:
    """Rank 1 dies right after writing its first chunk: the job must fail naming it and leave the index resumable."""
    if dist.world()[0] == 1:
        write = store.write_json

        def write_then_die(path, obj):
            write(path, obj)
            os._exit(3)

        store.write_json = write_then_die
    prob = mlp()
    Index.build(infl.Influence(prob.model, prob.loss_fn, l2=prob.l2), folder, prob.train, chunk_rows=7, verbose=False)


def ekfac_on_one_point(out: str, rank: int) -> None:
    """EK-FAC over 2 processes on 1 training point: every rank refuses with the same message (one holds no rows,
    so their layer probes would differ and the collectives mismatch)."""
    prob = mlp()
    try:
        infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, solver="ekfac").fit((prob.train[0][:1], prob.train[1][:1]))
        message = "fitted"
    except infl.InputError as error:
        message = str(error)
    with open(f"{out}.{rank}", "w") as f:
        f.write(message)


def ekfac_where_ranks_probe_differently(out: str, rank: int) -> None:
    """fc.weight is also used outside fc through a ReLU, which rank 1's (negative) rows never open: its probe
    alone would factor fc, rank 0's would not. Both must factor the same layers (only head), or the
    collectives mismatch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.fc(x)) + F.linear(F.relu(x), self.fc.weight))

    torch.manual_seed(0)
    X = torch.randn(8, 4, dtype=torch.float64).abs()
    X[4:] = -X[4:]
    y = torch.randint(0, 3, (8,))
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inf = infl.Influence(Gated().double(), loss, l2=0.1, solver="ekfac", stationarity_tol=float("inf")).fit((X, y))
    with open(f"{out}.{rank}", "w") as f:
        f.write(",".join(layer.name for layer in inf.solver.factors.layers))


def halves_per_rank(out: str, rank: int) -> None:
    """Each rank passes only its own half of the data (a common torchrun habit): every rank must refuse."""
    prob = mlp()
    half = slice(rank * 20, (rank + 1) * 20)
    try:
        infl.Influence(prob.model, prob.loss_fn, l2=prob.l2).fit((prob.train[0][half], prob.train[1][half]))
        message = "fitted"
    except infl.InputError as error:
        message = str(error)
    folder = f"{out}-index"  # resuming a finished index with each rank's own half: refused alike on every rank,
    Index.build(infl.Influence(prob.model, prob.loss_fn, l2=prob.l2), folder, prob.train, verbose=False)
    try:  # before the folder checks (which would fail on one rank only, leaving the other in a collective)
        Index.build(infl.Influence(prob.model, prob.loss_fn, l2=prob.l2), folder,
                    (prob.train[0][half], prob.train[1][half]), verbose=False)
        message += " | index built"
    except infl.InputError as error:
        message += " | " + str(error)
    X, y = prob.train  # the same data, laid out differently on rank 1 (summed in another order): accepted
    X = X.T.contiguous().T if rank == 1 else X
    infl.Influence(prob.model, prob.loss_fn, l2=prob.l2).fit((X, y))
    with open(f"{out}.{rank}", "w") as f:
        f.write(message)


def main(out: str, die: str) -> None:
    rank, size = dist.init(timeout_s=60)
    if die == "start" and rank == 1:
        os._exit(3)  # a rank lost mid-run: the job must fail naming it, not hang
    if die == "index":
        return lose_rank_1_mid_index(out)
    if die == "ekfac-one-point":
        return finish(ekfac_on_one_point(out, rank))
    if die == "halves":
        return finish(halves_per_rank(out, rank))
    if die == "ekfac-disagree":
        return finish(ekfac_where_ranks_probe_differently(out, rank))
    results = {}
    for make in (logreg, mlp):
        name = make.__name__
        prob = make()
        for solver_name, solver in SOLVERS.items():
            inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, solver=solver).fit(prob.train)
            results[f"{name}-{solver_name}"] = inf.scores(prob.test).numpy()
            if solver_name == "cg":  # the collective path: every rank solves the same right-hand sides
                results[f"{name}-{solver_name}-self"] = inf.self_influence().numpy()
    prob = logreg()  # 1 training point: rank 0 holds no rows of the linear model's cached features
    one = (prob.train[0][:1], prob.train[1][:1])
    results["logreg-one-point"] = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, stationarity_tol=float("inf")) \
        .fit(one).scores(prob.test).numpy()
    prob = mlp()
    for project in (None, 12):  # chunks written per rank, curvature all-reduced
        folder = os.path.join(os.path.dirname(out), f"index-{project}")
        idx = Index.build(infl.Influence(prob.model, prob.loss_fn, l2=prob.l2), folder, prob.train,
                          project=project, chunk_rows=7, verbose=False)
        results[f"index-{project}"] = idx.scores(prob.test).numpy()
    results["index-budget"] = budget_build(os.path.join(os.path.dirname(out), "index-budget"), prob, rank)
    if rank == 0:
        np.savez(out, world=size, **results)
    finish()


def finish(_: object = None) -> None:
    """Leave the process group together: a rank that exits while gloo still talks to it can abort at exit
    ("terminate called without an active exception"), failing a run whose work was done."""
    import torch.distributed

    dist.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)  # no interpreter teardown, where gloo's threads can still abort the process


def budget_build(folder: str, prob, rank: int) -> np.ndarray:
    """A build under a tight max_memory while rank 1 holds 16 MiB more than rank 0 (a faked RSS): one plan
    must serve both, or their curvature blocks differ in size (a collective mismatch) or chunks overlap."""
    import copy

    import infl.budget
    import infl.index
    from infl.budget import GRAD_COPIES, MIN_ROWS, PRODUCT_COPIES

    inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2)
    ready = copy.copy(inf).prepare(prob.train)
    X, y, p = ready.X_train_, ready.y_train_, ready.objective_.p
    base = 2**30
    infl.index.current_rss = infl.budget.current_rss = lambda: base + rank * 2**24
    budget = base + 2**24 + X.nbytes + y.nbytes + 3 * p * p * 8 + MIN_ROWS * (GRAD_COPIES + PRODUCT_COPIES) * p * 8
    idx = Index.build(inf, folder, prob.train, max_memory=budget + 2**12, verbose=False)
    return idx.scores(prob.test).numpy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
