"""The quality benchmark's protocol: no wall-clock cap in any published recipe, the anchors' test
input (the validation item included), and bench/quality.py's headline and refit blocks.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_quality_protocol.py
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.quality import KEYS, main as quality_main
from train.config import TrainConfig
from train.split import leave_one_out

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((ROOT / "bench" / "configs").glob("*.json")) + sorted((ROOT / "train" / "configs").glob("*.json"))
# The files that are TrainConfig recipes (bench/configs also holds other benches' own settings).
RECIPES = [p for p in PUBLISHED if p.parent.name == "configs" and p.parent.parent.name == "train"
           or p.name.startswith(("quality-", "ablation-")) or p.name == "scale.json"]


def caps(node):
    """Every max_train_seconds a JSON document sets: as a key at any depth, or as an override
    string ("max_train_seconds=600") in a list of them."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "max_train_seconds":
                yield float(v)
            yield from caps(v)
    elif isinstance(node, list):
        for v in node:
            yield from caps(v)
    elif isinstance(node, str) and node.startswith("max_train_seconds="):
        yield float(node.split("=", 1)[1])


def resolved_configs(path: Path):
    """Every TrainConfig a recipe can run: itself, or an ablation's base and each stage."""
    spec = json.loads(path.read_text())
    if "base" not in spec:
        return [TrainConfig.from_dict(spec)]
    base = TrainConfig.from_dict(spec["base"])
    return [base] + [base.override(o) for o in spec["stages"].values()]


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_published_file_sets_a_wall_clock_cap(path):
    # A figure that depends on how busy the machine was is no figure: epochs and patience decide.
    assert not [c for c in caps(json.loads(path.read_text())) if c > 0], path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_published_recipe_resolves_to_a_wall_clock_cap(path):
    assert all(c.max_train_seconds == 0 for c in resolved_configs(path)), path


def test_the_rule_sees_a_cap_wherever_a_recipe_sets_it(tmp_path):
    a = {"epochs": 3, "max_train_seconds": 10}
    b = {"base": {"epochs": 3}, "stages": {"1": [], "2": ["max_train_seconds=5"]}}
    assert list(caps(a)) == [10.0] and list(caps(b)) == [5.0] and list(caps({"epochs": 3})) == []
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert [c.max_train_seconds for c in resolved_configs(tmp_path / "b.json")] == [0.0, 0.0, 5.0]
    assert len(RECIPES) >= 7  # quality x2, ablation x3, scale, the demo


def test_the_test_input_is_the_history_with_the_validation_item():
    # Users of 5, 3 and 2 events (the last trains only), sorted as train.events sorts them.
    users = [1] * 5 + [2] * 3 + [3] * 2
    events = pd.DataFrame({"user_id": users, "item_idx": np.arange(1, 11, dtype=np.int32),
                           "timestamp": np.arange(10.0)})
    split = leave_one_out(events)
    assert split.test.targets.tolist() == [5, 8] and split.valid.targets.tolist() == [4, 7]
    for i in range(len(split.test)):
        test_rows, valid_rows = split.test.histories[i], split.valid.histories[i]
        # The test history is the validation history followed by the validation target.
        assert test_rows[-1] == split.valid.histories.stops[i]
        assert events["item_idx"][test_rows[-1]] == split.valid.targets[i]
        assert test_rows[:-1].tolist() == valid_rows.tolist()
    # Training holds neither target; the refit rows hold the validation target, never the test one.
    train_items = set(events["item_idx"][split.train.flat()])
    refit_items = set(events["item_idx"][split.train_with_valid.flat()])
    assert not train_items & {4, 5, 7, 8} and {4, 7} <= refit_items and not refit_items & {5, 8}


