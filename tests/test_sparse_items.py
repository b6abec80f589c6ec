"""The item table's optimizers (train/optim.py): the sparse ones move only the rows a step touched;
CatchUpAdam (the default) follows dense Adam's trajectory, lazy SparseAdam does not; rows stay at
norm <= 1; all resume bit for bit; the config refuses what the sparse ones cannot do.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_sparse_items.py
"""
import copy

import numpy as np
import pytest
import torch

from model import ModelConfig, SequenceModel
from train.config import TrainConfig
from train.errors import UserError
from train.loss import SampledSoftmaxLoss
from train.negatives import CandidateSampler
from train.optim import TrainOptimizer
from train.pipeline import run

N = 400


def setup(item_optimizer: str, seed: int = 0, **model):
    torch.manual_seed(seed)
    m = SequenceModel(ModelConfig(num_items=N, embedding_dim=8, hidden_dim=16, total_length=10, **model))
    cfg = TrainConfig(lr=0.01, item_optimizer=item_optimizer)
    return m, cfg


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 60, (8, 10), generator=g)       # histories use items 1..59 only
    targets = torch.randint(1, 60, (8, 10), generator=g)
    items[:, 7:] = 0; targets[:, 7:] = 0
    cands, pos = CandidateSampler(N, 32).sample(targets, g)
    return items, torch.zeros(8, 10, 5, dtype=torch.long), targets, cands, pos


def steps(m, cfg, n: int):
    opt, loss = TrainOptimizer(m, cfg), SampledSoftmaxLoss(m)
    torch.manual_seed(1)  # the same dropout masks in every run
    touched = set()
    for s in range(n):
        items, feats, targets, cands, pos = batch(s)
        touched |= set(items.unique().tolist()) | set(cands.tolist())
        opt.zero_grad()
        loss(items, feats, targets, cands, pos).backward()
        opt.step()
    return opt, touched


@pytest.mark.training
def test_sparse_moves_only_touched_rows_and_keeps_them_on_the_unit_ball():
    m, cfg = setup("sparse_adam")
    before = m.item_embedding.weight.detach().clone()
    opt, touched = steps(m, cfg, 5)
    assert m.item_embedding.weight.grad.is_sparse
    w = m.item_embedding.weight.detach()
    moved = set((w != before).any(dim=1).nonzero().flatten().tolist())
    assert moved and moved <= touched and len(moved) > len(touched) // 2
    assert (w.norm(dim=1) <= 1 + 1e-6).all() and w[0].abs().sum() == 0
    opt.release()
    assert not m.item_embedding.sparse


@pytest.mark.training
def test_dense_reference_is_dense_and_renorms_every_row():
    m, cfg = setup("adam")
    steps(m, cfg, 5)
    assert not m.item_embedding.weight.grad.is_sparse
    assert (m.item_embedding.weight.detach().norm(dim=1) <= 1 + 1e-6).all()


@pytest.mark.training
def test_first_step_is_the_same_in_both_paths():
    # Same init and lr semantics: the same gradient, summed in another order; at step 1 Adam and
    # SparseAdam give every touched row the same update, lr * g / (|g| + eps) (SparseAdam's eps
    # sits before the bias correction, ~30x larger at step 1: entries with a tiny gradient are left
    # out), and dense Adam moves no untouched row yet (its momentum is still zero).
    sparse, cfg_s = setup("sparse_adam")
    dense, cfg_d = setup("adam")
    assert torch.equal(sparse.item_embedding.weight, dense.item_embedding.weight)
    steps(sparse, cfg_s, 1)
    steps(dense, cfg_d, 1)
    g_sparse = sparse.item_embedding.weight.grad.to_dense()
    g_dense = dense.item_embedding.weight.grad
    assert torch.allclose(g_sparse, g_dense, atol=1e-7)
    clear = g_dense.abs() > 1e-3
    assert clear.sum() > 0.5 * (g_dense != 0).sum()
    a, b = sparse.item_embedding.weight.detach(), dense.item_embedding.weight.detach()
    assert torch.allclose(a[clear], b[clear], atol=2e-5)
    assert torch.allclose(a[g_dense.abs().sum(1) == 0], b[g_dense.abs().sum(1) == 0], atol=1e-6)
    for (name, x), y in zip(sparse.state_dict().items(), dense.state_dict().values()):
        if name != "item_embedding.weight":
            assert torch.allclose(x, y, atol=1e-6), name


