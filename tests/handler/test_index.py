"""Two-stage scoring (handler/seqrec_index.py, seqrec_twostage.py) in process: the index path's
answers match the exact path's on clustered item vectors and obey the contract, a shortlist eaten
by exclusions falls back to the exact scan, `candidates` stay exact, scores are cosines.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/handler/test_index.py
"""
import json

import numpy as np
import pytest
from handler_fixtures import load_handler, make_export, run_batch

from devtools.fuzz_oracle import Catalog, FuzzCase, check_answer, same_ranking
from handler import seqrec_twostage
from handler.seqrec_twostage import ScoringOptions

EXACT = {"seqrec": {"scoring": "exact"}}
N = 2000


@pytest.fixture(scope="module")
def hnsw_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("hnsw"), num_items=N, clusters=40,
                       index_spec="hnsw:M=16,ef_construction=80,ef_search=128")


@pytest.fixture(scope="module")
def hnsw8_export(tmp_path_factory):  # the graph over 8-bit codes; the re-rank stays exact
    return make_export(tmp_path_factory.mktemp("hnsw8"), num_items=N, clusters=40,
                       index_spec="hnsw:M=16,ef_construction=80,ef_search=128,bits=8")


@pytest.fixture(scope="module")
def pq_export(tmp_path_factory):  # every entry's 4-bit codes scanned, the best 200 re-ranked exactly
    return make_export(tmp_path_factory.mktemp("pq"), num_items=N, clusters=40,
                       index_spec="pq:m=16,shortlist=200")


@pytest.fixture(scope="module")
def ivf_export(tmp_path_factory):
    # nprobe 1 of ~15 lists: a shortlist of ~40 items, so exclusions can eat it
    return make_export(tmp_path_factory.mktemp("ivf"), num_items=600, clusters=15,
                       index_spec="ivf:nlist=15,nprobe=1")


def ask(loaded, *bodies):
    h, ctx = loaded
    out = run_batch(h, ctx, list(bodies))
    return [(ctx.get_response_status(i)[0], json.loads(o)) for i, o in enumerate(out)]


def checked(cat, body, status, answer):
    case = FuzzCase("valid/index", json.dumps(body).encode(), request=body)
    problem = check_answer(case, status, answer, cat)
    assert problem is None, f"{problem}: {body}"


