"""Reduce-on-plateau (TrainConfig.lr_decay): the learning rate drops after each validation without a
new best, reaches both optimizers (CatchUpAdam included), survives a resume, and a refit replays
the first fit's rates epoch by epoch."""
import numpy as np
import pytest
import torch

from train.config import TrainConfig
from train.errors import UserError
from train.negatives import CandidateSampler
from train.optim import TrainOptimizer
from train.pipeline import build_model, prepare, run
from train.sequences import SequentialDataset
from train.trainer import fit

SMALL = dict(data="synthetic", synthetic_users=300, synthetic_items=200, batch_size=64, lr=0.01,
             sample_size=128, model={"embedding_dim": 8, "hidden_dim": 16, "total_length": 12})


def test_config_takes_decay_in_zero_one():
    assert TrainConfig().lr_decay == 1.0
    assert TrainConfig.from_dict({"lr_decay": 0.5}).lr_decay == 0.5
    for bad in (0, 1.5, -0.1):
        with pytest.raises(UserError, match="lr_decay"):
            TrainConfig.from_dict({"lr_decay": bad})


def _fit(cfg, curve):
    """fit() on the small synthetic log with a scripted validation curve (NDCG@10 per epoch)."""
    prep = prepare(cfg)
    model = build_model(cfg, prep)
    data = SequentialDataset(model, prep.cols, prep.split.train)
    sampler = CandidateSampler(len(prep.index), cfg.sample_size)
    seen = iter(curve)
    return fit(model, data, cfg, sampler, lambda m: {"NDCG@10": next(seen)})


@pytest.mark.training
def test_lr_drops_after_each_validation_without_a_new_best():
    cfg = TrainConfig.from_dict({**SMALL, "epochs": 6, "patience": 3, "lr_decay": 0.5})
    hist = _fit(cfg, [0.1, 0.2, 0.15, 0.3, 0.25, 0.2])
    assert [row["lr"] for row in hist.epochs] == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025])
    assert hist.lr == pytest.approx(0.00125) and hist.best_epoch == 4
    constant = _fit(TrainConfig.from_dict({**SMALL, "epochs": 3, "patience": 3}), [0.3, 0.2, 0.1])
    assert [row["lr"] for row in constant.epochs] == [0.01] * 3


def test_set_lr_reaches_every_optimizer():
    for kind in ("sparse_adam", "lazy_adam", "adam"):
        cfg = TrainConfig.from_dict({**SMALL, "item_optimizer": kind})
        model = build_model(cfg, prepare(cfg))
        opt = TrainOptimizer(model, cfg)
        opt.set_lr(0.002)
        groups = list(opt.dense.param_groups)
        if kind == "lazy_adam":
            groups += opt.items.param_groups
        assert all(g["lr"] == 0.002 for g in groups)
        if kind == "sparse_adam":
            assert opt.items.lr == 0.002


@pytest.mark.training
def test_decayed_run_resumes_bit_for_bit_and_refit_replays_the_rates(tmp_path):
    def cfg(epochs):  # lr 0.05 on 300 users: validation dips at epoch 3, then improves to the end
        return TrainConfig.from_dict({**SMALL, "lr": 0.05, "epochs": epochs, "patience": 8, "lr_decay": 0.3,
                                      "refit_on_validation": True})
    run(cfg(6), tmp_path / "a")
    run(cfg(3), tmp_path / "b")
    summary = run(cfg(6), tmp_path / "b")  # resumes at epoch 4, at the rate decayed after epoch 3
    assert np.array_equal(np.load(tmp_path / "a" / "item_vectors.npy"), np.load(tmp_path / "b" / "item_vectors.npy"))
    first, refit = summary["fits"][0], summary["fits"][1]
    rates = [row["lr"] for row in first["validation_curve"]]
    best = first["best_epoch"]
    assert len(set(rates[:best])) > 1, f"no decay before the best epoch, the replay is untested: {rates}"
    assert [row["lr"] for row in refit["validation_curve"]] == rates[:best]


@pytest.mark.training
def test_given_schedule_sets_each_epochs_rate():
    cfg = TrainConfig.from_dict({**SMALL, "epochs": 3, "lr_decay": 0.5})
    prep = prepare(cfg)
    model = build_model(cfg, prep)
    data = SequentialDataset(model, prep.cols, prep.split.train)
    hist = fit(model, data, cfg, CandidateSampler(len(prep.index), cfg.sample_size), None, None, [0.01, 0.004])
    assert [row["lr"] for row in hist.epochs] == [0.01, 0.004, 0.004]
    # ... and the optimizers use it: at a vanishing rate neither the LSTM nor the item table moves
    still = build_model(cfg, prep)
    before = {k: v.clone() for k, v in still.state_dict().items()}
    fit(still, data, cfg, CandidateSampler(len(prep.index), cfg.sample_size), None, None, [1e-12])
    for name, value in still.state_dict().items():
        assert torch.allclose(value, before[name], atol=1e-6), name