@pytest.mark.training
def test_quality_bench_writes_the_early_stopped_headline_and_the_refit_beside_it(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    recipe = {"data": "synthetic", "synthetic_users": 250, "synthetic_items": 120, "epochs": 5, "patience": 2,
              "batch_size": 32, "lr": 0.01, "sample_size": 64, "num_threads": 1, "index": "none",
              "refit_on_validation": True, "model": {"embedding_dim": 8, "hidden_dim": 16, "total_length": 10}}
    (configs / "quality-synthetic.json").write_text(json.dumps(recipe))
    out = tmp_path / "quality.json"
    assert quality_main(["--configs", str(configs), "--out", str(out), "--artifacts", str(tmp_path / "art")]) == 0
    r = json.loads(out.read_text())["datasets"]["synthetic"]
    assert len(r["commit"]) >= 40 and len(r["load_average"]["start"]) == len(r["load_average"]["end"]) == 3
    head, refit = r["headline"], r["refit"]
    assert head["protocol"].startswith("anchors' protocol") and refit["protocol"].startswith("refit")
    summary = json.loads((tmp_path / "art" / "synthetic" / "train" / "summary.json").read_text())
    first, second = summary["fits"]
    for block, fit in ((head, first), (refit, second)):
        assert set(block["model"]) == set(block["popularity"]) == set(KEYS)
        assert block["model"]["HR@10"] == fit["test"]["model"]["HR@10"]
        for k in ("HR@10", "NDCG@10"):
            lo, hi = block["model_ci95"][k]
            assert lo <= block["model"][k] <= hi
        assert 0 < block["seconds_to_best"] <= block["train_seconds"] <= block["wall_seconds"]
    # The headline early-stopped on validation: its best epoch is the curve's best NDCG@10.
    curve = [e["valid_NDCG@10"] for e in head["validation_curve"]]
    assert len(curve) == head["epochs"] and head["best_epoch"] == int(np.argmax(curve)) + 1
    assert head["best_valid_NDCG@10"] == max(curve)
    # The refit trains the validated epoch count on one more event per user, and is what was exported.
    assert refit["epochs"] == head["best_epoch"] and refit["training_events"] > head["training_events"]
    assert r["exported"] == "refit" and summary["test"] == second["test"]
    assert r["run"]["epochs"] == head["epochs"] + refit["epochs"]
    assert r["run"]["train_seconds"] == pytest.approx(head["train_seconds"] + refit["train_seconds"], abs=0.2)
    # A second filter beside the anchors': only the training part removed, the validation item rankable.
    # Recomputed here from the exported (refit) model with each history's removed items listed by hand.
    kept = refit["model_train_part_removed"]
    assert head["model_train_part_removed"] is not None and kept["HR@10_ci95"][0] <= kept["HR@10"]
    assert kept == {k: v for k, v in kept.items() if k.startswith(("HR@10", "NDCG@10"))} and len(kept) == 4
    import torch
    from train.evaluate import evaluate_ranking, model_scorer, summarize
    from train.pipeline import prepare
    from train.sequences import encode_cases
    scripted = torch.jit.load(str(tmp_path / "art" / "synthetic" / "model.pt"))
    prep = prepare(TrainConfig.from_dict(summary["config"]))
    cases = prep.split.test
    h = cases.histories
    train_parts = [prep.cols.items[a:b - 1].tolist() for a, b in zip(h.starts, h.stops)]

    class ByHand:
        def __len__(self):
            return len(train_parts)

        def batch(self, sl):
            rows = train_parts[sl]
            out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
            for i, row in enumerate(rows):
                out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            return out

    with torch.no_grad():
        per = evaluate_ranking(model_scorer(scripted), *encode_cases(scripted, prep.cols, cases),
                               torch.as_tensor(cases.targets), True, seen=ByHand())
    assert summarize(per)["HR@10"] == pytest.approx(kept["HR@10"])
    assert summarize(per)["NDCG@10"] == pytest.approx(kept["NDCG@10"])


@pytest.mark.training
def test_quality_bench_seeds_report_the_spread_over_training_seeds(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    recipe = {"data": "synthetic", "synthetic_users": 200, "synthetic_items": 100, "epochs": 3, "patience": 2,
              "batch_size": 32, "lr": 0.01, "sample_size": 64, "num_threads": 1, "index": "none", "seed": 5,
              "refit_on_validation": True, "model": {"embedding_dim": 8, "hidden_dim": 16, "total_length": 10}}
    (configs / "quality-synthetic.json").write_text(json.dumps(recipe))
    out = tmp_path / "quality.json"
    args = ["--configs", str(configs), "--out", str(out), "--artifacts", str(tmp_path / "art"), "--seeds", "2"]
    assert quality_main(args) == 0
    r = json.loads(out.read_text())["datasets"]["synthetic"]
    first, second = r["seeds"]["per_seed"]
    assert (first["seed"], second["seed"]) == (5, 6)
    assert first["HR@10"] == r["headline"]["model"]["HR@10"]  # the exported model's own first fit
    extra = json.loads((tmp_path / "art" / "synthetic-seed6" / "train" / "summary.json").read_text())
    assert [f["name"] for f in extra["fits"]] == ["early_stopped"]  # no refit for the extra seeds
    assert second["NDCG@10"] == extra["fits"][0]["test"]["model"]["NDCG@10"]
    for k in ("HR@10", "NDCG@10"):
        assert r["seeds"][k]["mean"] == pytest.approx((first[k] + second[k]) / 2)
        assert r["seeds"][k]["min"] <= r["seeds"][k]["mean"] <= r["seeds"][k]["max"]
    with pytest.raises(SystemExit):
        quality_main(args[:-1] + ["0"])