@pytest.mark.training
def test_optimizer_state_round_trips_to_the_same_next_step():
    for kind in ("sparse_adam", "lazy_adam", "adam"):
        m, cfg = setup(kind)
        opt, _ = steps(m, cfg, 3)
        twin = copy.deepcopy(m)
        twin_opt = TrainOptimizer(twin, cfg)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for model, o in ((m, opt), (twin, twin_opt)):
            items, feats, targets, cands, pos = batch(99)
            torch.manual_seed(1)  # the same dropout masks
            o.zero_grad()
            SampledSoftmaxLoss(model)(items, feats, targets, cands, pos).backward()
            o.step()
        for a, b in zip(m.state_dict().values(), twin.state_dict().values()):
            assert torch.equal(a, b), kind


@pytest.mark.training
def test_an_item_optimizer_state_of_another_kind_is_refused_with_what_to_do():
    m, cfg = setup("lazy_adam")
    opt, _ = steps(m, cfg, 1)
    m2, cfg2 = setup("sparse_adam")
    with pytest.raises(UserError, match="older version.*--fresh"):
        TrainOptimizer(m2, cfg2).load_state_dict(opt.state_dict())


@pytest.mark.training
def test_frozen_table_is_in_no_optimizer():
    vec = torch.randn(N + 1, 8)
    torch.manual_seed(0)
    frozen = SequenceModel(ModelConfig(num_items=N, embedding_dim=8, hidden_dim=16, total_length=10,
                                       freeze_item_vectors=True), vec)
    before = frozen.item_embedding.weight.detach().clone()
    opt, _ = steps(frozen, TrainConfig(lr=0.01), 2)
    assert opt.items is None and torch.equal(frozen.item_embedding.weight, before)


SMALL = dict(data="synthetic", synthetic_users=300, synthetic_items=200, batch_size=64, lr=0.005,
             sample_size=128, patience=10, model={"embedding_dim": 8, "hidden_dim": 16, "total_length": 12})


@pytest.mark.training
def test_dense_reference_resumes_bit_for_bit(tmp_path):
    def cfg(epochs):
        return TrainConfig.from_dict({**SMALL, "epochs": epochs, "item_optimizer": "adam"})
    run(cfg(2), tmp_path / "a")
    run(cfg(1), tmp_path / "b")
    run(cfg(2), tmp_path / "b")  # resumes at epoch 2
    assert np.array_equal(np.load(tmp_path / "a" / "item_vectors.npy"), np.load(tmp_path / "b" / "item_vectors.npy"))


def test_config_refuses_weight_decay_with_sparse_adam_and_unknown_optimizers():
    with pytest.raises(UserError, match="weight_decay.*item_optimizer='adam'"):
        TrainConfig.from_dict({"weight_decay": 0.01})
    assert TrainConfig.from_dict({"weight_decay": 0.01, "item_optimizer": "adam"}).weight_decay == 0.01
    with pytest.raises(UserError, match="item_optimizer"):
        TrainConfig.from_dict({"item_optimizer": "sgd"})
    assert TrainConfig().item_optimizer == "sparse_adam"


@pytest.mark.training
def test_catchup_adam_follows_dense_adam_at_the_cost_of_touched_rows():
    # Rows touched at very different rates (some every step, some once in ~100 steps, some never):
    # after a step the rows it touched, and after flush() every row, are where dense Adam has them.
    # torch's lazy SparseAdam is far off on the same gradients: what the catch-up is for.
    from train.catchup_adam import CatchUpAdam
    g = torch.Generator().manual_seed(0)
    n, d, steps_ = 60, 4, 400
    init = torch.randn(n, d, generator=g)
    dense_p = init.clone().requires_grad_()
    catch_p = init.clone().requires_grad_()
    lazy_p = init.clone().requires_grad_()
    dense, catch = torch.optim.Adam([dense_p], lr=0.01), CatchUpAdam(catch_p, lr=0.01)
    lazy = torch.optim.SparseAdam([lazy_p], lr=0.01)
    rate = torch.linspace(1.0, 0.01, n); rate[-5:] = 0
    for _ in range(steps_):
        rows = (torch.rand(n, generator=g) < rate).nonzero().flatten()
        vals = torch.randn(len(rows), d, generator=g) * 0.1 + 0.05
        sparse = torch.sparse_coo_tensor(rows[None], vals, (n, d), check_invariants=True)
        dense_p.grad, catch_p.grad, lazy_p.grad = sparse.to_dense(), sparse.clone(), sparse.clone()
        dense.step(); lazy.step()
        moved = catch.step()
        assert torch.equal(moved.sort().values, rows)
        assert torch.allclose(catch_p[rows], dense_p[rows], rtol=1e-4, atol=1e-5)
    catch.flush()
    assert torch.allclose(catch_p, dense_p, rtol=1e-4, atol=1e-5)
    assert torch.equal(catch_p[-5:], init[-5:])
    assert (lazy_p - dense_p).abs().max() > 100 * (catch_p - dense_p).abs().max()
