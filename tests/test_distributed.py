"""Two processes under torchrun (gloo, CPU) give the single-process answers; a lost rank fails the job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import infl
from infl.index import IncompleteIndexError, Index
from infl.testing import dense_scores
from scale_problems import SOLVERS, logreg, mlp

HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "scores.npz"
    run = torchrun(str(HERE / "dist_worker.py"), str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("problem", [logreg, mlp], ids=["logreg", "mlp"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_two_processes_equal_one(two_ranks, problem, solver) -> None:
    prob = problem()
    inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, solver=SOLVERS[solver]).fit(prob.train)
    assert int(two_ranks["world"]) == 2
    pairs = [(f"{problem.__name__}-{solver}", inf.scores)]
    if solver == "cg":
        pairs.append((f"{problem.__name__}-{solver}-self", lambda _: inf.self_influence()))
    for key, query in pairs:
        ref, got = query(prob.test).numpy(), two_ranks[key]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max(), key


def test_a_process_without_rows_of_a_linear_model_adds_nothing(two_ranks) -> None:
    prob = logreg()
    one = (prob.train[0][:1], prob.train[1][:1])
    ref = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, stationarity_tol=float("inf")).fit(one)
    ref = ref.scores(prob.test).numpy()
    np.testing.assert_allclose(two_ranks["logreg-one-point"], ref, rtol=1e-10, atol=1e-12)


def test_processes_given_different_data_refuse(tmp_path) -> None:
    """... but the same data in another memory layout (summed in another order) is accepted."""
    run = torchrun(str(HERE / "dist_worker.py"), str(tmp_path / "said"), "halves", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for rank in (0, 1):
        fit, index = (tmp_path / f"said.{rank}").read_text().split(" | ")
        for message in (fit, index):
            assert "training data differ between processes" in message and "same full training set" in message


@pytest.mark.parametrize("project", [None, 12, "budget"])
def test_index_built_by_two_processes_equals_one(two_ranks, tmp_path, project) -> None:
    """Including a build under a tight memory budget where the two processes hold different amounts."""
    prob = mlp()
    inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2)
    ref = Index.build(inf, tmp_path / "idx", prob.train, project=None if project == "budget" else project,
                      chunk_rows=7, verbose=False)
    ref = ref.scores(prob.test).numpy()
    got = two_ranks[f"index-{project}"]
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def lost_rank_1(log: str) -> bool:
    """torchrun's failure summary names global rank 1 and its exit code 3."""
    return re.search(r"^\s*rank\s*:\s*1 ", log, re.M) is not None and re.search(r"exitcode\s*:\s*3\b", log) is not None


def test_a_lost_rank_fails_the_job_naming_it(tmp_path) -> None:
    run = torchrun(str(HERE / "dist_worker.py"), str(tmp_path / "never.npz"), "start", timeout=120)
    assert run.returncode != 0
    assert lost_rank_1(run.stderr), run.stderr[-2000:]
    assert not (tmp_path / "never.npz").exists()


def test_a_rank_lost_mid_index_leaves_it_resumable(tmp_path) -> None:
    folder = tmp_path / "idx"
    run = torchrun(str(HERE / "dist_worker.py"), str(folder), "index", timeout=120)
    assert run.returncode != 0 and lost_rank_1(run.stderr), run.stderr[-2000:]
    prob = mlp()
    inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2)
    with pytest.raises(IncompleteIndexError, match="incomplete"):
        Index.open(folder, inf)
    written = {p.name: p.stat().st_mtime_ns for p in (folder / "grads").glob("*.json")}
    assert "000001.json" in written  # rank 1's first chunk survived it
    idx = Index.build(inf, folder, prob.train, verbose=False)  # resumed by one process
    assert all((folder / "grads" / name).stat().st_mtime_ns == t for name, t in written.items())
    ref = dense_scores(prob.model, prob.loss_fn, prob.train, prob.test, prob.l2)
    np.testing.assert_allclose(idx.scores(prob.test).numpy(), ref.numpy(), rtol=1e-8, atol=1e-9)


def test_ekfac_with_more_processes_than_points_refuses_on_every_rank(tmp_path) -> None:
    run = torchrun(str(HERE / "dist_worker.py"), str(tmp_path / "said"), "ekfac-one-point", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    said = [(tmp_path / f"said.{rank}").read_text() for rank in (0, 1)]
    assert said[0] == said[1] and "needs a training point per process, but there are 1" in said[0]


def test_ekfac_factors_the_same_layers_on_every_rank_whatever_their_rows(tmp_path) -> None:
    run = torchrun(str(HERE / "dist_worker.py"), str(tmp_path / "layers"), "ekfac-disagree", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [(tmp_path / f"layers.{rank}").read_text() for rank in (0, 1)] == ["head", "head"]


def test_the_ranks_data_digest_sees_a_swap_but_not_a_layout() -> None:
    """Sums compared to a tolerance missed two swapped rows of MNIST-sized data; the digest is of the bytes."""
    import torch

    from infl.inputs import data_fingerprint

    X, y = torch.rand(3000, 50, dtype=torch.float64), torch.arange(3000) % 10
    swapped, labels = X.clone(), y.clone()
    swapped[[0, 1]] = X[[1, 0]]
    labels[[0, 1]] = y[[1, 0]]
    assert data_fingerprint(X.T.contiguous().T, y) == data_fingerprint(X, y)
    assert len({data_fingerprint(X, y), data_fingerprint(swapped, y), data_fingerprint(X, labels)}) == 3
