"""bench/ablation.py end to end on a tiny synthetic config: every stage trains, exports, is tested
(scripted export = training-time metrics), gets paired differences to stage 2, plus the cold-start run.

    .venv/bin/python -m pytest -q tests/test_ablation_smoke.py
"""
import json

import numpy as np
import pytest

from bench.ablation import METRICS, REFERENCE, main as ablation_main

pytestmark = pytest.mark.training

STAGES = {"1": ["pretrained=svd", "model.freeze_item_vectors=true"], "2": [],
          "2+time": ["model.use_time=true"], "2+content": ["model.use_content=true"],
          "2+context": ["model.use_event_type=true", "model.use_source=true"],
          "all": ["model.use_time=true", "model.use_content=true", "model.use_event_type=true",
                  "model.use_source=true"]}
TINY = {"data": "synthetic", "synthetic_users": 150, "synthetic_items": 80, "epochs": 1, "batch_size": 64,
        "sample_size": 64, "model": {"embedding_dim": 8, "hidden_dim": 16, "total_length": 10}}
SEEDS = [0, 1]
# Per-seed rows hold training-time test metrics, the aggregates come from the scripted exports'
# per-user metrics: the two agree within 1e-6 (scripted_export_matches), far below one user's share.
TOL = 1e-5


def check_stage_row(row, reference) -> None:
    """What bench/ablation.py promises of one stage's row, from its own per-seed figures and
    those of stage 2 (reference)."""
    assert row["seeds"] == SEEDS and [r["seed"] for r in row["per_seed"]] == SEEDS
    assert row["scripted_export_matches"] and all(r["scripted_export_matches"] for r in row["per_seed"])
    for k in METRICS:
        seed_figures = [r[k] for r in row["per_seed"]]
        # The stage's figure is the mean of its seeds' (same test users), seed_std their spread.
        assert row["model"][k] == pytest.approx(np.mean(seed_figures), abs=TOL), k
        assert row["seed_std"][k] == pytest.approx(np.std(seed_figures, ddof=1), abs=1e-9), k
        lo, hi = row["model_ci95"][k]
        assert lo <= row["model"][k] <= hi, k
        if reference is row:
            continue
        # Paired difference to stage 2: the mean of per-user differences is the difference of means.
        d = row["vs_stage_2"][k]
        assert d["mean"] == pytest.approx(row["model"][k] - reference["model"][k], abs=1e-9), k
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1], k
        # Seeds that beat stage 2's run with the same seed (a tie within TOL may count either way).
        pairs = [(a[k], b[k]) for a, b in zip(row["per_seed"], reference["per_seed"])]
        wins = row["seeds_better_than_stage_2"][k]
        assert sum(a > b + TOL for a, b in pairs) <= wins <= sum(a > b - TOL for a, b in pairs), k


def test_every_stage_runs_end_to_end(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "ablation-tiny.json").write_text(json.dumps(
        {"base": TINY, "seeds": SEEDS, "stages": STAGES, "cold_start": {"stage": "2+content", "fraction": 0.2}}))
    out = tmp_path / "ablation.json"
    assert ablation_main(["--configs", str(configs), "--out", str(out),
                          "--artifacts", str(tmp_path / "art")]) == 0
    res = json.loads(out.read_text())["datasets"]["synthetic"]
    assert list(res["stages"]) == list(STAGES) and len(res["commit"]) >= 40
    reference = res["stages"][REFERENCE]
    for stage, row in res["stages"].items():
        assert (stage == REFERENCE) == ("vs_stage_2" not in row) == ("seeds_better_than_stage_2" not in row)
        check_stage_row(row, reference)
        # Every stage is tested on the same users, next to the same popularity baseline.
        assert row["test_users"] == reference["test_users"] > 100
        assert row["popularity"] == reference["popularity"]
        for seed in SEEDS:
            assert (tmp_path / "art" / "synthetic" / stage.replace("+", "_") / f"seed{seed}" / "model.pt").is_file()
    # seeds change the training, not the data: stage 1 is a fixed SVD, stage 2 trains from a seed
    assert res["stages"]["2"]["per_seed"][0]["HR@10"] != res["stages"]["2"]["per_seed"][1]["HR@10"] or \
        res["stages"]["2"]["per_seed"][0]["NDCG@10"] != res["stages"]["2"]["per_seed"][1]["NDCG@10"]
    cold = res["cold_start"]
    assert cold["cases"] > 0 and 10 <= cold["held_out_items"] <= 16
    assert {"model", "popularity", "random", "content_popularity"} == set(cold["held_out_only"])
    assert cold["full_catalogue"]["popularity"]["HR@10"] == 0.0  # held-out items have no training events
    assert cold["held_out_only"]["popularity"]["HR@10"] > 0  # ties among them broken at random
    assert out.with_suffix(".png").stat().st_size > 5000
