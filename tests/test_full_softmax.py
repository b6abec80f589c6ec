"""Full softmax (sample_size 0): every item is a candidate, so the training loss is the exact
cross-entropy over the catalogue.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_full_softmax.py
"""
import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, SequenceModel
from train.config import TrainConfig
from train.errors import UserError
from train.loss import SampledSoftmaxLoss
from train.negatives import CandidateSampler
from train.pipeline import run


def test_every_item_is_a_candidate_and_a_target_sits_at_its_index():
    targets = torch.tensor([[3, 1, 0], [7, 0, 0]])
    cands, pos = CandidateSampler(7, 0).sample(targets, torch.Generator().manual_seed(0))
    assert cands.tolist() == list(range(1, 8))
    mask = targets > 0
    assert torch.equal(cands[pos[mask]], targets[mask])  # what the loss reads: the target's column


def test_the_config_takes_zero_and_refuses_what_cannot_mean_anything():
    assert TrainConfig(sample_size=0).sample_size == 0
    with pytest.raises(UserError, match=r"sample_size must be an integer >= 0, got -1"):
        TrainConfig().override(["sample_size=-1"])
    with pytest.raises(UserError, match="0 .every item a candidate. samples nothing, so negatives must be 'uniform'"):
        TrainConfig().override(["sample_size=0", "negatives=popularity"])
    with pytest.raises(ValueError):
        CandidateSampler(10, 0, torch.ones(11), mode="popularity")


def test_the_loss_is_cross_entropy_over_every_item():
    torch.manual_seed(0)
    n = 25
    mc = ModelConfig(num_items=n, embedding_dim=8, hidden_dim=8, total_length=6, dropout=0.0, feature_dropout=0.0)
    model = SequenceModel(mc)
    items, targets = torch.randint(1, n + 1, (3, 6)), torch.randint(1, n + 1, (3, 6))
    targets[1, 3:] = 0
    feats = torch.zeros(3, 6, 5, dtype=torch.long)
    cands, pos = CandidateSampler(n, 0).sample(targets)
    loss = SampledSoftmaxLoss(model)(items, feats, targets, cands, pos)
    # Directly: cosine with every item row of the model's matrix (row 0, padding, is no item).
    mask = targets > 0
    tastes = model.sequence_tastes(items, feats)[mask]
    logits = tastes @ model.item_matrix()[1:].T * model.temperature()
    want = F.cross_entropy(logits, targets[mask] - 1)
    assert torch.allclose(loss, want, atol=1e-6)
    # and not a sampled subset that happens to agree: a smaller candidate set gives another loss
    few, few_pos = CandidateSampler(n, 5).sample(targets, torch.Generator().manual_seed(0))
    if few.numel() < n:
        assert not torch.allclose(SampledSoftmaxLoss(model)(items, feats, targets, few, few_pos), want)


@pytest.mark.training
def test_training_with_full_softmax_is_finite_and_learns(tmp_path):
    cfg = TrainConfig.from_dict(dict(data="synthetic", synthetic_users=200, synthetic_items=100, epochs=4,
                                     patience=10, batch_size=32, lr=0.01, sample_size=0, num_threads=1,
                                     index="none", model={"embedding_dim": 8, "hidden_dim": 16, "total_length": 10}))
    s = run(cfg, tmp_path / "out")
    losses = [e["loss"] for e in s["fits"][0]["validation_curve"]]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses
