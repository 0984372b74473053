"""A persistent influence index: training gradients and curvature on disk, queried without the training data.

    idx = infl.Index.build(inf, "my-index", (X_train, y_train), project=1024, max_memory="4GB")
    idx = infl.Index.open("my-index", inf)      # later: checks model fingerprint and configuration
    S = idx.scores((X_test, y_test))              # (m, n)  I_up,loss, as Influence.scores
    values, rows = idx.top_k((X_test, y_test), 10)

A query is one gradient per test point, one k x k solve and products with the
stored gradients (streamed chunk by chunk). With project=None the stored
gradients are the full g_i (k = p) and the scores equal Influence.scores;
with project=k both sides and the curvature are projected (infl.projection):
the scores are those of the model restricted to a random k-dimensional
parameter subspace, an approximation whose accuracy docs/scale.md measures.

Folder layout (numpy .npy + JSON, readable without infl):
    manifest.json         format, configuration, fingerprints, n, p, k, chunk_rows, complete
    grads/000000.npy      (rows, k) stored gradients P g_i of chunk 0, rows [0, chunk_rows)
    grads/000000.json     its rows, SHA-256, shape and dtype (written after the .npy: a chunk is finished
                          when its .json exists); chunk 0's also records the probe
    grads/probe-x.npy, probe-y.npy   chunk 0's first (two) training inputs and targets, from which Index.open
                          recomputes their gradients to detect another loss_fn or forward code
    curvature.npy/.json   L, lower-triangular (k, k), with L L^T = P (H + damping I) P^T
Every file is written atomically (infl.store); a killed build resumes where it
stopped and never recomputes a finished chunk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor
from tqdm import tqdm

from . import dist, store
from .budget import current_rss, index_plan, parse_bytes
from .errors import CurvatureError, InflError, InputError, warn
from .inputs import batches, data_fingerprint, to_tensors
from .linear import make_objective
from .objective import Objective, is_integer
from .operators import damping_in, damping_needed
from .projection import Identity, Projection

FORMAT, VERSION = "infl-index", 1
MANIFEST, CURVATURE, GRADS = "manifest.json", "curvature", "grads"
CURVATURE_ROWS = "curvature-rows"  # finished pieces of a projected curvature, until its factor is written
CURVATURE_PIECE = 32  # rows of a projected curvature computed (and written) at a time
CHUNK_GLOB = "[0-9]" * 6  # the names of the chunk files in grads/ (000000.npy, 000000.json, ...)
TOP_K_SLICE = 512  # training rows scored at a time by top_k (m x this many scores held)


class IndexMismatchError(InflError, ValueError):
    """An index folder built for another model, data set or configuration."""


class IncompleteIndexError(InflError, RuntimeError):
    """An index folder whose build has not finished."""


def model_fingerprint(obj: Objective) -> str:
    """SHA-256 of the trainable parameters' names, shapes and values, and of the fixed parameters and buffers."""
    h = hashlib.sha256()
    for name, shape in zip(obj.names, obj.shapes):
        h.update(f"{name}{tuple(shape)};".encode())
    h.update(obj.theta.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(obj.fixed):
        h.update(name.encode())
        h.update(obj.fixed[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _config(inf: Any, project: int | None, seed: int) -> dict:
    return {"l2": _plain_l2(inf.l2), "damping": inf.damping, "curvature": inf.curvature, "project": project,
            "seed": seed if project else None}


def _plain_l2(l2: Any) -> Any:
    """l2 as JSON can hold it: a number, or {name: number or {shape, sha256 of the float64 values}}."""
    if not isinstance(l2, dict):
        return l2
    return {name: value if not isinstance(value, Tensor) else {
        "shape": list(value.shape),
        "sha256": hashlib.sha256(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()}
        for name, value in l2.items()}


def check_project(project: int | None, p: int) -> int | None:
    """project as a Python int (or None), checked: 1 <= k < p."""
    if project is None:
        return None
    if not (is_integer(project) and 1 <= project < p):
        raise InputError(f"project must be None (store the full gradients) or an integer k with 1 <= k < p = {p}, "
                         f"got {project!r}")
    return int(project)


MAX_SEED = (2**64 - 1) // 1_000_003 - 2**20  # block j's generator is seeded with seed * 1000003 + j < 2^64


def _check_seed(seed: int) -> int:
    if not (is_integer(seed) and 0 <= seed <= MAX_SEED):
        raise InputError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


class Index:
    """An index folder opened for queries. Build one with Index.build, reopen it with Index.open."""

    def __init__(self, folder: Path, manifest: dict, objective: Objective, factor: Tensor, batch_size: int = 512
                 ) -> None:
        self.folder, self.manifest, self.objective, self.factor = folder, manifest, objective, factor
        self.batch_size = batch_size  # test points per gradient batch in queries
        k, p = manifest["k"], manifest["p"]
        proj = manifest["config"]["project"]
        self.projection = Identity(p) if proj is None else Projection(
            k, p, manifest["config"]["seed"], objective.dtype, objective.device)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, inf: Any, folder: str | Path, train: Any, *, project: int | None = None, seed: int = 0,
              max_memory: str | int | None = None, chunk_rows: int | None = None, force: bool = False,
              verbose: bool = True) -> Index:
        """Write the index of `inf` (an infl.Influence, fitted or not) on `train` into `folder`.

        project: None stores full gradients (k = p, exact scores); k stores P g_i with a seeded
            Gaussian P (k, p), and P H P^T as curvature. seed: the projection's seed.
        max_memory: budget such as "4GB" that sets chunk sizes (a plan is printed first).
        chunk_rows: training points per stored chunk (default: from max_memory).
        force: overwrite an index built with other settings (or a non-index folder's index files).
        A folder holding a finished or partial index of the same model, data and settings is
        resumed: finished chunks are kept as they are.
        """
        folder = Path(folder)
        inf = copy.copy(inf)  # the caller's Influence keeps its own fit
        inf._read(train)  # validated, and the same on every rank, before the folder checks
        obj, X, y = inf.objective_, inf.X_train_, inf.y_train_
        n, p = X.shape[0], obj.p
        project, seed = check_project(project, p), _check_seed(seed)
        if chunk_rows is not None:
            if not (is_integer(chunk_rows) and chunk_rows >= 1):
                raise InputError(f"chunk_rows must be an integer >= 1 or None (from max_memory), got {chunk_rows!r}")
            chunk_rows = int(chunk_rows)
        k = project or p
        manifest = _manifest(inf, X, y, project, seed)
        rank, size = dist.world()
        resumed = _existing(folder, manifest, force)
        if resumed is not None and not cls(folder, resumed, obj, torch.empty(0))._same_gradients(X, y, force):
            resumed = None  # force: start afresh
        if resumed is not None and chunk_rows not in (None, resumed["chunk_rows"]):
            warn(f"chunk_rows={chunk_rows} is not used: the index in {folder} is resumed with its own "
                 f"{resumed['chunk_rows']} rows per chunk (force=True rebuilds it with {chunk_rows})")
        inf._prepare_read()  # the stationarity warning only now that the folder matches
        itemsize = obj.theta.element_size()
        plan = index_plan(parse_bytes(max_memory) if max_memory is not None else None, n=n, p=p, k=k,
                          itemsize=itemsize, data_bytes=X.nbytes + y.nbytes, projected=project is not None,
                          chunk_rows=resumed["chunk_rows"] if resumed else chunk_rows, grad_rows=inf.batch_size,
                          baseline=dist.maximum(current_rss()), world=size)  # one plan for every process
        manifest.update(chunk_rows=plan.chunk_rows, n_chunks=-(-n // plan.chunk_rows))
        if verbose and rank == 0:
            print(f"infl index {folder}: n={n}, p={p}, k={k}, {size} process(es); "
                  f"{'resuming' if resumed else 'new'}\n{plan.describe()}", file=sys.stderr)
        dist.barrier()  # every rank has read the folder before rank 0 writes to it
        if rank == 0:
            _start(folder, manifest, resumed is not None)
        dist.barrier()
        index = cls(folder, manifest, obj, torch.empty(0), inf.batch_size)
        index._write_chunks(X, y, plan.grad_rows, progress=verbose and rank == 0)
        if verbose and rank == 0:
            print(f"infl index: curvature ({k} x {k}, from {k} curvature products)", file=sys.stderr)
        index.factor = index._write_curvature(inf.operator_, plan.product_rows, progress=verbose)
        dist.barrier()  # every rank's chunks are on disk
        if rank == 0:
            store.write_json(folder / MANIFEST, {**manifest, "complete": True})
        dist.barrier()
        index.manifest = {**manifest, "complete": True}
        return index

    def _chunk_rows(self, c: int) -> slice:
        rows = self.manifest["chunk_rows"]
        return slice(c * rows, min((c + 1) * rows, self.n))

    def _chunk_record(self, c: int) -> Path:
        return self.folder / GRADS / f"{c:06d}.json"

    def _write_chunks(self, X: Tensor, y: Tensor, grad_rows: int, progress: bool = False) -> None:
        """Compute and write this rank's unfinished chunks (chunk c belongs to rank c mod world size); progress:
        a bar on stderr over this rank's chunks (finished ones count as they are checked)."""
        rank, size = dist.world()
        mine = range(rank, self.manifest["n_chunks"], size)
        for c in tqdm(mine, desc="gradient chunks" + (f" (process {rank} of {size})" if size > 1 else ""),
                      unit="chunk", file=sys.stderr, disable=not progress):
            if self._intact(c):
                continue  # finished before: never recomputed
            rows = self._chunk_rows(c)
            G = torch.cat([self.projection.apply(self.objective.per_example_grads(X[r], y[r]))
                           for r in _sub(rows, grad_rows)])
            record = store.write_array(self.folder / GRADS / f"{c:06d}.npy", G.cpu().numpy())
            probe = self._write_probe(X[:2], y[:2]) if c == 0 else None
            store.write_json(self._chunk_record(c), {**record, "rows": [rows.start, rows.stop]}
                             | ({"probe": probe} if probe else {}))

    def _write_probe(self, X: Tensor, y: Tensor) -> dict | None:
        """Write the first training rows (inputs and targets) beside chunk 0; their records, or None for inputs
        NumPy cannot hold (e.g. bfloat16), which Index.open then cannot check."""
        try:
            arrays = {"x": X.detach().cpu().numpy(), "y": y.detach().cpu().numpy()}
        except (TypeError, RuntimeError):
            return None
        return {key: store.write_array(self.folder / GRADS / f"probe-{key}.npy", a) for key, a in arrays.items()}

    def _read_probe(self) -> tuple[Tensor, Tensor] | None:
        """The probe rows (X, y) recorded with chunk 0, checked; None where it has none. CorruptIndexError if
        damaged."""
        probe = store.read_json(self._chunk_record(0)).get("probe")
        if not probe:
            return None
        X, y = (torch.as_tensor(store.read_array(self.folder / GRADS, probe[key])).to(self.objective.device)
                for key in ("x", "y"))
        return X, y

    def _check_probe(self) -> None:
        """At open: the gradients of the probe rows must be the stored ones (a warning where there are none)."""
        probe = self._read_probe()
        if probe is None:
            warn(f"the index in {self.folder} holds no probe rows (written by an earlier infl, or inputs NumPy cannot "
                 "hold, e.g. bfloat16), so Index.open cannot check that loss_fn and the forward code are the ones it "
                 "was built with: use those, or rebuild it (Index.build with force=True) to add them")
            return
        self._same_gradients(*probe, force=False, opening=True)

    def _intact(self, c: int) -> bool:
        """Whether chunk c was finished and is intact (its record readable, its rows and checksum right); a
        damaged one is announced and will be recomputed. Reads the chunk once."""
        if not self._chunk_record(c).exists():
            return False
        try:
            self._read_chunk(c)
            if c == 0:
                self._read_probe()  # a damaged probe: chunk 0 is written again, with it
        except store.CorruptIndexError as error:
            warn(f"recomputing a damaged index chunk: {error}")
            return False
        return True

    def _same_gradients(self, X: Tensor, y: Tensor, force: bool, opening: bool = False) -> bool:
        """Whether the stored gradients of the first (two) rows of the first intact chunk (chunk 0 when `opening`,
        where X, y are its probe rows) are those of this model and loss on X, y (relative difference <= sqrt(eps)); a
        parameters fingerprint cannot see another loss_fn or forward code. An IndexMismatchError, or False with
        force; when opening, a damaged chunk 0 raises CorruptIndexError (its queries would fail anyway)."""
        found = self._first_stored(1 if opening else self.manifest["n_chunks"], strict=opening)
        if found is None:
            return True  # nothing written yet
        rows, stored = found
        now = self.projection.apply(self.objective.per_example_grads(X[rows], y[rows]))
        gap = float((now - stored).norm() / stored.norm().clamp_min(torch.finfo(stored.dtype).tiny))
        if gap <= torch.finfo(stored.dtype).eps ** 0.5:
            return True
        if force:
            return False
        raise IndexMismatchError(
            f"the index in {self.folder} was built for another setup: the stored gradients of training rows "
            f"{rows.start}..{rows.stop - 1} differ from this model's and loss's by {gap:.3g} (relative), though "
            "parameters and settings match: another loss_fn or forward code. Use the ones it was built with, or "
            "another folder, or rebuild it (Index.build with force=True)")

    def _first_stored(self, chunks: int, strict: bool) -> tuple[slice, Tensor] | None:
        """(rows, stored gradients) of the first (two) rows of the first intact chunk among the first `chunks`, or
        None; a damaged chunk is skipped, or raises (CorruptIndexError) when `strict`."""
        for c in range(chunks):
            if not self._chunk_record(c).exists():
                continue
            try:
                stored = torch.as_tensor(self._read_chunk(c)[:2]).to(self.objective.device)
            except store.CorruptIndexError:
                if strict:
                    raise
                continue
            start = self._chunk_rows(c).start
            return slice(start, start + stored.shape[0]), stored
        return None

    def _write_curvature(self, op: Any, product_rows: int, progress: bool = False) -> Tensor:
        """The Cholesky factor of P (H + damping) P^T: read back if written intact, else computed (collectively,
        with a progress bar over the projected curvature's blocks if `progress`) and written."""
        record = self.folder / f"{CURVATURE}.json"
        if record.exists():
            try:
                factor = self._read_factor()
                if dist.world()[0] == 0:
                    _clear_curvature_rows(self.folder)  # a build stopped just after writing the factor left them
                return factor
            except store.CorruptIndexError as error:  # every rank reads the same files, so all recompute
                warn(f"recomputing the index's curvature: {error}")
        K = (self._projected_curvature(op, product_rows, progress) if isinstance(self.projection, Projection)
             else self.projection.curvature(op, product_rows))
        L, info = torch.linalg.cholesky_ex(K)
        if info.item() != 0:
            low = float(torch.linalg.eigvalsh(K)[0])
            other = ("or a larger l2 (the Gauss-Newton matrix in use is positive semi-definite)"
                     if self.manifest["config"]["curvature"] == "gauss-newton" else "or use curvature='gauss-newton'")
            if self.manifest["config"]["project"]:  # P P^T is not I: the damping's effect is not known exactly
                raise CurvatureError(f"the projected curvature is not positive definite (smallest eigenvalue "
                                     f"{low:.3g}); pass a damping above the current {damping_in(op):g} to the "
                                     f"Influence, {other}")
            raise CurvatureError(f"the curvature is not positive definite (smallest eigenvalue {low:.3g}); pass "
                                 f"damping > {damping_needed(op, low):.3g} to the Influence, {other}")
        if dist.world()[0] == 0:
            store.write_json(record, store.write_array(self.folder / f"{CURVATURE}.npy", L.cpu().numpy()))
            _clear_curvature_rows(self.folder)  # the factor holds them now
        return L

    def _projected_curvature(self, op: Any, product_rows: int, progress: bool) -> Tensor:
        """P (H + damping) P^T (k, k), CURVATURE_PIECE rows (as many curvature products) at a time, each piece
        written to curvature-rows/ as it is finished, so that a resumed build recomputes only the missing ones; a
        progress bar on stderr when the build is verbose (collective: every rank takes part in every piece)."""
        rank = dist.world()[0]
        folder = self.folder / CURVATURE_ROWS
        if rank == 0:
            folder.mkdir(exist_ok=True)
            store.remove_temporaries(folder)
        dist.barrier()
        P = self.projection
        K = torch.empty(P.k, P.k, dtype=self.objective.dtype, device=self.objective.device)
        pieces = list(batches(P.k, CURVATURE_PIECE))
        desc = f"curvature ({min(P.k, CURVATURE_PIECE)} products per step)"
        for j, rows in enumerate(tqdm(pieces, desc=desc, unit="step", file=sys.stderr,
                                      disable=not (progress and rank == 0))):
            part = self._read_curvature_rows(j, rows)
            if part is None:
                part = P.curvature_rows(op, rows, product_rows)
                if rank == 0:
                    record = store.write_array(folder / f"{j:06d}.npy", part.cpu().numpy())
                    store.write_json(folder / f"{j:06d}.json", {**record, "rows": [rows.start, rows.stop]})
                dist.barrier()  # written before any rank looks for the next piece's file
            K[rows] = part
        return (K + K.T) / 2

    def _read_curvature_rows(self, j: int, rows: slice) -> Tensor | None:
        """Piece j (rows `rows`) of the projected curvature as written by an earlier run, or None (missing, of
        other rows, or damaged: then announced, and recomputed)."""
        record = self.folder / CURVATURE_ROWS / f"{j:06d}.json"
        if not record.exists():
            return None
        try:
            meta = store.read_json(record)
            if not isinstance(meta, dict) or meta.get("rows") != [rows.start, rows.stop]:
                return None
            part = store.read_array(record.parent, meta)
        except store.CorruptIndexError as error:
            warn(f"recomputing a damaged part of the index's curvature: {error}")
            return None
        return torch.as_tensor(part).to(dtype=self.objective.dtype, device=self.objective.device)

    def _read_factor(self) -> Tensor:
        L = store.read_array(self.folder, store.read_json(self.folder / f"{CURVATURE}.json"))
        return torch.as_tensor(L).to(dtype=self.objective.dtype, device=self.objective.device)

    # ------------------------------------------------------------------- open
    @classmethod
    def open(cls, folder: str | Path, inf: Any) -> Index:
        """Reopen a finished index for queries with `inf` (an infl.Influence; not fitted, no training data).

        Refuses, with IndexMismatchError, a model or configuration other than the one the index was
        built with (a loss_fn or forward code too, by the stored probe rows' gradients), and, with
        IncompleteIndexError, a build that has not finished.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        obj = make_objective(inf.model, inf.loss_fn, inf.l2)
        config = _config(inf, manifest["config"]["project"], manifest["config"]["seed"])
        _compare(folder, manifest, config, model_fingerprint(obj), None)
        _check_complete(folder, manifest)
        index = cls(folder, manifest, obj, torch.empty(0), inf.batch_size)
        index._check_probe()
        index.factor = index._read_factor()
        return index

    # ---------------------------------------------------------------- queries
    @property
    def n(self) -> int:
        """Training points in the index."""
        return self.manifest["n"]

    @property
    def k(self) -> int:
        """Numbers stored per training point (p without projection)."""
        return self.manifest["k"]

    def chunks(self) -> Iterator[tuple[slice, Tensor]]:
        """(training rows, stored gradients (b, k)) for each chunk, checksum-verified; one chunk in memory."""
        for c in range(self.manifest["n_chunks"]):
            yield self._chunk_rows(c), torch.as_tensor(self._read_chunk(c)).to(self.objective.device)

    def _read_chunk(self, c: int) -> Any:
        """Chunk c's stored gradients (NumPy), checked: its record names its rows and the file's checksum."""
        record = store.read_json(self._chunk_record(c))
        rows = self._chunk_rows(c)
        if record.get("rows") != [rows.start, rows.stop]:
            raise store.CorruptIndexError(
                f"{self._chunk_record(c)} holds training rows {record.get('rows')}, but chunk {c} of this index is "
                f"rows [{rows.start}, {rows.stop}]; {store.REPAIR}")
        return store.read_array(self.folder / GRADS, record)

    def test_grads(self, test: Any) -> Tensor:
        """P grad L(z_test) for each test point, (m, k) (the full gradient without projection); the gradients are
        taken batch_size test points at a time (the Influence's)."""
        X, y = to_tensors(test, self.objective.dtype, self.objective.device, "test")
        if list(X.shape[1:]) != self.manifest["x_shape"]:
            raise InputError(f"test inputs have per-example shape {tuple(X.shape[1:])} but the index was built "
                             f"on inputs shaped {tuple(self.manifest['x_shape'])}")
        self.objective.check_loss(X, y)
        out = torch.empty(X.shape[0], self.k, dtype=self.objective.dtype, device=self.objective.device)
        for rows in batches(X.shape[0], self.batch_size):  # memory: batch_size full gradients, m projected
            out[rows] = self.projection.apply(self.objective.per_example_grads(X[rows], y[rows]))
        return out

    def s_test(self, test: Any) -> Tensor:
        """(P H P^T)^{-1} P grad L(z_test), (m, k): s_test in the stored space (H includes damping)."""
        return torch.cholesky_solve(self.test_grads(test).T, self.factor).T

    def scores(self, test: Any) -> Tensor:
        """I_up,loss(z_i, z_test) = -s_test . (P g_i), shape (m, n); signs and scale as Influence.scores."""
        T = self.s_test(test)
        out = torch.empty(T.shape[0], self.n, dtype=T.dtype, device=T.device)
        for rows, G in self.chunks():
            out[:, rows] = -(T @ G.T)
        return out

    def top_k(self, test: Any, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
        """The k largest (most harmful; largest=False: most helpful) scores per test point, streamed.

        Returns values and training indices, each (m, k), best first. Memory: one chunk, the (m, k_stored)
        solved test gradients and the running best with one slice of scores, m x (k + max(k, TOP_K_SLICE)).
        """
        if not (is_integer(k) and 1 <= k <= self.n):
            raise InputError(f"top_k needs an integer k between 1 and the {self.n} training points, got {k!r}")
        k = int(k)
        T = self.s_test(test)
        values = T.new_empty(T.shape[0], 0)
        index = torch.empty(T.shape[0], 0, dtype=torch.long, device=T.device)
        for rows, G in self.chunks():
            for cols in batches(G.shape[0], max(k, TOP_K_SLICE)):
                held = values.shape[1]
                values, pick = torch.cat([values, -(T @ G[cols].T)], 1).topk(
                    min(k, held + cols.stop - cols.start), dim=1, largest=largest)
                new = pick + (rows.start + cols.start - held)  # training row of a pick from this slice
                index = new if not held else torch.where(pick < held, index.gather(1, pick.clamp(max=held - 1)), new)
        return values, index

    def self_influence(self) -> Tensor:
        """I_up,loss(z_i, z_i) = -(P g_i)^T (P H P^T)^{-1} (P g_i) for each training point, (n,); no gradients needed."""
        out = torch.empty(self.n, dtype=self.factor.dtype, device=self.factor.device)
        for rows, G in self.chunks():
            out[rows] = -(torch.cholesky_solve(G.T, self.factor).T * G).sum(1)
        return out


def _manifest(inf: Any, X: Tensor, y: Tensor, project: int | None, seed: int) -> dict:
    """The manifest of a pending build: format, configuration, fingerprints and shapes (chunking added later)."""
    obj = inf.objective_
    return {"format": FORMAT, "version": VERSION, "config": _config(inf, project, seed),
            "fingerprint": {"model": model_fingerprint(obj), "data": data_fingerprint(X, y)},
            "n": X.shape[0], "p": obj.p, "k": project or obj.p, "x_shape": list(X.shape[1:]),
            "dtype": str(obj.dtype).split(".")[-1],
            "projection": None if project is None else {
                "kind": "gaussian N(0, 1/k)", "block_rows": 256,
                "block_j": "torch.randn(rows, p, generator=torch.Generator().manual_seed(seed * 1000003 + j), "
                           "dtype=float64) / sqrt(k)"},
            "curvature": "L (k, k) lower-triangular, L L^T = P (H + damping I) P^T", "complete": False}


def _sub(rows: slice, size: int) -> Iterator[slice]:
    for r in batches(rows.stop - rows.start, size):
        yield slice(rows.start + r.start, rows.start + r.stop)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise InputError(f"{folder} holds no infl index ({MANIFEST} is missing); build one with Index.build")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise store.CorruptIndexError(f"{path} is damaged ({type(error).__name__}: {error}) and cannot be repaired "
                                      "in place: build the index afresh with Index.build with force=True") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise IndexMismatchError(f"{path} is not an {FORMAT} version {VERSION} manifest")
    return manifest


def require_complete(folder: str | Path) -> dict:
    """The manifest of the finished index in `folder`, checked before any model is at hand.

    Raises InputError where `folder` holds no index, IncompleteIndexError where its build has not finished.
    """
    manifest = _read_manifest(Path(folder))
    _check_complete(Path(folder), manifest)
    return manifest


def _check_complete(folder: Path, manifest: dict) -> None:
    if not manifest["complete"]:
        done, total = len(list((folder / GRADS).glob(f"{CHUNK_GLOB}.json"))), manifest["n_chunks"]
        missing = "its curvature factor was not" if done == total else f"{done} of {total} gradient chunks were"
        raise IncompleteIndexError(f"the index in {folder} is incomplete: {missing} written. Run Index.build with "
                                   "the same model, data and settings to resume it")


def _compare(folder: Path, manifest: dict, config: dict, model: str, data: str | None) -> None:
    """IndexMismatchError naming every difference between the index and the current model, data and settings."""
    diffs = [f"{key}: index {manifest['config'].get(key)!r}, now {value!r}"
             for key, value in config.items() if manifest["config"].get(key) != value]
    if manifest["fingerprint"]["model"] != model:
        diffs.append("model parameters differ (fingerprint)")
    if data is not None and manifest["fingerprint"]["data"] != data:
        diffs.append("training data differ (fingerprint)")
    if diffs:
        raise IndexMismatchError(f"the index in {folder} was built for another setup: {'; '.join(diffs)}. Use the "
                                 "model, data and settings it was built with, or another folder, or rebuild it "
                                 "(Index.build with force=True)")


def _existing(folder: Path, manifest: dict, force: bool) -> dict | None:
    """The manifest of a matching index to resume, None for a fresh start; refuses a foreign or mismatched folder."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; the index needs a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return None
    if not (folder / MANIFEST).exists():
        if force:
            return None
        raise InputError(f"{folder} is not empty and holds no infl index; choose an empty or new folder, or pass "
                         "force=True to write the index files into it")
    try:
        old = _read_manifest(folder)
    except store.CorruptIndexError:
        if force:
            return None
        raise
    try:
        _compare(folder, old, manifest["config"], manifest["fingerprint"]["model"], manifest["fingerprint"]["data"])
    except IndexMismatchError:
        if force:
            return None
        raise
    return old


def _remove_numbered(part: Path) -> None:
    """Remove the index's own files from `part`: records and arrays named by number, never others."""
    for suffix in (".npy", ".json"):
        for path in part.glob(CHUNK_GLOB + suffix):
            path.unlink()


def _clear_curvature_rows(folder: Path) -> None:
    """Remove curvature-rows/ with the block files it holds (only those: named by number)."""
    rows = folder / CURVATURE_ROWS
    if rows.is_dir():
        _remove_numbered(rows)
        store.remove_temporaries(rows)
        try:
            rows.rmdir()
        except OSError:  # something else was put there: leave it
            pass


def _start(folder: Path, manifest: dict, resume: bool) -> None:
    """Create the folder layout (clearing old index files unless resuming) and write the pending manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:  # only the index's own files
        _remove_numbered(folder / GRADS)
        for name in (MANIFEST, f"{CURVATURE}.npy", f"{CURVATURE}.json", *(f"{GRADS}/probe-{k}.npy" for k in "xy")):
            (folder / name).unlink(missing_ok=True)
        _clear_curvature_rows(folder)
    (folder / GRADS).mkdir(exist_ok=True)
    for part in (folder, folder / GRADS):
        store.remove_temporaries(part)
    store.write_json(folder / MANIFEST, manifest)
