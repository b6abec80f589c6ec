"""bench/ablation.py end to end on a tiny synthetic config: every stage trains, exports, is tested
(scripted export = training-time metrics), gets paired differences to stage 2, plus the cold-start run.

    .venv/bin/python -m pytest -q tests/test_ablation_smoke.py
"""
import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"1": ["pretrained=svd", "model.freeze_item_vectors=true"], "2": [],
          "2+time": ["model.use_time=true"], "2+content": ["model.use_content=true"],
          "2+context": ["model.use_event_type=true", "model.use_source=true"],
          "all": ["model.use_time=true", "model.use_content=true", "model.use_event_type=true",
                  "model.use_source=true"]}
TINY = {"data": "synthetic", "synthetic_users": 150, "synthetic_items": 80, "epochs": 1, "batch_size": 64,
        "sample_size": 64, "model": {"embedding_dim": 8, "hidden_dim": 16, "total_length": 10}}


def load_ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_stage_runs_end_to_end(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "ablation-tiny.json").write_text(json.dumps(
        {"base": TINY, "seeds": [0, 1], "stages": STAGES, "cold_start": {"stage": "2+content", "fraction": 0.2}}))
    out = tmp_path / "ablation.json"
    assert load_ablation().main(["--configs", str(configs), "--out", str(out),
                                 "--artifacts", str(tmp_path / "art")]) == 0
    res = json.loads(out.read_text())["datasets"]["synthetic"]
    assert list(res["stages"]) == list(STAGES) and len(res["commit"]) >= 40
    for stage, row in res["stages"].items():
        lo, hi = row["model_ci95"]["HR@10"]
        assert lo <= row["model"]["HR@10"] <= hi and row["test_users"] > 100
        assert row["scripted_export_matches"], stage
        assert (stage == "2") == ("vs_stage_2" not in row) == ("seeds_better_than_stage_2" not in row)
        assert [r["seed"] for r in row["per_seed"]] == [0, 1] and row["seed_std"]["HR@10"] >= 0
        # the stage's figure is the mean of its seeds' (on the same test users)
        assert abs(row["model"]["HR@10"] - sum(r["HR@10"] for r in row["per_seed"]) / 2) < 1e-9
        for seed in (0, 1):
            assert (tmp_path / "art" / "synthetic" / stage.replace("+", "_") / f"seed{seed}" / "model.pt").is_file()
    # seeds change the training, not the data: stage 1 is a fixed SVD, stage 2 trains from a seed
    assert res["stages"]["2"]["per_seed"][0]["HR@10"] != res["stages"]["2"]["per_seed"][1]["HR@10"] or \
        res["stages"]["2"]["per_seed"][0]["NDCG@10"] != res["stages"]["2"]["per_seed"][1]["NDCG@10"]
    d = res["stages"]["all"]["vs_stage_2"]["HR@10"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    cold = res["cold_start"]
    assert cold["cases"] > 0 and 10 <= cold["held_out_items"] <= 16
    assert {"model", "popularity", "random", "content_popularity"} == set(cold["held_out_only"])
    assert cold["full_catalogue"]["popularity"]["HR@10"] == 0.0  # held-out items have no training events
    assert cold["held_out_only"]["popularity"]["HR@10"] > 0  # ties among them broken at random
    assert out.with_suffix(".png").stat().st_size > 5000
