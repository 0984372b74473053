"""The persistent index: same scores as Influence, projected scores as their formula, atomic and resumable writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import infl
from infl.index import IncompleteIndexError, Index, IndexMismatchError
from infl.projection import Projection
from infl.store import CorruptIndexError
from infl.testing import dense_hessian, dense_scores
from scale_problems import logreg, mlp

HERE = Path(__file__).parent


def influence(prob, **kw) -> infl.Influence:
    return infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, **kw)


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (folder / "grads").iterdir()}


@pytest.mark.parametrize("make", [logreg, mlp], ids=["logreg", "mlp"])
def test_full_index_equals_dense_reference(tmp_path, make) -> None:
    prob = make()
    idx = Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=7, verbose=False)
    ref = dense_scores(prob.model, prob.loss_fn, prob.train, prob.test, prob.l2)
    assert len(list((tmp_path / "idx" / "grads").glob("[0-9]*.npy"))) == -(-prob.X.shape[0] // 7)
    reopened = Index.open(tmp_path / "idx", influence(prob))
    for index in (idx, reopened):
        torch.testing.assert_close(index.scores(prob.test), ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(index.self_influence(), influence(prob).fit(prob.train).self_influence())
    for largest, k, width in [(True, 4, 512), (False, 4, 512), (True, 4, 2), (False, 3, 5), (True, 9, 1)]:
        with pytest.MonkeyPatch.context() as patch:  # slices of max(k, width) rows, across chunks of 7
            patch.setattr("infl.index.TOP_K_SLICE", width)
            values, rows = reopened.top_k(prob.test, k, largest=largest)
        want = ref.topk(k, dim=1, largest=largest)
        torch.testing.assert_close(values, want.values, rtol=1e-9, atol=1e-9)
        assert torch.equal(rows, want.indices)


def test_projected_scores_follow_their_formula(tmp_path) -> None:
    prob, k = mlp(), 20
    idx = Index.build(influence(prob, damping=0.01), tmp_path / "idx", prob.train, project=k, seed=5, verbose=False)
    obj = idx.objective
    P = Projection(k, obj.p, 5, obj.dtype, obj.device).apply(torch.eye(obj.p, dtype=obj.dtype)).T  # (k, p)
    H = dense_hessian(prob.model, prob.loss_fn, *prob.train, prob.l2) + 0.01 * torch.eye(obj.p, dtype=obj.dtype)
    G, Gt = obj.per_example_grads(*prob.train) @ P.T, obj.per_example_grads(*prob.test) @ P.T
    want = -Gt @ torch.linalg.solve(P @ H @ P.T, G.T)
    torch.testing.assert_close(idx.scores(prob.test), want, rtol=1e-8, atol=1e-10)
    assert abs(float(P.square().sum()) / obj.p - 1) < 0.1  # entries N(0, 1/k): E[P^T P] = I
    other = Index.build(influence(prob, damping=0.01), tmp_path / "other", prob.train, project=k, seed=6,
                        verbose=False)
    assert not torch.allclose(other.scores(prob.test), want)  # the seed picks the subspace


def test_reopening_refuses_another_model_or_setting(tmp_path) -> None:
    prob = logreg()
    Index.build(influence(prob), tmp_path / "idx", prob.train, verbose=False)
    with pytest.raises(IndexMismatchError, match="l2: index 0.05, now 0.1"):
        Index.open(tmp_path / "idx", infl.Influence(prob.model, prob.loss_fn, l2=0.1))
    with torch.no_grad():
        prob.model.bias.add_(1e-6)
    with pytest.raises(IndexMismatchError, match="model parameters differ"):
        Index.open(tmp_path / "idx", influence(prob))
    with pytest.raises(IndexMismatchError, match="model parameters differ.*force=True"):
        Index.build(influence(prob), tmp_path / "idx", prob.train, verbose=False)
    X = prob.X.clone()
    X[0, 0] += 1
    with pytest.raises(IndexMismatchError, match="training data differ"):
        Index.build(influence(logreg()), tmp_path / "idx", (X, prob.y), verbose=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(infl.InputError, match="holds no infl index"):
        Index.build(influence(prob), tmp_path / "foreign", prob.train, verbose=False)


def test_a_corrupted_chunk_is_detected_on_read(tmp_path) -> None:
    prob = logreg()
    idx = Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=30, verbose=False)
    chunk = tmp_path / "idx" / "grads" / "000001.npy"
    data = bytearray(chunk.read_bytes())
    data[-3] ^= 0x40  # one bit of one stored number
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="000001.npy is corrupted"):
        idx.scores(prob.test)
    with pytest.raises(CorruptIndexError, match="000001.npy is corrupted"):
        Index.open(tmp_path / "idx", influence(prob)).top_k(prob.test, 3)


def test_rerunning_the_build_repairs_damaged_files_as_its_errors_say(tmp_path) -> None:
    """A flipped bit in a chunk, a missing chunk record and a missing curvature file: each query error says to
    run the build again, and that rerun recomputes exactly the damaged parts. A damaged manifest needs
    force=True, as its error says."""
    prob = logreg()
    folder = tmp_path / "idx"
    ref = Index.build(influence(prob), folder, prob.train, chunk_rows=30, verbose=False).scores(prob.test)
    chunk = folder / "grads" / "000001.npy"
    data = bytearray(chunk.read_bytes())
    data[-3] ^= 0x40
    chunk.write_bytes(bytes(data))
    (folder / "grads" / "000002.json").unlink()
    (folder / "curvature.npy").unlink()
    kept = (folder / "grads" / "000000.npy").stat().st_mtime_ns
    with pytest.raises(CorruptIndexError, match="run Index.build again with the same arguments"):
        Index.open(folder, influence(prob)).scores(prob.test)
    with pytest.warns(UserWarning, match="recomputing (a damaged index chunk|the index.s curvature)") as caught:
        again = Index.build(influence(prob), folder, prob.train, chunk_rows=30, verbose=False)
    said = " ".join(str(w.message) for w in caught)
    assert "recomputing a damaged index chunk" in said and "recomputing the index's curvature" in said
    torch.testing.assert_close(again.scores(prob.test), ref, rtol=0, atol=0)
    assert (folder / "grads" / "000000.npy").stat().st_mtime_ns == kept  # intact chunks are not rewritten
    (folder / "manifest.json").write_text((folder / "manifest.json").read_text()[:40])
    with pytest.raises(CorruptIndexError, match="manifest.json is damaged.*force=True"):
        Index.build(influence(prob), folder, prob.train, chunk_rows=30, verbose=False)
    rebuilt = Index.build(influence(prob), folder, prob.train, chunk_rows=30, force=True, verbose=False)
    torch.testing.assert_close(rebuilt.scores(prob.test), ref, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:the model is not at a stationary point")
def test_a_per_parameter_l2_with_a_tensor_is_recorded_and_compared(tmp_path) -> None:
    """l2={name: tensor} (from_sklearn's multinomial models make one) is stored as its shape and checksum."""
    prob = logreg()
    names = [name for name, _ in prob.model.named_parameters()]
    l2 = {names[0]: prob.l2, names[1]: torch.full_like(dict(prob.model.named_parameters())[names[1]], prob.l2)}
    build = lambda l2: Index.build(infl.Influence(prob.model, prob.loss_fn, l2=l2), tmp_path / "idx",  # noqa: E731
                                   prob.train, verbose=False)
    torch.testing.assert_close(build(l2).scores(prob.test), build(l2).scores(prob.test))
    other = {**l2, names[1]: 2 * l2[names[1]]}
    with pytest.raises(IndexMismatchError, match="l2: index"):
        build(other)


def test_queries_take_test_gradients_batch_size_at_a_time(tmp_path) -> None:
    prob = logreg()
    ref = Index.build(influence(prob), tmp_path / "idx", prob.train, project=5, verbose=False).scores(prob.test)
    small = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2, batch_size=2)
    idx = Index.open(tmp_path / "idx", small)
    seen = []
    original = idx.objective.per_example_grads
    idx.objective.per_example_grads = lambda X, y: seen.append(X.shape[0]) or original(X, y)
    torch.testing.assert_close(idx.scores(prob.test), ref)
    assert max(seen) == 2 and sum(seen) >= prob.test[0].shape[0]  # (and the loss check on two)


