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
    unread = [k for k in TOKEN_KEYS if k in batch and k not in keys]
    if unread:
        raise InputError(f"the batch has {unread}, which the training data did not have, so the model would read "
                         f"them as their defaults; fit on training data with {unread} too, or leave them out here")
    parts = [_tokens(batch[k], k) for k in keys]
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"{', '.join(keys)} must all be (b, L) tensors of one shape (pad to one length); "
                         f"got shapes {[tuple(p.shape) for p in parts]}")
    return torch.stack(parts, 1), torch.as_tensor(batch["labels"])


def _tokens(values: Any, key: str) -> Tensor:
    """One token tensor as int64; a float one (e.g. a 0./1. attention mask) only if its values are whole."""
    t = torch.as_tensor(values)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise InputError(f"{key} holds fractional values; token tensors hold whole numbers (ids, 0/1 masks)")
        t = t.long()
    return t


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy of the logits (b,): the loss of a single-label classifier."""
    return F.cross_entropy(logits, labels, reduction="none")


@contextlib.contextmanager
def trainable_only(model: nn.Module, prefixes: Sequence[str] | None) -> Iterator[None]:
    """requires_grad=True exactly on parameters whose names start with a prefix; restored on exit."""
    if prefixes is None:
        yield
        return
    if isinstance(prefixes, str):  # one prefix, not its characters
        prefixes = [prefixes]
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

    def __init__(self, model: nn.Module, loss_fn: LossFn, keys: Sequence[str], *,
                 params: Sequence[str] | str | None = None, **options: Any) -> None:
        super().__init__(PackedClassifier(model, keys), loss_fn, **options)
        self.keys, self.params = tuple(keys), params

    def fit(self, train: Any) -> TransformersInfluence:
        with trainable_only(self.model.model, self.params):
            try:
                return super().fit(pack(train, self.keys))
            except InputError as error:
                raise _with_attention_hint(error, self.model.model) from error

    def plan(self, train: Any) -> dict[str, int]:
        with trainable_only(self.model.model, self.params):
            return super().plan(pack(train, self.keys))

    def test_tensors(self, test: Any) -> tuple[Tensor, Tensor]:
        return super().test_tensors(pack(test, self.keys))


def from_transformers(model: nn.Module, train: Mapping[str, Any], *, params: Sequence[str] | str | None = None,
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
    return TransformersInfluence(model, loss_fn, keys or ["input_ids"], params=params, **influence_options).fit(train)


def _with_attention_hint(error: InputError, model: nn.Module) -> InputError:
    """The error, with the fix when a fused attention kernel is what torch.func could not batch."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    if impl in (None, "eager") or "vmap" not in str(error):
        return error
    return InputError(f"{error}. This model runs attention with attn_implementation={impl!r}, a fused kernel "
                      "torch.func cannot batch per example: load it with from_pretrained(..., "
                      "attn_implementation='eager') (the same weights and outputs), or differentiate only the "
                      "parameters after the attention (e.g. params=['classifier.'])")
