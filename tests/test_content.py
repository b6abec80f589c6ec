"""Stage 4, item content: the encoding (train/content.py), the model's content encoder (scripted
parity, catalogue extension) and a trained cold-start vector that lands among its own category.

    .venv/bin/python -m pytest -q tests/test_content.py
"""
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from model import ModelConfig, SequenceModel
from train.config import TrainConfig
from train.content import encode_content, fit_content_spec, index_content
from train.pipeline import build_model, prepare
from train.sequences import SequentialDataset
from train.negatives import CandidateSampler
from train.trainer import fit

ITEMS = pd.DataFrame({
    "item_id": [10, 11, 12, 13],
    "genres": [["Drama", "Comedy"], "Drama|Comedy", [], None],
    "price": [10.0, 1000.0, np.nan, 0.0],
    "title": ["Toy Story (1995)", "toy STORY", None, "Heat"],
})


def spec(**kw) -> ModelConfig:
    mc = ModelConfig(num_items=4, embedding_dim=8, hidden_dim=12, total_length=6, use_content=True,
                     content_max_tokens=3, **kw)
    fit_content_spec(mc, ITEMS)
    return mc


def test_fields_are_detected_and_vocabulary_and_stats_fitted():
    mc = spec()
    assert (mc.content_categorical, mc.content_numeric, mc.content_text) == (["genres"], ["price"], ["title"])
    assert mc.content_vocab == ["genres=Comedy", "genres=Drama"]
    x = np.log1p([10.0, 1000.0, 0.0])
    assert mc.content_numeric_stats == [pytest.approx([x.mean(), x.std()])]
    with pytest.raises(ValueError, match="brand"):
        fit_content_spec(ModelConfig(content_categorical=["brand"]), ITEMS)
    with pytest.raises(ValueError, match="no content field"):
        fit_content_spec(ModelConfig(), ITEMS[["item_id"]])


def test_encoding_is_multi_hot_hashed_standardised_and_fixed_width():
    mc = spec()
    cat, text, num = encode_content(mc, ITEMS)
    assert cat.shape == text.shape == (4, 3) and num.shape == (4, 2)
    # A list and a "|" string are the same multi-hot value; empty and None are no content.
    assert cat[0].tolist() == cat[1].tolist() == [3, 2, 0] and not cat[2:].any()
    # Words are lower-cased and hashed stably (crc32, not Python's salted hash()).
    toy = zlib.crc32(b"title:toy") % mc.content_hash_buckets + 1
    assert text[0, 0] == toy and text[0, :2].tolist() == text[1, :2].tolist() and not text[2].any()
    assert text[1, 2] == 0 and text[0, 2] > 0  # "1995" is a word too; "toy STORY" has two
    mean, std = mc.content_numeric_stats[0]
    assert num[0, 0].item() == pytest.approx((np.log1p(10.0) - mean) / std, abs=1e-5)
    assert num[2].tolist() == [0.0, 1.0]  # missing price: value 0, missing flag 1
    unseen = encode_content(mc, pd.DataFrame({"item_id": [1], "genres": [["Western", "Drama"]]}))
    assert unseen[0][0].tolist() == [1, 3, 0] and unseen[2][0].tolist() == [0.0, 1.0]


def test_index_content_puts_padding_first_and_follows_the_index():
    mc = spec()
    cat, text, num = index_content(mc, ITEMS, pd.Index([11, 10, 99]))
    assert cat.shape == (4, 3) and not cat[0].any()
    assert cat[1].tolist() == cat[2].tolist() and not cat[3].any()  # 99 has no row: no content


def content_model(**kw) -> SequenceModel:
    mc = spec(use_time=True, use_event_type=True, event_types=["view"], **kw)
    return SequenceModel(mc, item_content=index_content(mc, ITEMS, pd.Index([10, 11, 12, 13]))).eval()