@pytest.mark.parametrize("kwargs, words", [
    ({"project": True}, "project must be None"), ({"seed": 1.5, "project": 3}, "seed must be an integer"),
    ({"max_memory": "."}, "max_memory must be a positive size"), ({"max_memory": "0.5B"}, "max_memory must be"),
    ({"max_memory": True}, "max_memory must be"), ({"max_memory": float("nan")}, "max_memory must be"),
    ({"seed": 2**63 - 1, "project": 3}, "seed must be an integer from 0 to"),
    ({"chunk_rows": True}, "chunk_rows must be an integer")])
def test_bad_build_arguments_are_refused_by_name(tmp_path, kwargs, words) -> None:
    prob = logreg()
    with pytest.raises(infl.InputError, match=words):
        Index.build(influence(prob), tmp_path / "idx", prob.train, verbose=False, **kwargs)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(infl.InputError, match="is a file"):
        Index.build(influence(prob), tmp_path / "file", prob.train, verbose=False)
    assert (tmp_path / "file").read_text() == "mine"


def test_sizes_parse_as_written() -> None:
    from infl.budget import parse_bytes
    from infl.index import MAX_SEED
    assert parse_bytes("4.GB") == parse_bytes("4GB") == 4 * 10**9 and parse_bytes("4.") == 4
    assert parse_bytes(".5KiB") == 512 and parse_bytes("1e3") == 1000
    assert (MAX_SEED * 1_000_003 + 2**20) < 2**64  # every block's generator seed fits torch


