import math

import pytest
import torch
import torch.nn.functional as F

from model import ConfigError, ModelConfig, SequenceModel, pad_batch


def make(**kw):
    cfg = ModelConfig(num_items=50, embedding_dim=8, hidden_dim=12, total_length=6, **kw)
    return SequenceModel(cfg).eval()


def test_pad_truncates_front_and_pads_end():
    items, feats, lengths = pad_batch([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10], []], [[], [], []], 5, 4)
    assert items.tolist() == [[4, 5, 6, 7, 8], [9, 10, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert lengths.tolist() == [5, 2, 0]
    assert feats.shape == (3, 5, 4) and int(feats.abs().sum()) == 0


def test_pad_keeps_features_aligned_with_items():
    f = [[i, i, i, i] for i in range(1, 9)]
    _, feats, _ = pad_batch([list(range(1, 9))], [f], 5, 4)
    assert feats[0, :, 0].tolist() == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError):
        pad_batch([[1, 2]], [[[1, 1, 1, 1]]], 5, 4)


@pytest.mark.parametrize("features", [False, True])
def test_scripted_model_matches_eager(features):
    kw = dict(use_time=True, use_event_type=True, use_source=True, use_strength=True, event_types=["view", "buy"],
              sources=["feed"], strength_edges=[2.0, 4.0]) if features else {}
    m = make(**kw)
    s = torch.jit.script(m)
    hist = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12]]
    feats = [s.encode_events([float(t) for t in range(len(h))], ["view"] * len(h), ["x"] * len(h),
                             [float(t) for t in range(len(h))], 1e5) for h in hist]
    assert feats == [m.encode_events([float(t) for t in range(len(h))], ["view"] * len(h), ["x"] * len(h),
                                     [float(t) for t in range(len(h))], 1e5) for h in hist]
    a, b = s.pad(hist, feats), m.pad(hist, feats)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ts, te = s(*a), m(*b)
    assert torch.allclose(ts, te, atol=1e-6)
    assert torch.allclose(s.score(ts @ s.item_matrix().T), m.score(te @ m.item_matrix().T), atol=1e-6)
    assert torch.allclose(ts.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_unknown_event_strings_map_to_unknown_id():
    m = make(use_event_type=True, use_source=True, event_types=["view"], sources=["feed"])
    rows = m.encode_events([0.0, 0.0], ["view", "never-seen"], ["feed", ""], [1.0, 1.0], 0.0)
    assert [r[2] for r in rows] == [2, 1] and [r[3] for r in rows] == [2, 1]
    assert [r[4] for r in rows] == [0, 0]  # strength not used by this model


def test_strength_buckets_scripted_like_eager():
    import math
    m = make(use_strength=True, strength_edges=[1.0, 2.5, 4.0])
    s = torch.jit.script(m)
    values = [math.nan, -3.0, 0.5, 1.0, 2.4, 2.5, 4.0, 99.0]
    rows = s.encode_events([0.0] * 8, [""] * 8, [""] * 8, values, 0.0)
    assert rows == m.encode_events([0.0] * 8, [""] * 8, [""] * 8, values, 0.0)
    # 1 unknown (not given), then 2 + the number of edges <= value
    assert [r[4] for r in rows] == [1, 2, 2, 3, 3, 4, 5, 5] and m.strength_embedding.num_embeddings == 6


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_dict({"hidden_size": 3})


def test_frozen_pretrained_vectors_do_not_move():
    vec = torch.randn(51, 8)
    m = SequenceModel(ModelConfig(num_items=50, embedding_dim=8, freeze_item_vectors=True), vec)
    assert not m.item_embedding.weight.requires_grad
    assert torch.allclose(m.item_matrix()[1:], torch.nn.functional.normalize(vec[1:], dim=-1), atol=1e-6)
    with pytest.raises(ValueError):
        SequenceModel(ModelConfig(num_items=50, embedding_dim=8), torch.randn(10, 8))


def test_score_is_monotone_in_cosine():
    m = make()
    c = torch.linspace(-1, 1, 101)
    s = m.score(c)
    assert bool((s[1:] >= s[:-1]).all())


def test_time_buckets_and_age_reference_scripted_like_eager():
    import math
    ts = [math.nan, 0.0, 30.0, 100.0, 5000.0]
    for ref, ages in (("next", [1, 2, 3, 9, 7]), ("now", [1, 9, 9, 9, 7])):
        m = make(use_time=True, age_reference=ref)
        s = torch.jit.script(m)
        rows = s.encode_events(ts, [""] * 5, [""] * 5, [0.0] * 5, 6000.0)
        assert rows == m.encode_events(ts, [""] * 5, [""] * 5, [0.0] * 5, 6000.0)
        # 1 unknown (NaN, or a negative duration), 2 under a minute, 3 = 1-2 minutes, ...
        assert [r[0] for r in rows] == ages and [r[1] for r in rows] == [1, 1, 2, 3, 9]
    with pytest.raises(ValueError, match="age_reference"):
        ModelConfig(age_reference="then")


def test_feature_dropout_only_in_training():
    m = make(use_event_type=True, event_types=["view"], feature_dropout=0.5, dropout=0.0)
    items, feats, lengths = m.pad([[1, 2, 3, 4, 5, 6]], [m.encode_events([0.0] * 6, ["view"] * 6, [""] * 6, [0.0] * 6, 0.0)])
    assert torch.equal(m(items, feats, lengths), m(items, feats, lengths))
    m.train()
    torch.manual_seed(0)
    outs = {tuple(m.sequence_tastes(items, feats)[0, -1].tolist()) for _ in range(5)}
    assert len(outs) > 1


def test_item_input_dropout_drops_whole_events_in_training_only():
    m = make(item_input_dropout=0.5, dropout=0.0)
    m.item_input_dropout = 1.0  # the config allows < 1; here every event is dropped
    a, fa, la = m.pad([[1, 2, 3]], [[]])
    b, fb, lb = m.pad([[4, 5, 6]], [[]])
    assert not torch.allclose(m(a, fa, la), m(b, fb, lb))  # eval: every item counts
    m.train()  # every item dropped: the taste is a padding history's, whatever the items
    assert torch.allclose(m(a, fa, la), m(b, fb, lb))
    pad, fp, _ = m.pad([[0, 0, 0]], [[]])
    assert torch.allclose(m(a, fa, la), m(pad, fp, la))
    half = make(item_input_dropout=0.5, dropout=0.0).train()
    torch.manual_seed(0)
    outs = {tuple(half(a, fa, la)[0].tolist()) for _ in range(8)}
    assert len(outs) > 1
    torch.jit.script(half)  # the option scripts (serving never trains, so it never draws)
    with pytest.raises(ConfigError, match="item_input_dropout"):
        ModelConfig(num_items=5, item_input_dropout=1.5)


def test_lstm_gate_biases_are_a_switch_off_by_default():
    # The seed's LSTM has no biases; configs saved before the switch existed read as the seed's.
    assert not any("bias" in n for n, _ in make().lstm.named_parameters())
    assert ModelConfig.from_dict({"num_items": 5}).lstm_bias is False
    m = make(lstm_bias=True)
    biases = [p for n, p in m.lstm.named_parameters() if "bias" in n]
    assert len(biases) == 2 and all(p.requires_grad for p in biases)
    items, feats, lengths = m.pad([[1, 2, 3], [4]], [[], []])
    m(items, feats, lengths).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in biases)
    m.eval()
    s = torch.jit.script(m)
    assert torch.allclose(s(items, feats, lengths), m(items, feats, lengths), atol=1e-6)


