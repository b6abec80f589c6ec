"""Quality benchmark: full-ranking HR/NDCG/MRR next to popularity on the real datasets.

    python -m bench.quality                       # every dataset in bench/configs/quality-*.json
    python -m bench.quality --only amazon-beauty

Each dataset trains with its committed config (chosen on validation NDCG@10, never on test).
The headline is the early-stopped model, the anchors' protocol (SASRec+, gSASRec): trained on
every event but each user's last two, early-stopped on validation NDCG@10, tested on the last
event with the history up to it as input (the validation item included: split.leave_one_out),
ranked against every item with the history's own items removed, ties counted against the target.
With refit_on_validation the config also refits a fresh model for the validated epoch count on
train + validation events: a second row, labelled `refit`, never the headline (it trains on one
more target per user than the anchors do). Epochs and patience decide when training stops, never
wall time. Written to bench/results/quality.json with the commit and the load average around it.

    python -m bench.quality --only ml-latest-small --seeds 3

With --seeds N the recipe's first fit is also trained with seeds +1 .. +N-1 (initial weights,
batches, negatives, the validation sample when it is one), without the refit, each exported under
artifacts/bench/<data>-seed<N> as any run is: `seeds` holds
each seed's anchors'-protocol test figures with their mean and spread, beside the headline model
(the config's seed, the one exported). A bootstrap over users does not see training noise; this does.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent

from bench.provenance import git_commit, load_average  # noqa: E402  (bench.negatives imports git_commit from here)
from train.config import load_config  # noqa: E402
from train.datasets import data_dir  # noqa: E402
from train.pipeline import run  # noqa: E402

KEYS = [f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("HR", "NDCG", "MRR")]
CI_KEYS = ("HR@10", "NDCG@10")
PROTOCOLS = {"early_stopped": "anchors' protocol: trained on all events but each user's last two, "
                              "early-stopped on validation NDCG@10",
             "refit": "refit: a fresh model trained for the validated epoch count on train + validation "
                      "events (one more target per user than the anchors train on)"}


def fit_block(f: Dict[str, Any]) -> Dict[str, Any]:
    """One fit of summary.json's `fits` as quality.json reports it."""
    test = f["test"]
    return {
        "protocol": PROTOCOLS[f["name"]],
        "model": {k: test["model"][k] for k in KEYS},
        "model_ci95": {k: test["model"][f"{k}_ci95"] for k in CI_KEYS},
        # Only the training part of each history removed (not the anchors' filter, which removes
        # the whole history): the validation item stays rankable. Absent from older runs.
        "model_train_part_removed": ({k: test["model_train_part_removed"][k] for k in CI_KEYS} | {
            f"{k}_ci95": test["model_train_part_removed"][f"{k}_ci95"] for k in CI_KEYS}
            if "model_train_part_removed" in test else None),
        "popularity": {k: test["popularity"][k] for k in KEYS},
        "popularity_ci95": {k: test["popularity"][f"{k}_ci95"] for k in CI_KEYS},
        "test_users": test["model"]["users"],
        "epochs": f["epochs"], "best_epoch": f["best_epoch"], "best_valid_NDCG@10": f["best_valid_NDCG@10"],
        "seconds_to_best": round(f["seconds_to_best"], 1),  # training seconds until the best epoch ended
        "wall_seconds_to_best": round(f["wall_seconds_to_best"], 1),  # with the validations on the way
        "train_seconds": round(f["train_seconds"], 1), "wall_seconds": round(f["wall_seconds"], 1),
        "training_events": f["training_events"], "events_per_s": round(f["events_per_s"], 1),
        "validation_curve": [{k: v for k, v in e.items() if k == "epoch" or k == "loss" or k.startswith("valid_")}
                             for e in f["validation_curve"]],
    }


