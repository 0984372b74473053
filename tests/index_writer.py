"""Run by test_index.py as a process that gets killed while it writes an index (each chunk write is slowed)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import infl  # noqa: E402
from infl import store  # noqa: E402
from infl.index import Index  # noqa: E402
from scale_problems import logreg  # noqa: E402

_commit = store._commit


def slow_commit(path, write):  # a partly written temporary file stays behind when killed here
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(b"\x93NUMPY partial")
    time.sleep(0.3)
    return _commit(path, write)


if __name__ == "__main__":
    store._commit = slow_commit  # every file: .npy chunks, their .json records, the manifest
    prob = logreg()
    inf = infl.Influence(prob.model, prob.loss_fn, l2=prob.l2)
    Index.build(inf, sys.argv[1], prob.train, chunk_rows=10, verbose=False)
