"""A tiny BERT classifier (built from a config, no download) through the engine with dict batches."""

import pytest
import torch

import infl
from infl.hf import PackedClassifier, cross_entropy, from_transformers, pack
from infl.testing import dense_scores

transformers = pytest.importorskip("transformers")

HEAD = ["classifier.", "bert.encoder.layer.1.output.LayerNorm."]  # the head and the last layer's norm


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg).double().eval()


def batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 6), generator=gen)
    mask = torch.ones(n, 6, dtype=torch.long)
    mask[::3, 4:] = 0  # padded examples
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=gen)}


def test_dict_batches_on_a_parameter_subset_match_the_dense_reference():
    model, train, test = tiny_bert(), batch(20, 1), batch(3, 2)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = [p.detach().clone() for p in model.parameters()]
    inf = from_transformers(model, train, params=HEAD, l2=0.01, damping=0.5, stationarity_tol=float("inf"))
    names = inf.objective_.names
    assert names and all(n.startswith(tuple("model." + h for h in HEAD)) for n in names)
    S = inf.scores(test)
    # reference: the same subset frozen by hand, H by torch.func.hessian, dense solve
    ref_model = PackedClassifier(model, ["input_ids", "attention_mask"])
    for n, p in ref_model.named_parameters():
        p.requires_grad_(n in names)
    try:
        ref = dense_scores(ref_model, cross_entropy, pack(train, ref_model.keys), pack(test, ref_model.keys),
                           l2=0.01, damping=0.5)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    torch.testing.assert_close(S, ref, rtol=1e-6, atol=1e-9)
    # the model is left as it was: flags and values
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_batches_and_training_mode_are_refused():
    model = tiny_bert()
    with pytest.raises(infl.InputError, match=r"the batch has no \['labels'\]"):
        from_transformers(model, {k: v for k, v in batch(6, 1).items() if k != "labels"}, params=HEAD)
    with pytest.raises(infl.InputError, match="no parameter name starts with"):
        from_transformers(model, batch(6, 1), params=["head."])
    with pytest.raises(infl.InputError, match=r"call model.eval\(\)"):
        from_transformers(model.train(), batch(6, 1), params=HEAD)


def test_ekfac_on_a_transformer_factors_its_linear_layers_and_names_the_rest():
    """EK-FAC through the same path: Linear layers factored, LayerNorm on the exact diagonal (warned), close to exact."""
    model, train, test = tiny_bert(), batch(20, 1), batch(3, 2)
    params = ["classifier.", "bert.encoder.layer.1.output."]
    opts = dict(params=params, l2=0.01, damping=0.1, curvature="gauss-newton", stationarity_tol=float("inf"))
    with pytest.warns(UserWarning, match="LayerNorm.weight"):
        inf = from_transformers(model, train, solver="ekfac", **opts)
    assert len(inf.solver.factors.layers) == 2
    assert inf.solver.factors.diag_names == ["model.bert.encoder.layer.1.output.LayerNorm.weight",
                                             "model.bert.encoder.layer.1.output.LayerNorm.bias"]
    S, ref = inf.scores(test), from_transformers(model, train, solver="exact", **opts).scores(test)
    assert torch.corrcoef(torch.stack([S.reshape(-1), ref.reshape(-1)]))[0, 1] > 0.99
    assert "relative residual" in inf.info.note


def test_inputs_the_training_data_lacked_are_refused_not_dropped():
    """A test batch with token_type_ids the training batch had not was scored as if they were all 0."""
    model = tiny_bert()
    inf = from_transformers(model, batch(8, 1), params="classifier.", l2=0.01, stationarity_tol=float("inf"))
    test = batch(2, 2)
    test["token_type_ids"] = torch.ones_like(test["input_ids"])
    with pytest.raises(infl.InputError, match=r"\['token_type_ids'\], which the training data did not have"):
        inf.scores(test)


def test_one_prefix_as_a_string_is_that_prefix_and_plan_honours_params():
    """params="classifier." used to be read one character at a time as prefixes (selecting most of the model)."""
    model = tiny_bert()
    one = from_transformers(model, batch(8, 1), params="bert.pooler.", l2=0.01, damping=1.0,
                            stationarity_tol=float("inf"))
    listed = from_transformers(model, batch(8, 1), params=["bert.pooler."], l2=0.01, damping=1.0,
                               stationarity_tol=float("inf"))
    assert one.objective_.names == listed.objective_.names == ["model.bert.pooler.dense.weight",
                                                                "model.bert.pooler.dense.bias"]
    plan = one.plan(batch(8, 1))
    assert plan["Cholesky factor (72 x 72)"] == 72 * 72 * 8
    mask = batch(8, 1)
    mask["attention_mask"] = mask["attention_mask"].double()  # a 0./1. float mask is read as integers
    assert one.plan(mask) == plan


def test_a_fused_attention_kernel_gets_the_eager_fix():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3,
                                  attn_implementation="sdpa")
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    with pytest.raises(infl.InputError, match="attn_implementation='sdpa'.*attn_implementation='eager'"):
        from_transformers(model, batch(6, 1), params=["bert.pooler."], l2=0.01, damping=1.0)
