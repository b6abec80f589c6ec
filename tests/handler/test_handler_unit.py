"""The handler in process, driven the way TorchServe drives it (ts.context.Context, per-request
RequestProcessors, the real metrics cache): contract, batching, ranking, integrity.

    .venv/bin/python -m pytest -q tests/handler/test_handler_unit.py
"""
import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from handler_fixtures import TOTAL_LENGTH, load_handler, make_export, run_batch
from handler.seqrec_scoring import chunked_topk, plain_topk
from ts.context import RequestProcessor


def ask(loaded, *bodies):
    """-> [(status, parsed JSON)] for one batch."""
    h, ctx = loaded
    out = run_batch(h, ctx, list(bodies))
    assert len(out) == len(bodies) and all(isinstance(o, str) for o in out)
    return [(ctx.get_response_status(i)[0], json.loads(o)) for i, o in enumerate(out)]


def ids_of(resp):
    return [it["item_id"] for it in resp["items"]]


def catalogue_ids(h, which="available"):
    cat = h.catalogue
    if which == "available":
        return cat.decode(cat.rows.numpy())
    return cat.raw_ids.tolist()


# ---- contract: batching and per-request errors
def test_batch_answers_every_request_and_400s_only_the_bad_ones(loaded):
    h, _ = loaded
    good = {"history": catalogue_ids(h)[:5], "k": 3}
    res = ask(loaded, good, {"history": [1000], "k": 0}, good, b"{not json", {"history": [], "k": 2})
    assert [s for s, _ in res] == [200, 400, 200, 400, 200]
    for s, body in res:
        if s == 400:
            assert body["code"] == 400 and body["type"] == "BadRequest" and body["message"]
        else:
            assert body["model"] == "seqrec" and body["model_version"] == "1.0"
    assert res[0][1] == res[2][1]
    assert len(res[0][1]["items"]) == 3 and res[4][1]["fallback"] == "popular"