def test_residual_adds_the_last_item_to_the_taste_and_scripts():
    # Off by default (configs saved before the switch read as the seed's model); on, the taste at
    # a position is normalize(projection + that position's item vector), eager and scripted alike.
    assert ModelConfig.from_dict({"num_items": 5}).residual is False
    torch.manual_seed(0)
    plain = make(dropout=0.0)
    torch.manual_seed(0)
    skip = make(dropout=0.0, residual=True)
    items, feats, lengths = skip.pad([[1, 2, 3], [4]], [[], []])
    h, _ = skip.lstm(skip.item_embedding(items))
    expected = F.normalize(skip.rnn2item(h) + skip.item_embedding(items), dim=-1)
    assert torch.allclose(skip.sequence_tastes(items, feats), expected, atol=1e-6)
    assert not torch.allclose(skip(items, feats, lengths), plain(items, feats, lengths), atol=1e-3)
    s = torch.jit.script(skip)
    assert torch.allclose(s(items, feats, lengths), skip(items, feats, lengths), atol=1e-6)


def test_attention_readout_is_causal_and_scripts():
    # Off by default; on, a position's taste depends on the events up to it only (padding after a
    # history and later events leave it alone), eager and scripted alike.
    assert ModelConfig.from_dict({"num_items": 5}).attention is False
    assert not make().attn_query.weight.requires_grad
    torch.manual_seed(0)
    model = make(dropout=0.0, attention=True).eval()
    assert model.attn_query.weight.requires_grad and model.rnn2item.in_features == 2 * model.lstm.hidden_size
    items, feats, lengths = model.pad([[1, 2, 3, 4], [1, 2]], [[], []])
    tastes = model.sequence_tastes(items, feats)
    assert torch.allclose(tastes[0, :2], tastes[1, :2], atol=1e-6)   # same prefix, same tastes
    assert not torch.allclose(tastes[0, 3], tastes[0, 2], atol=1e-3)
    h, _ = model.lstm(model.item_embedding(items[:1, :3]))
    weights = torch.softmax(model.attn_query(h[0, 2]) @ model.attn_key(h[0]).T / h.size(-1) ** 0.5, dim=0)
    expected = F.normalize(model.rnn2item(torch.cat([h[0, 2], weights @ h[0]])), dim=-1)
    assert torch.allclose(tastes[0, 2], expected, atol=1e-5)
    s = torch.jit.script(model)
    assert torch.allclose(s(items, feats, lengths), model(items, feats, lengths), atol=1e-6)