def test_numpy_integers_are_accepted_where_integers_are(tmp_path) -> None:
    prob = logreg()
    idx = Index.build(influence(prob), tmp_path / "idx", prob.train, project=np.int64(4), seed=np.int32(2),
                      chunk_rows=np.int64(25), max_memory=np.int64(2**34), verbose=False)
    assert idx.k == 4 and idx.top_k(prob.test, np.int64(3))[1].shape == (prob.test[0].shape[0], 3)


def test_a_build_stopped_in_the_curvature_resumes_from_its_last_block(tmp_path, monkeypatch, capsys) -> None:
    """The projected curvature is built a block of P's rows at a time and each block written as it is finished:
    a build stopped there recomputes only the blocks it had not finished, and ends with the fresh build's index."""
    monkeypatch.setattr("infl.index.CURVATURE_PIECE", 8)  # k = 20: pieces of 8, 8 and 4 rows
    monkeypatch.setattr("infl.projection.BLOCK", 6)  # P drawn in blocks of 6 rows: pieces span blocks
    prob = mlp()
    P = Projection(20, 50, 3, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(P.rows(slice(3, 15)), torch.cat([B for _, B in P.blocks()])[3:15], rtol=0, atol=0)
    done = []
    real = Projection.curvature_rows

    def stopping(self, op, rows, rows_per_product=8):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(rows.start)
        return real(self, op, rows, rows_per_product)

    monkeypatch.setattr(Projection, "curvature_rows", stopping)
    with pytest.raises(KeyboardInterrupt):
        Index.build(influence(prob, damping=0.01), tmp_path / "idx", prob.train, project=20, verbose=False)
    assert done == [0, 8] and len(list((tmp_path / "idx" / "curvature-rows").glob("*.npy"))) == 2
    done.clear()
    monkeypatch.setattr(Projection, "curvature_rows", lambda *a, **kw: (done.append(a[2].start), real(*a, **kw))[1])
    resumed = Index.build(influence(prob, damping=0.01), tmp_path / "idx", prob.train, project=20, verbose=True)
    assert done == [16] and "curvature (8 products per step): 100%" in capsys.readouterr().err
    assert not (tmp_path / "idx" / "curvature-rows").exists()  # the factor holds them now
    (tmp_path / "idx" / "curvature-rows").mkdir()  # as a build stopped between writing the factor and clearing
    for name in ("000000.npy", "000000.json"):
        (tmp_path / "idx" / "curvature-rows" / name).write_bytes(b"x")
    Index.build(influence(prob, damping=0.01), tmp_path / "idx", prob.train, project=20, verbose=False)
    assert not (tmp_path / "idx" / "curvature-rows").exists()
    fresh = Index.build(influence(prob, damping=0.01), tmp_path / "fresh", prob.train, project=20, verbose=False)
    torch.testing.assert_close(resumed.factor, fresh.factor, rtol=0, atol=0)
    torch.testing.assert_close(Index.open(tmp_path / "idx", influence(prob, damping=0.01)).scores(prob.test),
                               fresh.scores(prob.test), rtol=0, atol=0)


def test_a_verbose_build_shows_its_plan_and_progress(tmp_path, capsys) -> None:
    prob = logreg()
    Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=30, verbose=True)
    err = capsys.readouterr().err
    assert "plan (no memory budget" in err and "gradient chunks: 100%" in err and "3/3" in err
    assert "curvature (18 x 18, from 18 curvature products)" in err