def random_requests(cat: Catalog, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = {"history": rng.choice(cat.ids, rng.integers(1, 12)).tolist(), "k": int(rng.integers(1, 60))}
        if rng.random() < 0.4:
            body["exclude"] = rng.choice(cat.ids, rng.integers(1, 200)).tolist()
        if rng.random() < 0.2:
            body["exclude_seen"] = False
        out.append(body)
    return out


@pytest.mark.parametrize("which, kind", [("hnsw_export", "hnsw"), ("hnsw8_export", "hnsw"), ("pq_export", "pq")])
def test_index_answers_equal_exact_for_most_requests_and_all_obey_the_contract(which, kind, request):
    hnsw_export = request.getfixturevalue(which)
    index, exact = load_handler(hnsw_export), load_handler(hnsw_export, yaml_config=EXACT)
    assert index[0].index is not None and index[0].index.kind == kind and exact[0].index is None
    cat = Catalog.from_export(hnsw_export)
    bodies = random_requests(cat, 80)
    before = seqrec_twostage.STATS["index"]
    same, recall = 0, []
    for batch in range(0, len(bodies), 8):  # batches of 8, as TorchServe would hand them over
        chunk = bodies[batch:batch + 8]
        for body, (s1, a1), (s2, a2) in zip(chunk, ask(index, *chunk), ask(exact, *chunk)):
            checked(cat, body, s1, a1)
            checked(cat, body, s2, a2)
            same += same_ranking(a1, a2) is None
            got, want = {it["item_id"] for it in a1["items"]}, {it["item_id"] for it in a2["items"]}
            recall.append(len(got & want) / len(want))
    assert seqrec_twostage.STATS["index"] - before >= len(bodies) * 0.9  # the index really answered
    assert same >= 0.9 * len(bodies), f"only {same} of {len(bodies)} answers equal the exact ones"
    assert np.mean(recall) >= 0.98
    assert index[0].catalogue._matrix is None  # the exact scan's private copy was never made


def test_exclusions_that_eat_the_shortlist_fall_back_to_the_exact_scan(ivf_export):
    index, exact = load_handler(ivf_export), load_handler(ivf_export, yaml_config=EXACT)
    cat = Catalog.from_export(ivf_export)
    history = [cat.ids[0], cat.ids[5]]
    [(_, full)] = ask(exact, {"history": history, "k": 1000})
    ranked = [it["item_id"] for it in full["items"]]
    # everything but the 15 items least like the taste excluded: the probed list holds none of them
    body = {"history": history, "k": 10, "exclude": ranked[:-15]}
    before = seqrec_twostage.STATS["shortlist_dry"]
    [(s1, a1)], [(s2, a2)] = ask(index, body), ask(exact, body)
    assert seqrec_twostage.STATS["shortlist_dry"] == before + 1
    checked(cat, body, s1, a1)
    assert s2 == 200 and len(a1["items"]) == 10 and same_ranking(a1, a2) is None


def test_candidates_keep_exact_scoring(hnsw_export):
    index, exact = load_handler(hnsw_export), load_handler(hnsw_export, yaml_config=EXACT)
    cat = Catalog.from_export(hnsw_export)
    body = {"history": cat.ids[:3], "candidates": cat.ids[100:400], "k": 20}
    before = dict(seqrec_twostage.STATS)
    [(s1, a1)], [(_, a2)] = ask(index, body), ask(exact, body)
    checked(cat, body, s1, a1)
    assert same_ranking(a1, a2) is None and dict(seqrec_twostage.STATS) == before  # neither whole-catalogue path


def test_scores_are_distinct_cosines(hnsw_export):
    h = load_handler(hnsw_export)
    [(status, answer)] = ask(h, {"history": [1000, 1003, 1006], "k": 50})
    scores = [it["score"] for it in answer["items"]]
    assert status == 200 and len(scores) == 50
    assert len(set(scores)) == len(scores) and all(-1 <= s <= 1 for s in scores)
    assert max(scores) < 0.9999  # the seed's tanh score saturated at 1.000 for every item


def test_model_yaml_selects_scoring_and_refuses_typos(export_dir, hnsw_export, pq_export):
    assert ScoringOptions.from_yaml({"seqrec": {"scoring": "index", "ef_search": 128}}).ef_search == 128
    assert load_handler(hnsw_export, yaml_config={"seqrec": {"ef_search": 200}})[0].index.knobs["ef_search"] == 200
    assert load_handler(pq_export)[0].index.min_fetch == 200  # the export's own shortlist
    assert load_handler(pq_export, yaml_config={"seqrec": {"shortlist": 500}})[0].index.min_fetch == 500
    assert load_handler(export_dir)[0].index is None  # 300 items, index "auto": exact
    for bad, match in [({"scoring": "fast"}, "seqrec.scoring must be one of"), ({"efsearch": 3}, "unknown seqrec keys"),
                       ({"ef_search": 0}, "positive integer"), ({"nprobe": True}, "positive integer"),
                       ({"shortlist": "9"}, "positive integer")]:
        with pytest.raises(ValueError, match=match):
            ScoringOptions.from_yaml({"seqrec": bad})
    with pytest.raises(RuntimeError, match="seqrec.scoring=index but this export has no index"):
        load_handler(export_dir, yaml_config={"seqrec": {"scoring": "index"}})


@pytest.mark.parametrize("text, message", [
    ("hnsw:M=0", "index hnsw: M must be a positive integer, got '0'"),
    ("flat", "index kind must be one of hnsw, ivf, pq, none, auto; got 'flat'"),
    ("pq:M=32", "index pq: unknown knob 'M=32' (knobs: m, shortlist)"),
    ("pq:m=24", "index pq: m=24 must divide model.embedding_dim 64"),
    ("ivf:nlist=8,M=3", "index ivf: unknown knob 'M=3' (knobs: nlist, nprobe)"),
    ("none:M=1", "index 'none' takes no knobs, got 'M=1'"),
    ("hnsw:bits=4", "index hnsw: bits must be one of 8, 16, 32, got 4"),
])
def test_a_bad_index_option_is_refused_naming_it(text, message):
    from train.config import TrainConfig
    from train.errors import UserError

    with pytest.raises(UserError) as e:
        TrainConfig.from_dict({"index": text})
    assert str(e.value) == message


def test_index_spec_defaults_and_auto():
    from handler.seqrec_index import AUTO_MIN_ITEMS, IndexSpec

    assert IndexSpec.parse("hnsw:ef_search=32").knobs == {"M": 32, "ef_construction": 200, "ef_search": 32, "bits": 32}
    # an export written before `bits` existed holds float vectors
    assert IndexSpec.of({"kind": "hnsw", "M": 16, "ef_construction": 80, "ef_search": 64}).knobs["bits"] == 32
    assert IndexSpec.parse("auto").resolved(AUTO_MIN_ITEMS - 1).kind == "none"
    assert IndexSpec.parse("auto").resolved(AUTO_MIN_ITEMS) == IndexSpec("pq", {"m": 32, "shortlist": 500})
    assert IndexSpec.parse("pq:shortlist=300").knobs == {"m": 32, "shortlist": 300}


def built_then_grown(tmp_path, spec: str):
    """An index of `spec` over items 1..400 of 500 unit vectors, then a catalogue update adding
    401..500: (the build's record, the update's record, the grown index, the vectors)."""
    from handler.seqrec_artifact import INDEX_FILE
    from handler.seqrec_index import CandidateIndex, IndexSpec, build, update

    rng = np.random.default_rng(0)
    vec = rng.normal(size=(501, 16)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    vec[0] = 0
    available = np.ones(500, dtype=bool)
    available[400:] = False  # items 401..500 arrive with the update
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    info = build(IndexSpec.parse(spec), vec, available, tmp_path / "a" / INDEX_FILE)
    available[400:] = True
    grown = update(info, tmp_path / "a", tmp_path / "b", vec, available, np.arange(401, 501), np.empty(0, np.int64))
    return info, grown, CandidateIndex.load(tmp_path / "b", {"index": grown}), vec


@pytest.mark.parametrize("bits", [8, 16])
def test_quantised_hnsw_builds_grows_and_loads(tmp_path, bits):
    info, grown, index, vec = built_then_grown(tmp_path, f"hnsw:M=16,ef_construction=80,ef_search=64,bits={bits}")
    assert (info["kind"], info["bits"], info["entries"]) == ("hnsw", bits, 400)
    assert (grown["bits"], grown["entries"], grown["rebuilt"]) == (bits, 500, False)
    found = index.search(vec[1:], 1)[:, 0]
    assert (found == np.arange(1, 501)).mean() > 0.95  # each item is its own nearest neighbour


def test_pq_builds_grows_and_loads(tmp_path):
    info, grown, index, vec = built_then_grown(tmp_path, "pq:m=8,shortlist=20")
    assert (info["kind"], info["m"], info["shortlist"], info["entries"]) == ("pq", 8, 20, 400)
    assert (grown["m"], grown["entries"], grown["rebuilt"]) == (8, 500, False)
    assert index.min_fetch == 20
    found = index.search(vec[1:], 20)
    # 4-bit codes rank coarsely, but each item is in its own code's shortlist of 20
    assert np.mean([i + 1 in row for i, row in enumerate(found)]) > 0.95
    assert set(found[400:].ravel()) & set(range(401, 501))  # the update's items are searched


def test_pq_trains_on_a_catalogue_smaller_than_its_codebooks(tmp_path):
    from handler.seqrec_index import IndexSpec, build

    vec = np.random.default_rng(1).normal(size=(6, 16)).astype(np.float32)
    info = build(IndexSpec.parse("pq:m=8"), vec, np.ones(5, dtype=bool), tmp_path / "x.faiss")
    assert info["entries"] == 5  # 5 vectors, 16 centroids a sub-quantiser: repeated to train, not refused