def test_position_temperature_scales_each_positions_logits_and_leaves_ranking_alone():
    # Off: the factor is 1 everywhere. On: it starts at 1 (the same loss as off), a learned factor
    # multiplies |w| in the loss, and the unit tastes (what ranking and serving use) are unchanged.
    from train.loss import SampledSoftmaxLoss
    assert ModelConfig.from_dict({"num_items": 5}).position_temperature is False
    with pytest.raises(ConfigError, match="position_temperature"):
        ModelConfig(num_items=5, position_temperature=True, item_bias=True)
    torch.manual_seed(0)
    plain = make(dropout=0.0)
    torch.manual_seed(0)
    model = make(dropout=0.0, position_temperature=True)
    items, feats, lengths = model.pad([[1, 2, 3], [4, 5]], [[], []])
    targets = torch.tensor([[2, 3, 9, 0, 0, 0], [5, 7, 0, 0, 0, 0]])
    cands = torch.arange(1, 51)
    pos = (targets - 1).clamp(min=0)
    loss = lambda m: SampledSoftmaxLoss(m)(items, feats, targets, cands, pos).item()
    assert loss(model) == pytest.approx(loss(plain), rel=1e-6)
    with torch.no_grad():
        model.sharpness.bias.fill_(math.log(math.e ** 2 - 1.0))  # factor 2
        plain.w.mul_(2.0)
    assert torch.allclose(model.tastes_and_sharpness(items, feats)[1], torch.full((2, 6, 1), 2.0))
    assert loss(model) == pytest.approx(loss(plain), rel=1e-5)
    assert torch.allclose(model(items, feats, lengths), plain(items, feats, lengths), atol=1e-6)
    s = torch.jit.script(model)
    assert torch.allclose(s(items, feats, lengths), model(items, feats, lengths), atol=1e-6)


def test_search_only_modules_leave_the_seeds_random_stream_alone():
    # Their weights come from a forked generator, so the seed's model and every draw after building
    # it (dropout, batches) are what they were before the options existed: the values below were
    # printed at b07d75c, the last commit without them. position_temperature on leaves the stream
    # alone too (attention on widens rnn2item, which draws more).
    for kw in ({}, {"position_temperature": True}):
        torch.manual_seed(0)
        m = make(**kw)
        assert m.rnn2item.weight.sum().item() == pytest.approx(0.9558752179145813, abs=1e-6)
        assert torch.allclose(torch.rand(3), torch.tensor([0.12460219860076904, 0.7357961535453796, 0.864619255065918]))