BAD = [
    (b"{not json", "not valid JSON"),
    (b'{"history": [NaN]}', "NaN is not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"", "empty"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"history": [1e400]}', "history[0]"),
    (b'{"history": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ([1, 2], "must be a JSON object"),
    ({}, "'history' is required"),
    ({"history": [1], "bogus": 1}, "unknown field(s) ['bogus']"),
    ({"history": "1,2"}, "history must be a list"),
    ({"history": [True]}, "history[0]"),
    ({"history": [1, 1.5]}, "history[1]"),
    ({"history": [float("nan")]}, "history[0]"),
    ({"history": [None]}, "history[0]"),
    ({"history": [[1]]}, "history[0]"),
    ({"history": [{"item_id": 1, "timestamp": float("nan")}]}, "history[0].timestamp must be a finite"),
    ({"history": [{"item_id": 1, "timestamp": float("inf")}]}, "history[0].timestamp must be a finite"),
    ({"history": [{"item_id": 1, "timestamp": "yesterday"}]}, "history[0].timestamp must be a number"),
    ({"history": [{"item_id": 1, "colour": "red"}]}, "history[0]: unknown field(s) ['colour']"),
    ({"history": [{"timestamp": 1}]}, "history[0]: an event needs 'item_id'"),
    ({"history": [{"item_id": 1, "event_type": 3}]}, "history[0].event_type must be a string"),
    ({"history": [{"item_id": 1, "strength": "5 stars"}]}, "history[0].strength must be a number (e.g. a rating)"),
    ({"history": [{"item_id": 1, "strength": True}]}, "history[0].strength must be a number"),
    ({"history": [1, {"item_id": 1, "strength": float("nan")}]}, "history[1].strength must be a finite"),
    ({"history": [{"item_id": False}]}, "history[0].item_id"),
    ({"history": list(range(10_001))}, "at most 10000"),
    ({"history": [], "exclude": list(range(10_001))}, "exclude has 10001 ids"),
    ({"history": [], "candidates": list(range(10_001))}, "candidates has 10001 ids"),
    ({"history": [], "candidates": "1"}, "candidates must be a list"),
    ({"history": [], "exclude": [1, {}]}, "exclude[1]"),
    ({"history": [1], "k": 0}, "k must be an integer in 1..1000"),
    ({"history": [1], "k": 1001}, "k must be an integer in 1..1000"),
    ({"history": [1], "k": "10"}, "k must be an integer"),
    ({"history": [1], "k": True}, "k must be an integer"),
    ({"history": [1], "k": 2.5}, "k must be an integer"),
    ({"history": [1], "exclude_seen": "yes"}, "exclude_seen must be true or false"),
    ({"history": [1], "exclude_seen": 1}, "exclude_seen must be true or false"),
    ({"history": [1], "now": "today"}, "now must be a number"),
    ({"history": [1], "now": True}, "now must be a number"),
    ({"history": [1], "now": float("inf")}, "now must be a finite"),
    ({"history": [1], "user_id": [1]}, "user_id must be a string or an integer"),
]


@pytest.mark.parametrize("body,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_request_says_what_and_where(loaded, body, fragment):
    (status, resp), (ok_status, _) = ask(loaded, body, {"history": []})
    assert status == 400 and ok_status == 200
    assert resp["code"] == 400 and resp["type"] == "BadRequest"
    assert fragment in resp["message"]


def test_body_under_data_key_and_missing_body(loaded):
    h, ctx = loaded
    ctx.request_processor = [RequestProcessor({}), RequestProcessor({})]
    out = h.handle([{"data": {"history": [], "k": 1}}, {"k": b"3"}], ctx)
    assert ctx.get_response_status(0)[0] == 200 and len(json.loads(out[0])["items"]) == 1
    assert ctx.get_response_status(1)[0] == 400 and "no request body" in json.loads(out[1])["message"]


def test_nulls_mean_defaults(loaded):
    [(s, resp)] = ask(loaded, {"history": [], "k": None, "exclude": None, "candidates": None, "now": None})
    assert s == 200 and len(resp["items"]) == 10


# ---- ids: types, coercion, unknown ids
def test_int_index_accepts_numeric_strings_and_returns_ints(loaded):
    h, _ = loaded
    a, b = catalogue_ids(h)[:2]
    [(s1, r1), (s2, r2)] = ask(loaded, {"history": [a, b]}, {"history": [str(a), str(b)]})
    assert s1 == s2 == 200 and r1 == r2 and r1["unknown_items"] == []
    assert all(type(i) is int for i in ids_of(r1))


def test_str_index_accepts_ints_and_returns_strings(loaded_str):
    h, _ = loaded_str
    numeric = [x for x in catalogue_ids(h) if x.isdigit()][:3]
    [(_, r1), (_, r2)] = ask(loaded_str, {"history": numeric}, {"history": [int(x) for x in numeric]})
    assert r1 == r2 and r1["unknown_items"] == []
    assert all(type(i) is str for i in ids_of(r1))
    assert any(i.startswith("sku-") for i in ids_of(ask(loaded_str, {"history": numeric, "k": 100})[0][1]))


def test_unknown_ids_are_reported_in_order_once_and_dropped(loaded):
    h, _ = loaded
    a, b = catalogue_ids(h)[:2]
    history = [a, 7, "12abc", b, 7, "7", 2 ** 70, -1]
    [(s, r), (_, ref)] = ask(loaded, {"history": history}, {"history": [a, b]})
    assert s == 200
    assert r["unknown_items"] == [7, "12abc", "7", 2 ** 70, -1]
    assert r["items"] == ref["items"]


def test_all_unknown_history_falls_back_to_popular(loaded):
    [(s, r)] = ask(loaded, {"history": [1, 2, "x"], "k": 5})
    assert s == 200 and r["fallback"] == "popular" and r["unknown_items"] == [1, 2, "x"]
    assert len(r["items"]) == 5


# ---- what may be returned
def test_popular_fallback_is_available_items_by_popularity(loaded):
    h, _ = loaded
    cat = h.catalogue
    [(s, r)] = ask(loaded, {"history": [], "k": 20})
    idx = cat.lookup(ids_of(r))
    assert s == 200 and r["fallback"] == "popular"
    pops = cat.popularity[idx - 1]
    assert list(pops) == sorted(pops, reverse=True)
    avail_pop = np.sort(cat.popularity[cat.rows.numpy() - 1])[::-1][:20]
    assert list(pops) == list(avail_pop)
    assert [it["score"] for it in r["items"]] == pytest.approx(list(pops / cat.popularity.sum()))


def test_never_returns_unavailable_items(loaded):
    h, _ = loaded
    available = set(catalogue_ids(h))
    unavailable = set(catalogue_ids(h, "all")) - available
    assert unavailable  # the fixture marks every 7th item unavailable
    hist = list(unavailable)[:5] + list(available)[:5]
    res = ask(loaded, {"history": hist, "k": 1000, "exclude_seen": False}, {"history": [], "k": 1000},
              {"history": hist, "candidates": sorted(unavailable) + sorted(available)[:3], "k": 1000})
    assert set(ids_of(res[0][1])) == available  # the whole scorable catalogue, nothing else
    assert set(ids_of(res[1][1])) == available
    assert set(ids_of(res[2][1])) == set(sorted(available)[:3])


def test_exclude_seen_and_exclude(loaded):
    h, _ = loaded
    avail = catalogue_ids(h)
    hist, excl = avail[:6], avail[6:10]
    [(_, on), (_, off), (_, ex)] = ask(loaded, {"history": hist, "k": 1000},
                                      {"history": hist, "k": 1000, "exclude_seen": False},
                                      {"history": hist, "k": 1000, "exclude": excl + ["nope", 5]})
    assert set(ids_of(off)) == set(avail)
    assert set(ids_of(on)) == set(avail) - set(hist)
    assert set(ids_of(ex)) == set(avail) - set(hist) - set(excl)
    [(_, pop)] = ask(loaded, {"history": [], "k": 1000, "exclude": excl})
    assert set(ids_of(pop)) == set(avail) - set(excl)


def test_candidates_rank_only_those(loaded):
    h, _ = loaded
    avail = catalogue_ids(h)
    cands = avail[10:30] + ["nope", 3]
    [(_, r), (_, full)] = ask(loaded, {"history": avail[:3], "candidates": cands, "k": 5},
                              {"history": avail[:3], "k": 1000})
    assert len(r["items"]) == 5 and set(ids_of(r)) <= set(avail[10:30])
    full_order = [i for i in ids_of(full) if i in set(avail[10:30])]
    assert ids_of(r) == full_order[:5]  # same ranking as over the whole catalogue
    assert [it["score"] for it in r["items"]] == pytest.approx([it["score"] for it in full["items"] if it["item_id"] in set(ids_of(r))])
    [(_, empty)] = ask(loaded, {"history": avail[:3], "candidates": []})
    assert empty["items"] == [] and empty["fallback"] is None


def test_scores_are_the_cosines_of_plain_topk(loaded, export_dir):
    """End to end against a hand computation: training's padding, the scripted forward, plain
    torch.topk over the available rows; the score is the cosine itself."""
    from model import NUM_EVENT_FEATURES
    from model.padding import pad_batch

    h, _ = loaded
    model = torch.jit.load(str(export_dir / "model.pt")).eval()
    E = torch.from_numpy(np.load(export_dir / "item_vectors.npy"))
    items = pd.read_parquet(export_dir / "items.parquet")
    hist_idx = [5, 9, 1, 40, 41]
    hist = items["item_id"].to_numpy()[np.array(hist_idx) - 1].tolist()
    with torch.no_grad():
        x = pad_batch([hist_idx], [model.encode_events([math.nan] * 5, [""] * 5, [""] * 5, [math.nan] * 5, 0.0)],
                      TOTAL_LENGTH, NUM_EVENT_FEATURES)
        taste = model(*x)[0]
        cos = E @ taste
        cos[0] = -math.inf
        cos[torch.from_numpy(np.flatnonzero(~items["available"].to_numpy()) + 1)] = -math.inf
        cos[torch.tensor(hist_idx)] = -math.inf
        top = torch.topk(cos, 10)
        want_scores = top.values.tolist()  # the score is the cosine (docs/http-api.md)
    want_ids = items["item_id"].to_numpy()[top.indices.numpy() - 1].tolist()
    [(_, r)] = ask(loaded, {"history": hist, "k": 10})
    assert ids_of(r) == want_ids
    assert [it["score"] for it in r["items"]] == pytest.approx(want_scores, abs=1e-6)


def test_long_history_is_truncated_at_the_front_like_training(loaded):
    h, _ = loaded
    avail = catalogue_ids(h)
    long = avail[: 3 * TOTAL_LENGTH]
    [(_, r_long), (_, r_tail)] = ask(loaded, {"history": long, "k": 15, "exclude_seen": False},
                                     {"history": long[-TOTAL_LENGTH:], "k": 15, "exclude_seen": False})
    assert r_long["items"] == r_tail["items"]
    model = h.model
    seqs = [list(range(1, 3 * TOTAL_LENGTH + 1))]
    from model import NUM_EVENT_FEATURES
    from model.padding import pad_batch

    for a, b in zip(model.pad(seqs, [[]]), pad_batch(seqs, [[]], TOTAL_LENGTH, NUM_EVENT_FEATURES)):
        assert torch.equal(a, b)


def test_event_objects_are_accepted(loaded):
    h, _ = loaded
    avail = catalogue_ids(h)
    events = [{"item_id": avail[0], "timestamp": 1_700_000_000, "event_type": "view", "source": "search"},
              {"item_id": str(avail[1]), "event_type": "buy"}, avail[2], {"item_id": avail[3], "timestamp": None}]
    [(s, r)] = ask(loaded, {"history": events, "k": 4, "now": 1_700_000_600, "user_id": "u1"})
    assert s == 200 and len(r["items"]) == 4 and r["unknown_items"] == []


def test_time_and_context_features_with_missing_fields(tmp_path):
    d = make_export(tmp_path / "t", num_items=60, use_time=True, use_event_type=True, use_source=True,
                    use_strength=True, event_types=["view", "buy"], sources=["search"], strength_edges=[2.0, 4.0])
    loaded = load_handler(d)
    h, _ = loaded
    avail = catalogue_ids(h)
    full = [{"item_id": avail[i], "timestamp": 1_700_000_000 + 600 * i, "event_type": "view", "source": "search",
             "strength": 4.5} for i in range(4)]
    sparse = [{"item_id": avail[0]}, {"item_id": avail[1], "timestamp": 1_700_000_600}, avail[2],
              {"item_id": avail[3], "event_type": "never-seen", "strength": -1}]
    res = ask(loaded, {"history": full, "now": 1_700_003_000, "k": 5}, {"history": sparse, "k": 5},
              {"history": [e["item_id"] for e in full], "k": 5})
    assert [s for s, _ in res] == [200, 200, 200]
    assert all(len(r["items"]) == 5 for _, r in res)
    assert res[0][1]["items"] != res[2][1]["items"]  # the features reach the model


# ---- isolation, metrics, describe
def test_one_failing_request_gets_500_and_the_rest_of_the_batch_200(loaded, monkeypatch):
    h, _ = loaded
    avail = catalogue_ids(h)
    poison = int(h.catalogue.lookup([avail[7]])[0])
    real = h._forward

    def flaky(seqs, feats):
        if any(poison in s for s in seqs):
            raise RuntimeError("boom")
        return real(seqs, feats)

    monkeypatch.setattr(h, "_forward", flaky)
    res = ask(loaded, {"history": avail[:3]}, {"history": [avail[7]]}, {"history": avail[3:5]}, {"history": []})
    assert [s for s, _ in res] == [200, 500, 200, 200]
    assert res[1][1]["type"] == "InternalServerError"


def test_metrics_count_outcomes_and_time_scoring(loaded, caplog):
    with caplog.at_level(logging.INFO):
        ask(loaded, {"history": [1000, 1003]}, {"history": [1000]}, {"history": []}, {"history": 5})
    lines = [r.getMessage() for r in caplog.records if "[METRICS]Seqrec" in r.getMessage()]
    assert any(l.startswith("[METRICS]SeqrecRequests.Count:2|#Outcome:ok,ModelName:seqrec,Level:Model") for l in lines)
    assert any(l.startswith("[METRICS]SeqrecRequests.Count:1|#Outcome:empty_history") for l in lines)
    assert any(l.startswith("[METRICS]SeqrecRequests.Count:1|#Outcome:bad_request") for l in lines)
    assert any(l.startswith("[METRICS]SeqrecBatchSize.Count:4|") and "#type:HISTOGRAM" in l for l in lines)
    assert any(l.startswith("[METRICS]SeqrecScoringSeconds.Seconds:") for l in lines)


def test_describe_returns_the_export_metadata(loaded):
    h, ctx = loaded
    ctx.request_processor = [RequestProcessor({"describe": "True"})]
    [out] = h.handle([{"body": b""}], ctx)
    d = json.loads(out)
    assert d["model_version"] == "1.0" and d["num_items"] == h.catalogue.num_items


# ---- scoring
@pytest.mark.parametrize("m,chunk,k", [(1000, 64, 10), (1000, 1000, 10), (257, 16, 300), (50, 7, 1)])
def test_chunked_topk_equals_plain_topk(m, chunk, k):
    g = torch.Generator().manual_seed(m)
    E = torch.nn.functional.normalize(torch.randn(m, 16, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    banned = [torch.randint(0, m, (20,), generator=g), None, torch.arange(m), torch.empty(0, dtype=torch.long),
              torch.tensor([0, m - 1])]
    v, i = chunked_topk(q, E, k, banned, chunk_rows=chunk)
    pv, pi = plain_topk(q, E, k, banned)
    # Same items in the same order; cosines equal up to the last bit of a differently blocked matmul.
    torch.testing.assert_close(v, pv, rtol=0, atol=1e-6)
    finite = torch.isfinite(pv)
    assert torch.equal(i[finite], pi[finite])
    assert not torch.isfinite(v[2]).any()  # everything banned: nothing to return


# ---- integrity at load
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_file_fails_at_load(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path / "x")
    raw = bytearray((d / "item_vectors.npy").read_bytes())
    raw[-1] ^= 1
    (d / "item_vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="sha256 mismatch for item_vectors.npy"):
        load_handler(d)


def test_missing_or_unlisted_file_fails_at_load(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path / "x")
    (d / "items.parquet").unlink()
    with pytest.raises(RuntimeError, match="items.parquet .* is missing"):
        load_handler(d)
    d = _copy(export_dir, tmp_path / "y")
    meta = json.loads((d / "metadata.json").read_text())
    del meta["files"]["model.pt"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="lists no sha256"):
        load_handler(d)


def test_threads_follow_workers(export_dir, monkeypatch):
    from handler.seqrec_handler import SeqrecHandler

    cores = len(__import__("os").sched_getaffinity(0))
    for workers in (1, 2, 64):
        monkeypatch.setenv("SEQREC_WORKERS", str(workers))
        SeqrecHandler._pick_device(None, None)
        assert torch.get_num_threads() == max(1, cores // workers)


def test_another_export_loads_with_its_own_version(tmp_path):
    h, ctx = load_handler(make_export(tmp_path / "v2", num_items=40, version="2.0"))
    out = run_batch(h, ctx, [{"history": []}])
    assert json.loads(out[0])["model_version"] == "2.0"
