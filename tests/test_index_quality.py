"""bench/index_quality.py on a tiny trained export: an index searched exhaustively matches the
exact figures (ratio 1, recall 1), and each export keeps its own result in the output file.

    .venv/bin/python -m pytest -q tests/test_index_quality.py
"""
import json

import pytest

from bench.index_quality import main as index_quality
from train.config import TrainConfig
from train.pipeline import run

pytestmark = pytest.mark.training

TINY = dict(data="synthetic", synthetic_users=300, synthetic_items=150, epochs=2, batch_size=64, sample_size=128,
            index="none", model={"embedding_dim": 8, "hidden_dim": 16, "total_length": 10})


def test_index_quality_matches_exact_when_the_search_is_exhaustive(tmp_path):
    export = tmp_path / "tiny"
    summary = run(TrainConfig.from_dict(TINY), export)
    out = tmp_path / "index_quality.json"
    args = ["--kinds", "hnsw,ivf,pq", "--hnsw", "M=8,ef_construction=40;M=8,ef_construction=40,bits=8", "--ef-search", "4,400",
            "--ivf", "nlist=8", "--nprobe", "1,8", "--pq", "m=4", "--shortlist", "1,200", "--out", str(out)]
    assert index_quality([str(export), *args]) == 0
    assert index_quality([str(export), "--label", "again", *args]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"tiny", "again"}
    r = results["tiny"]
    assert r["commit"] and len(r["load_average_before"]) == 3
    # The training run's test users; ranked among the available items (as served), so with sold
    # items in the catalogue the exact figure is not the training summary's (which ranks all).
    assert r["users"] == summary["test"]["model"]["users"]
    assert r["available"] < r["items"] and 0 < r["exact"]["HR@10"] <= 1
    rows = {(g["kind"], g.get("bits"), g.get("ef_search", g.get("nprobe", g.get("shortlist")))): g for g in r["grid"]}
    assert set(rows) == {("hnsw", 32, 4), ("hnsw", 32, 400), ("hnsw", 8, 4), ("hnsw", 8, 400),
                         ("ivf", None, 1), ("ivf", None, 8), ("pq", None, 1), ("pq", None, 200)}
    # all searched (the PQ shortlist of 200 holds every one of the <150 items)
    for full in (rows[("hnsw", 32, 400)], rows[("hnsw", 8, 400)], rows[("ivf", None, 8)], rows[("pq", None, 200)]):
        assert full["recall@10"] == pytest.approx(1.0) and full["HR_ratio"] == pytest.approx(1.0)
        assert full["NDCG_ratio"] == pytest.approx(1.0)
    assert all(0 <= g["recall@10"] <= 1 and g["ms_per_user"] > 0 for g in r["grid"])


def test_an_export_carrying_the_same_index_is_measured_without_a_rebuild(tmp_path):
    export = tmp_path / "indexed"
    run(TrainConfig.from_dict({**TINY, "index": "hnsw:M=8,ef_construction=40,ef_search=16"}), export)
    out = tmp_path / "index_quality.json"
    common = ["--kinds", "hnsw", "--ef-search", "400", "--out", str(out)]
    assert index_quality([str(export), "--hnsw", "M=8,ef_construction=40", "--label", "own", *common]) == 0
    assert index_quality([str(export), "--hnsw", "M=12,ef_construction=40", "--label", "other", *common]) == 0
    own, other = (json.loads(out.read_text())[k]["grid"][0] for k in ("own", "other"))
    assert own["build_s"] is None and own["M"] == 8 and own["ef_search"] == 400  # the export's index, searched deeper
    assert other["build_s"] > 0 and other["M"] == 12  # other build knobs: built here
    assert own["recall@10"] == pytest.approx(1.0) and own["HR_ratio"] == pytest.approx(1.0)