def test_content_model_scripts_with_the_same_scores_and_extends_without_retraining():
    m = content_model()
    s = torch.jit.script(m)
    hist = [[1, 2, 3], [4, 1], [2]]
    feats = [s.encode_events([float(t) for t in range(len(h))], ["view"] * len(h), [""] * len(h), [0.0] * len(h), 1e4) for h in hist]
    args = s.pad(hist, feats)
    assert torch.allclose(s(*args), m(*args), atol=1e-6)
    assert torch.allclose(s.item_matrix(), m.item_matrix(), atol=1e-6) and s.item_matrix().shape == (5, 8)
    before = s.item_matrix()
    # A catalogue update: two new items (indices 5, 6) with content only.
    mc = spec()
    new = encode_content(mc, pd.DataFrame({"item_id": [20, 21], "genres": [["Drama"], ["Comedy"]],
                                           "price": [5.0, 50.0], "title": ["new", "newer"]}))
    s.set_item_content(*(torch.cat([old, x]) for old, x in zip((s.item_categorical, s.item_text, s.item_numeric), new)))
    after = s.item_matrix()
    assert after.shape == (7, 8) and torch.allclose(after[:5], before, atol=1e-6)
    assert torch.allclose(after[5:].norm(dim=1), torch.ones(2), atol=1e-5)
    # New items as history inputs work and give unit tastes.
    taste = s(*s.pad([[5, 6, 1]], [[]]))
    assert torch.allclose(taste.norm(dim=1), torch.ones(1), atol=1e-5)
    with pytest.raises(Exception):
        s.set_item_content(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2))


def test_id_dropout_only_in_training_and_content_needs_content():
    m = content_model(id_dropout=0.5)
    with torch.no_grad():
        m.content_scale.fill_(0.5)
    idx = torch.tensor([1, 2, 3, 4] * 50)
    assert torch.equal(m.item_vectors(idx), m.item_vectors(idx))  # eval: deterministic
    m.train()
    a = m.item_vectors(idx)
    content = m.content_encoder(m.item_categorical[idx], m.item_text[idx], m.item_numeric[idx])
    full = torch.nn.functional.normalize(m.item_embedding(idx) + 0.5 * content, dim=-1)
    dropped = torch.isclose(a, torch.nn.functional.normalize(content, dim=-1), atol=1e-6).all(dim=1)
    kept = torch.isclose(a, full, atol=1e-6).all(dim=1)
    assert bool((dropped | kept).all()) and 0.3 < dropped.float().mean() < 0.7
    with pytest.raises(ValueError, match="item_content"):
        SequenceModel(ModelConfig(num_items=4, use_content=True))


def test_disabled_content_is_not_trainable():
    m = SequenceModel(ModelConfig(num_items=5, embedding_dim=8))
    assert not any(p.requires_grad for p in m.content_encoder.parameters())


@pytest.fixture(scope="module")
def trained_synthetic():
    """A small content model trained on the synthetic marketplace (category + price)."""
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict(dict(data="synthetic", synthetic_users=1000, synthetic_items=300, epochs=6,
                                     batch_size=32, lr=0.005, sample_size=256, patience=10,
                                     model={"embedding_dim": 32, "hidden_dim": 64, "total_length": 20,
                                            "use_content": True}))
    prep = prepare(cfg)
    model = build_model(cfg, prep)
    data = SequentialDataset(model, prep.cols, prep.split.train)
    sampler = CandidateSampler(len(prep.index), cfg.sample_size)
    fit(model, data, cfg, sampler, None)  # no validation: keep the last epoch, not the first
    return cfg, prep, model.eval()


@pytest.mark.training
def test_cold_start_item_is_recommended_to_its_own_category(trained_synthetic):
    cfg, prep, model = trained_synthetic
    items = prep.items.set_index("item_id").reindex(prep.index.ids).reset_index()
    cats = sorted(items["category"].unique())
    # One brand-new listing per category, at that category's median price, content only.
    new = pd.DataFrame({"item_id": range(900, 900 + len(cats)), "category": cats,
                        "price": [items.loc[items["category"] == c, "price"].median() for c in cats]})
    c, t, n = encode_content(cfg.model, new)
    model.set_item_content(torch.cat([model.item_categorical, c]), torch.cat([model.item_text, t]),
                           torch.cat([model.item_numeric, n]))
    with torch.no_grad():
        fresh = model.item_matrix()[len(items) + 1:]
        # A user who just looked at the three most popular trained items of category c ...
        hist = [(np.flatnonzero(items["category"].to_numpy() == cat)[np.argsort(
            -prep.popularity[1:][items["category"].to_numpy() == cat])[:3]] + 1).tolist() for cat in cats]
        taste = model(*model.pad(hist, [[] for _ in hist]))
    scores = (taste @ fresh.T).numpy()                                  # (categories, new items)
    # ... ranks the new listing of category c near the top of the 12 new listings: at random it
    # would come first 1 time in 12, at rank 5.5 on average (0-based). (This run, seeds 0-7: first
    # for 10-11 of 12 categories, mean rank 0.2-1.0.)
    rank = (scores > np.diag(scores)[:, None]).sum(axis=1)
    assert (rank == 0).mean() >= 0.75 and rank.mean() < 1.5
    assert np.allclose(np.linalg.norm(fresh.numpy(), axis=1), 1, atol=1e-5)
