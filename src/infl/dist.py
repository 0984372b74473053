"""Multi-process runs on torch.distributed: shard the training data, all-reduce its sums.

Under `torchrun --nproc-per-node N` every rank holds the same model and the
same data set; rank r works on its contiguous shard of the training rows.
Curvature products and gradient sums are summed over ranks (all-reduce), so
every rank ends up with the single-process answer. With no process group
(the usual case) every function here is the identity.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import InputError
from .inputs import data_fingerprint
from .operators import Operator

DEFAULT_TIMEOUT_S = 300


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (no-op without WORLD_SIZE > 1).

    backend: 'gloo' on CPU, 'nccl' on GPU by default. timeout_s bounds every
    collective, so a lost rank ends the job with an error instead of a hang.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def shard(n: int) -> slice:
    """This rank's contiguous rows of range(n); sizes differ by at most one between ranks."""
    rank, size = world()
    return slice(rank * n // size, (rank + 1) * n // size)


def all_sum(t: Tensor) -> Tensor:
    """The sum of t over ranks, on every rank (t itself without a process group)."""
    if world()[1] > 1:
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def maximum(value: int) -> int:
    """The largest of one integer per rank, on every rank (the value itself without a process group)."""
    rank, size = world()
    if size == 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    each = torch.zeros(size, dtype=torch.int64, device=device)
    each[rank] = value
    return int(all_sum(each).max())


def check_same_data(X: Tensor, y: Tensor) -> None:
    """An InputError on every rank unless every rank holds the same training data X (n, ...), y (n, ...): the
    same SHA-256 of shapes and values (integers compared as int64). No-op in one process."""
    rank, size = world()
    if size == 1:
        return
    mine = _digest(X, y)
    rank0 = broadcast_(mine.clone(), 0)
    same = torch.equal(mine, rank0)
    if maximum(int(not same)):
        detail = "another rank's differ from rank 0's" if same else f"rank {rank}'s differ from rank 0's"
        raise InputError(f"the training data differ between processes ({detail}); pass every process the same full "
                         "training set, in the same order: infl splits the rows between the processes itself")


def _digest(X: Tensor, y: Tensor) -> Tensor:
    """The data's SHA-256 (32 bytes as int64, on the collectives' device); integer tensors hashed as int64."""
    canon = [t.long() if not (t.is_floating_point() or t.is_complex()) else t for t in (X, y)]
    digest = bytes.fromhex(data_fingerprint(*canon))
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor(list(digest), dtype=torch.int64, device=device)


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite t in place with rank src's t (no-op without a process group)."""
    if world()[1] > 1:
        dist.broadcast(t, src)
    return t


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world()[1] > 1:
        dist.barrier()


def gather_columns(local: Tensor, n: int) -> Tensor:
    """Per-rank column blocks (m, shard size) -> the full (m, n) on every rank, in row order."""
    rank, size = world()
    if size == 1:
        return local
    sizes = [(r + 1) * n // size - r * n // size for r in range(size)]
    width = max(sizes)
    padded = local.new_zeros(*local.shape[:-1], width)
    padded[..., : local.shape[-1]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[..., :s] for part, s in zip(parts, sizes)], dim=-1)


class AllReduced(Operator):
    """A data-backed curvature over this rank's shard, made global: (1/n) sum over all ranks + l2 I.

    The wrapped operator is a mean over its n_local examples plus l2 * I
    (Hessian, GaussNewton, LinearHessian). Its data sum is recovered as
    (op @ V - l2 V) * n_local, summed over ranks, divided by the global n,
    and l2 V is added once: nothing is counted twice. Damping goes on top
    (`+ damping`) as for a single process.
    """

    def __init__(self, op: Operator, n: int, start: int) -> None:
        self.op, self.n_total, self.start = op, n, start
        self.p, self.dtype, self.device, self.name = op.p, op.dtype, op.device, op.name
        self.l2 = op.obj.l2

    @property
    def n(self) -> int:
        """Examples behind the operator over all ranks."""
        return self.n_total

    def matmat(self, V: Tensor) -> Tensor:
        local = self.op.n
        data = (self.op.matmat(V) - self.l2 * V) * local if local else torch.zeros_like(V)
        return all_sum(data) / self.n_total + self.l2 * V

    def in_float32(self) -> AllReduced | None:
        inner = self.op.in_float32()
        return None if inner is None else AllReduced(inner, self.n_total, self.start)

    def subset(self, index: Tensor) -> AllReduced:
        """The curvature over the global examples `index` (mean over them): each rank keeps the ones it holds."""
        mine = index[(index >= self.start) & (index < self.start + self.op.n)] - self.start
        return AllReduced(self.op.subset(mine), int(index.numel()), self.start)


def all_reduced(op: Operator, n: int, start: int) -> Operator:
    """op itself for one process; otherwise the AllReduced curvature over the n examples of all ranks."""
    if world()[1] == 1:
        return op
    if not hasattr(op, "obj"):
        raise InputError(f"the {op.name} curvature cannot be shared between processes: it holds no data; "
                         "run it in one process")
    return AllReduced(op, n, start)