def dataset_record(s: Dict[str, Any], config_file: str, commit: str, load_start, wall: float) -> Dict[str, Any]:
    """quality.json's entry for one dataset from its run's summary: the early-stopped model as the
    headline, the refit (when the config has one) labelled beside it."""
    fits = {f["name"]: f for f in s["fits"]}
    return {
        "commit": commit, "config_file": config_file,
        "headline": fit_block(fits["early_stopped"]),
        "refit": fit_block(fits["refit"]) if "refit" in fits else None,
        "exported": s["exported"],
        "run": {"epochs": s["epochs"], "train_seconds": round(s["train_seconds"], 1),
                "wall_seconds": round(wall, 1), "events_per_s": round(s["events_per_s"], 1),
                "threads": s["machine"]["threads"]},
        "load_average": {"start": load_start, "end": load_average()},
    }


def seed_row(s: Dict[str, Any]) -> Dict[str, Any]:
    f = s["fits"][0]  # the early-stopped fit: the anchors' protocol
    return {"seed": s["config"]["seed"], **{k: f["test"]["model"][k] for k in CI_KEYS},
            "epochs": f["epochs"], "best_epoch": f["best_epoch"], "best_valid_NDCG@10": f["best_valid_NDCG@10"],
            "train_seconds": round(f["train_seconds"], 1)}


def seeds_record(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Every seed's anchors'-protocol test figures, their mean and sample standard deviation."""
    out: Dict[str, Any] = {"protocol": PROTOCOLS["early_stopped"], "per_seed": rows}
    for k in CI_KEYS:
        vals = [r[k] for r in rows]
        out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
                  "min": min(vals), "max": max(vals)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="dataset names to run")
    ap.add_argument("--configs", default=str(ROOT / "bench/configs"), help="folder of quality-*.json")
    ap.add_argument("--out", default=str(ROOT / "bench/results/quality.json"))
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts/bench"))
    ap.add_argument("--seeds", type=int, default=1,
                    help="also train the first fit with this many seeds in all (the config's, +1, ...)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds: at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("datasets", {})
    # The code as it was when the run started; "-dirty" when what trains or evaluates had changes.
    commit = git_commit(["model", "train", "handler", "bench/quality.py", "bench/configs"])
    for path in sorted(Path(args.configs).glob("quality-*.json")):
        cfg = load_config(str(path), [])
        if args.only and cfg.data not in args.only:
            continue
        if cfg.data != "synthetic" and not (data_dir() / cfg.data).is_dir():
            logging.warning("skipping %s: not found under %s (set SEQREC_DATA)", cfg.data, data_dir())
            continue
        load_start, t0 = load_average(), time.perf_counter()
        s = run(cfg, Path(args.artifacts) / cfg.data, resume=False)
        rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        r = results["datasets"][cfg.data] = dataset_record(s, rel, commit, load_start, time.perf_counter() - t0)
        rows = [seed_row(s)]
        for i in range(1, args.seeds):  # the spread over training seeds: first fit only, loaded afresh
            other = load_config(str(path), [f"seed={cfg.seed + i}", "refit_on_validation=false"])
            rows.append(seed_row(run(other, Path(args.artifacts) / f"{cfg.data}-seed{other.seed}", resume=False)))
        if args.seeds > 1:
            r["seeds"] = {**seeds_record(rows), "load_average_end": load_average()}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        for name in ("headline", "refit"):
            b = r[name]
            if b is None:
                continue
            m, ci, p = b["model"], b["model_ci95"], b["popularity"]
            print(f"{cfg.data} {name}: HR@10 {m['HR@10']:.4f} [{ci['HR@10'][0]:.4f}, {ci['HR@10'][1]:.4f}] "
                  f"NDCG@10 {m['NDCG@10']:.4f} [{ci['NDCG@10'][0]:.4f}, {ci['NDCG@10'][1]:.4f}] | popularity "
                  f"HR@10 {p['HR@10']:.4f} | {b['epochs']} epochs, best {b['best_epoch']} after "
                  f"{b['seconds_to_best']:.0f} s of {b['train_seconds']:.0f} s training")
        if "seeds" in r:
            sd = r["seeds"]
            print(f"{cfg.data} over {len(rows)} seeds: " + ", ".join(
                f"{k} {sd[k]['mean']:.4f} ± {sd[k]['std']:.4f} ({sd[k]['min']:.4f}-{sd[k]['max']:.4f})"
                for k in CI_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
