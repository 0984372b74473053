"""Hugging Face sequence classifiers: batches as dicts of tensors, the loss from the model's logits.

The engine differentiates a model of one input tensor, so the dict's token
tensors (input_ids, attention_mask[, token_type_ids]), each (b, L), are
stacked into one integer tensor X (b, k, L), and `PackedClassifier` unpacks
them for the model. Gradients and curvature are over the parameters with
requires_grad=True (or those named by `params`): freeze the rest to put the
curvature on, e.g., the classifier head and the last layers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .influence import Influence
from .objective import LossFn

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class PackedClassifier(nn.Module):
    """model(**{key: X[:, i]}).logits for X (b, len(keys), L): a transformers classifier of one tensor."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, tuple(keys)

    def forward(self, X: Tensor) -> Tensor:
        return self.model(**{k: X[:, i] for i, k in enumerate(self.keys)}).logits


def pack(batch: Mapping[str, Any], keys: Sequence[str]) -> tuple[Tensor, Tensor]:
    """A dict batch -> (X (b, len(keys), L) integer tokens, labels (b,))."""
    if not isinstance(batch, Mapping):
        raise InputError(f"give data as a dict of tensors with {', '.join(keys)} and labels, "
                         f"e.g. tokenizer(texts, padding=True, return_tensors='pt') plus 'labels'; got {type(batch).__name__}")
    missing = [k for k in (*keys, "labels") if k not in batch]
    if missing:
        raise InputError(f"the batch has no {missing}; it has {sorted(batch)}")
    parts = [torch.as_tensor(batch[k]) for k in keys]
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"{', '.join(keys)} must all be (b, L) tensors of one shape (pad to one length); "
                         f"got shapes {[tuple(p.shape) for p in parts]}")
    return torch.stack(parts, 1), torch.as_tensor(batch["labels"])


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy of the logits (b,): the loss of a single-label classifier."""
    return F.cross_entropy(logits, labels, reduction="none")


@contextlib.contextmanager
def trainable_only(model: nn.Module, prefixes: Sequence[str] | None) -> Iterator[None]:
    """requires_grad=True exactly on parameters whose names start with a prefix; restored on exit."""
    if prefixes is None:
        yield
        return
    named = dict(model.named_parameters())
    chosen = [n for n in named if any(n.startswith(p) for p in prefixes)]
    if not chosen:
        raise InputError(f"no parameter name starts with {list(prefixes)}; names look like {list(named)[-4:]}")
    before = {n: p.requires_grad for n, p in named.items()}
    try:
        for n, p in named.items():
            p.requires_grad_(n in chosen)
        yield
    finally:
        for n, p in named.items():
            p.requires_grad_(before[n])


class TransformersInfluence(Influence):
    """An Influence whose train and test data are dicts of tensors (token tensors and 'labels')."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, keys: Sequence[str], **options: Any) -> None:
        super().__init__(PackedClassifier(model, keys), loss_fn, **options)
        self.keys = tuple(keys)

    def fit(self, train: Any) -> TransformersInfluence:
        return super().fit(pack(train, self.keys))

    def test_tensors(self, test: Any) -> tuple[Tensor, Tensor]:
        return super().test_tensors(pack(test, self.keys))


def from_transformers(model: nn.Module, train: Mapping[str, Any], *, params: Sequence[str] | None = None,
                      loss_fn: LossFn = cross_entropy, **influence_options: Any) -> TransformersInfluence:
    """A fitted Influence for a transformers sequence classifier (in eval mode) and a dict training batch.

    train: {'input_ids': (n, L), 'attention_mask': (n, L)[, 'token_type_ids'], 'labels': (n,)}.
    params: name prefixes (as in model.named_parameters()) of the parameters to differentiate, e.g.
        ['classifier.', 'bert.encoder.layer.11.']; the others are held fixed for this fit and the model's
        own requires_grad flags are restored afterwards. None: the model's flags as they are.
    Queries take dicts too: inf.scores(test_dict) -> (m, n) I_up,loss (positive = harmful). The model
    is not trained to an optimum of the chosen parameters in general: pass damping, or
    curvature='gauss-newton', and solver='cg' or 'arnoldi' where p is large (influence_options).
    """
    keys = [k for k in TOKEN_KEYS if isinstance(train, Mapping) and k in train]
    inf = TransformersInfluence(model, loss_fn, keys or ["input_ids"], **influence_options)
    with trainable_only(model, params):
        return inf.fit(train)
