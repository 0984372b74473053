"""A memory budget (max_memory="4GB") turned into chunk sizes, and the plan printed before a run."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field

from .errors import InputError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
GRAD_COPIES = 4  # per-example gradients: vmap's output, its intermediates and the projected copy
PRODUCT_COPIES = 6  # a curvature product: the rows, their tangents, gradients and output
CHUNK_BYTES = 2**24  # a stored gradient chunk is at most 16 MiB (or a quarter of the budget's room), >= 1 row
MIN_ROWS = 16  # the budget must leave room for this many gradient and curvature-product rows
PROJECTION_BLOCK = 256  # rows of P drawn at once (infl.projection.BLOCK)


def parse_bytes(size: str | int) -> int:
    """'4GB' (10^9), '512MiB' (2^20), or a number of bytes -> bytes (at least 1)."""
    bad = InputError(f"max_memory must be a positive size such as '4GB', '512MiB' or a number of bytes, got {size!r}")
    if isinstance(size, bool):
        raise bad
    if isinstance(size, numbers.Integral):
        if size < 1:
            raise bad
        return int(size)
    m = re.fullmatch(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in UNITS or not math.isfinite(float(m.group(1))):
        raise bad
    value = float(m.group(1)) * UNITS[m.group(2).upper()]
    if not 1 <= value < 2**63:
        raise bad
    return int(value)


def current_rss() -> int:
    """Resident memory of this process now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _mb(b: float) -> str:
    """b bytes in MiB, to 3 significant digits below 100 MiB (1KB is not '0 MiB')."""
    mib = b / 2**20
    return f"{mib:,.0f} MiB" if mib >= 100 else f"{mib:.3g} MiB"


@dataclass
class Plan:
    """What a run holds at once and what it writes; sizes in bytes, rows in examples."""

    budget: int
    holds: dict[str, int]
    writes: dict[str, int]
    chunk_rows: int
    grad_rows: int
    product_rows: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.holds.values())

    def describe(self) -> str:
        """The plan as the lines printed before a run."""
        budget = f"budget {_mb(self.budget)}" if self.budget else "no memory budget"
        lines = [f"plan ({budget}, estimated peak {_mb(self.peak)}):", "  holds at once:"]
        lines += [f"    {what:<52} {_mb(b):>12}" for what, b in self.holds.items()]
        lines += ["  writes:"] + [f"    {what:<52} {_mb(b):>12}" for what, b in self.writes.items()]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def index_plan(budget: int | None, *, n: int, p: int, k: int, itemsize: int, data_bytes: int, projected: bool,
               chunk_rows: int | None = None, grad_rows: int = 512, baseline: int | None = None,
               world: int = 1) -> Plan:
    """Chunk sizes for building an index of n gradients of p numbers stored as k numbers each.

    budget None: no limit. world: processes sharing the chunks. Raises InputError, naming what to change,
    when the parts that cannot be chunked (data, projection, k x k curvature) exceed the budget.
    """
    baseline = current_rss() if baseline is None else baseline
    fixed = {"process so far (torch, model)": baseline, "training data": data_bytes,
             f"curvature {k} x {k} and its Cholesky factor (x3)": 3 * k * k * itemsize}
    if projected:
        fixed[f"projection P ({k} x {p})"] = k * p * itemsize
        block = min(PROJECTION_BLOCK, k)
        fixed[f"curvature products of one block of P ({block} x {p})"] = block * p * itemsize
        if itemsize < 8:  # a block is drawn in float64, then cast
            fixed[f"one block of P as drawn ({block} x {p}, float64)"] = block * p * 8
    room = (budget or 2**62) - sum(fixed.values())
    per_grad, per_product = GRAD_COPIES * p * itemsize, PRODUCT_COPIES * p * itemsize
    if room < MIN_ROWS * (per_grad + per_product):
        raise InputError(_too_small(budget or 0, fixed, MIN_ROWS * (per_grad + per_product), projected))
    grad_rows = max(1, min(grad_rows, room // 4 // per_grad))
    product_rows = max(1, min(256, k, room // 4 // per_product))  # k products form the k x k curvature
    if chunk_rows is None:  # at least two chunks per process, so that all of them work
        chunk_rows = max(1, min(-(-n // (2 * world)), min(room // 4, CHUNK_BYTES) // (k * itemsize)))
    grad_rows = min(grad_rows, chunk_rows)  # gradients are computed chunk by chunk: never more rows
    holds = {**fixed,
             f"per-example gradients, {grad_rows} rows x {p} (x{GRAD_COPIES})": grad_rows * per_grad,
             f"one chunk of stored gradients, {chunk_rows} rows x {k} (x2)": 2 * chunk_rows * k * itemsize,
             f"curvature products, {product_rows} rows x {p} (x{PRODUCT_COPIES})": product_rows * per_product}
    n_chunks = -(-n // chunk_rows)
    writes = {f"{n_chunks} gradient chunks of <= {chunk_rows} rows x {k}": n * k * itemsize,
              f"Cholesky factor of the curvature, {k} x {k}": k * k * itemsize}
    notes = [f"the full training gradients would need {_mb(n * p * itemsize)}"]
    return Plan(budget or 0, holds, writes, chunk_rows, grad_rows, product_rows, notes)


HEADROOM = 1.05  # the smallest budget advised, over this run's need: a rerun's resident memory differs a little


def _too_small(budget: int, fixed: dict[str, int], rows: int, projected: bool) -> str:
    """The refusal of a budget below the parts that cannot be chunked, each listed, and the fix."""
    parts = ", ".join(f"{what} {_mb(b)}" for what, b in fixed.items())
    need = -(-int(HEADROOM * (sum(fixed.values()) + rows)) // 2**20)  # the process's own memory varies by run
    fix = " or lower project" if projected else " or pass project=k to store projected gradients"
    return (f"max_memory={_mb(budget)} is too small: {parts} already need {_mb(sum(fixed.values()))}, and "
            f"{MIN_ROWS} rows of per-example gradients and curvature products another {_mb(rows)}; raise "
            f"max_memory to at least {need}MiB (the need + {HEADROOM - 1:.0%}: the process's own memory varies by "
            f"run){fix}")