def test_a_killed_build_resumes_without_recomputing(tmp_path) -> None:
    folder = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "index_writer.py"), str(folder)], env=env)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("grads/*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = files(folder)
    n_done = len([f for f in done if f.endswith(".json")])
    assert 3 <= n_done < 9, "the writer must be killed mid-build"
    prob = logreg()
    with pytest.raises(IncompleteIndexError, match=f"incomplete: {n_done} of 9"):
        Index.open(folder, influence(prob))
    idx = Index.build(influence(prob), folder, prob.train, chunk_rows=50, verbose=False)  # chunk_rows of the folder win
    after = files(folder)
    finished = [name for name in done if name.endswith(".json") and not name.startswith(".")]
    finished += [name.replace(".json", ".npy") for name in finished]  # a chunk is finished once its .json exists
    assert all(after[name] == done[name] for name in finished)
    assert not any(name.startswith(".") for name in after), "temporary files are cleared"
    ref = dense_scores(prob.model, prob.loss_fn, prob.train, prob.test, prob.l2)
    torch.testing.assert_close(Index.open(folder, influence(prob)).scores(prob.test), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(idx.scores(prob.test), ref, rtol=1e-9, atol=1e-9)
    stamps = files(folder)
    Index.build(influence(prob), folder, prob.train, verbose=False)  # finished: nothing is rewritten
    assert files(folder) == stamps


def test_format_is_readable_without_infl(tmp_path) -> None:
    prob = logreg()
    Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=40, verbose=False)
    import json
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    G = np.concatenate([np.load(tmp_path / "idx" / "grads" / f"{c:06d}.npy") for c in range(manifest["n_chunks"])])
    L = np.load(tmp_path / "idx" / "curvature.npy")
    obj = infl.objective.Objective(prob.model, prob.loss_fn, prob.l2)
    gt = obj.per_example_grads(*prob.test).numpy()
    scores = -gt @ np.linalg.solve(L @ L.T, G.T)
    ref = dense_scores(prob.model, prob.loss_fn, prob.train, prob.test, prob.l2).numpy()
    np.testing.assert_allclose(scores, ref, rtol=1e-8, atol=1e-9)
    assert manifest["complete"] and manifest["k"] == manifest["p"] == G.shape[1]


def test_memory_budget_sets_chunks_and_refuses_too_little(tmp_path, capsys) -> None:
    from infl.budget import index_plan, parse_bytes
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(infl.InputError, match="such as '4GB'"):
        parse_bytes("lots")
    plan = index_plan(10**9, n=10**6, p=10**5, k=256, itemsize=4, data_bytes=10**8, projected=True, baseline=0)
    assert plan.peak <= 10**9 and plan.grad_rows * 4 * 10**5 * 4 <= 10**9 // 4
    assert "the full training gradients would need 381,470 MiB" in plan.describe()
    prob = logreg()
    with pytest.raises(infl.InputError, match="max_memory=.* is too small.*raise max_memory"):
        Index.build(influence(prob), tmp_path / "idx", prob.train, max_memory="1MB", verbose=False)
    Index.build(influence(prob), tmp_path / "ok", prob.train, max_memory="4GB")
    assert "plan (budget 3,815 MiB" in capsys.readouterr().err


def test_resuming_or_opening_with_another_loss_or_forward_is_refused(tmp_path) -> None:
    """Parameters, data and settings match, so only the stored gradients can tell: mixing would be silent."""
    prob = logreg()
    Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=20, verbose=False)
    doubled = infl.Influence(prob.model, lambda out, y: 2 * prob.loss_fn(out, y), l2=prob.l2)
    for attempt in (lambda: Index.build(doubled, tmp_path / "idx", prob.train, verbose=False),
                    lambda: Index.open(tmp_path / "idx", doubled)):  # open has no training data: the probe rows
        with pytest.raises(IndexMismatchError, match=r"gradients of training rows 0\.\.1 differ.*loss_fn or forward"):
            attempt()
    Index.open(tmp_path / "idx", influence(prob))  # the loss it was built with
    probe = tmp_path / "idx" / "grads" / "probe-x.npy"
    np.save(probe, np.load(probe) + 1)  # damaged: refused as such, and the build the message advises repairs it
    with pytest.raises(CorruptIndexError, match="probe-x.npy is corrupted.*Run Index.build again"):
        Index.open(tmp_path / "idx", influence(prob))
    with pytest.warns(UserWarning, match="recomputing a damaged index chunk"):
        Index.build(influence(prob), tmp_path / "idx", prob.train, verbose=False)
    Index.open(tmp_path / "idx", influence(prob))
    chunk = tmp_path / "idx" / "grads" / "000000.npy"
    intact = chunk.read_bytes()
    np.save(chunk, np.load(chunk) + 1)  # a damaged chunk 0: the next intact chunk's rows tell the loss apart
    with pytest.raises(IndexMismatchError, match=r"gradients of training rows 20\.\.21 differ"):
        Index.build(doubled, tmp_path / "idx", prob.train, verbose=False)
    with pytest.raises(CorruptIndexError, match="000000.npy is corrupted"):
        Index.open(tmp_path / "idx", doubled)
    chunk.write_bytes(intact)
    record = tmp_path / "idx" / "grads" / "000000.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "probe"}))
    with pytest.warns(UserWarning, match="holds no probe rows.*cannot check that loss_fn"):  # an older index
        Index.open(tmp_path / "idx", doubled)
    idx = Index.build(doubled, tmp_path / "idx", prob.train, force=True, verbose=False)
    fresh = Index.build(doubled, tmp_path / "fresh", prob.train, chunk_rows=20, verbose=False)
    torch.testing.assert_close(idx.scores(prob.test), fresh.scores(prob.test), rtol=1e-9, atol=1e-12)


def test_a_resume_says_it_keeps_the_folders_chunks_and_products_fit_k(tmp_path) -> None:
    prob = logreg()
    Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=20, verbose=False)
    with pytest.warns(UserWarning, match="chunk_rows=7 is not used: .* its own 20 rows per chunk"):
        Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=7, verbose=False)
    from infl.budget import index_plan

    plan = index_plan(2**33, n=100, p=1000, k=12, itemsize=8, data_bytes=0, projected=True, baseline=0)
    assert plan.product_rows == 12  # only k products are taken; the plan held 256 rows of them


def test_an_index_of_one_row_per_chunk_resumes(tmp_path) -> None:
    """Chunk 0 then holds one row: the check compared it with two recomputed rows and refused every resume."""
    prob = logreg()
    first = Index.build(influence(prob), tmp_path / "idx", prob.train, chunk_rows=1, verbose=False)
    again = Index.build(influence(prob), tmp_path / "idx", prob.train, verbose=False)
    torch.testing.assert_close(again.scores(prob.test), first.scores(prob.test))
