"""Two logit levers for bench.search: a per-item logit bias (model.item_bias) and a fixed
temperature (model.learn_temperature=false). Both off by default: the seed's model.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_logit_levers.py
"""
import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, SequenceModel
from train.config import TrainConfig
from train.errors import UserError
from train.evaluate import evaluate_ranking, model_scorer, target_ranks
from train.loss import SampledSoftmaxLoss
from train.negatives import CandidateSampler
from train.optim import TrainOptimizer
from train.pipeline import run

N = 30


def make(**kw) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(num_items=N, embedding_dim=8, hidden_dim=8, total_length=6, dropout=0.0,
                                     feature_dropout=0.0, **kw))


def batch():
    g = torch.Generator().manual_seed(1)
    items, targets = torch.randint(1, N + 1, (4, 6), generator=g), torch.randint(1, N + 1, (4, 6), generator=g)
    return items, torch.zeros(4, 6, 5, dtype=torch.long), targets


def test_both_are_off_by_default_and_the_bias_is_not_trained_then():
    cfg = ModelConfig.from_dict({"num_items": 5})
    assert cfg.item_bias is False and cfg.learn_temperature is True
    m = SequenceModel(cfg)
    assert not m.item_bias.requires_grad and m.w.requires_grad


def test_the_loss_adds_each_candidates_bias_to_its_logit():
    model = make(item_bias=True)
    with torch.no_grad():
        model.item_bias.copy_(torch.linspace(-2, 2, N + 1))
    items, feats, targets = batch()
    cands, pos = CandidateSampler(N, 0).sample(targets)
    loss = SampledSoftmaxLoss(model)(items, feats, targets, cands, pos)
    mask = targets > 0
    logits = model.sequence_tastes(items, feats)[mask] @ model.item_matrix()[1:].T * model.temperature()
    want = F.cross_entropy(logits + model.item_bias[1:], targets[mask] - 1)
    assert torch.allclose(loss, want, atol=1e-5)
    assert not torch.allclose(loss, F.cross_entropy(logits, targets[mask] - 1), atol=1e-3)


def test_the_evaluator_ranks_by_the_logit_cosine_times_temperature_plus_bias():
    model = make(item_bias=True).eval()
    with torch.no_grad():
        model.item_bias.copy_(torch.randn(N + 1) * 3)
        model.w.fill_(7.0)
    items, feats, targets = batch()
    lengths = torch.full((4,), 6)
    logits = model(items, feats, lengths) @ model.item_matrix().T * 7.0 + model.item_bias
    want = target_ranks(logits, targets[:, -1], items)
    got = evaluate_ranking(model_scorer(model), items, feats, lengths, targets[:, -1])
    ndcg = torch.where(want < 10, 1.0 / torch.log2(want.double() + 2.0), torch.zeros((), dtype=torch.float64))
    assert torch.allclose(torch.as_tensor(got["NDCG@10"]), ndcg)
    # the bias matters: the cosine alone ranks otherwise
    plain = target_ranks(logits - model.item_bias, targets[:, -1], items)
    assert not torch.equal(plain, want)


@pytest.mark.training
def test_a_fixed_temperature_stays_put_while_the_rest_trains():
    for learn in (True, False):
        model = make(learn_temperature=learn, init_scale=12.0).train()
        opt = TrainOptimizer(model, TrainConfig(lr=0.05))
        items, feats, targets = batch()
        cands, pos = CandidateSampler(N, 0).sample(targets)
        for _ in range(3):
            opt.zero_grad()
            SampledSoftmaxLoss(model)(items, feats, targets, cands, pos).backward()
            opt.step()
        assert (model.temperature().item() == 12.0) is (not learn)


def test_a_biased_model_is_refused_before_training_not_at_export(tmp_path):
    cfg = TrainConfig.from_dict(dict(data="synthetic", synthetic_users=50, synthetic_items=40, epochs=1,
                                     num_threads=1, model={"item_bias": True}))
    with pytest.raises(UserError, match="item_bias is for bench.search only"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
