"""Peers side by side: established implementations from the package registry, trained on the
project's own leave-one-out split and ranked by the project's evaluator (issue 13, item 4).

    make bench-peers                                    # builds .venv-bench, then runs this
    .venv-bench/bin/python -m bench.peers               # every dataset in bench/configs/peers.json
    .venv-bench/bin/python -m bench.peers --only amazon-beauty --peers sasrec
    .venv-bench/bin/python -m bench.peers --users 2000  # a smoke run on the first 2,000 users

Peers: RecTools' SASRecModel (its defaults but hidden size and history length, which match the
LSTM's 64 and 50; early-stopped on validation NDCG@10 of the project's validation sample) and
ALS from `implicit` (factors 64; the grid in the config chosen on validation NDCG@10 only).
The split is train.pipeline.prepare's (split=loo): trained on all events but each user's last
two, tested on the last with the validation item in the input, every item ranked, the history's
items removed, ties against the target (bench/peers_data.py). The library's own top-10 is
compared with the evaluator's ranks on a sample of test users ("library_topk_check").
Written to bench/results/peers.json with the commit and the load average around each run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bench.peers_data import PeerSplit, eval_cases, evaluate_popularity, peer_split  # noqa: E402
from bench.provenance import git_commit, load_average  # noqa: E402
from train.evaluate import summarize  # noqa: E402
from train.sequences import EventColumns  # noqa: E402
from train.split import leave_one_out  # noqa: E402

KEYS = [f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("HR", "NDCG", "MRR")]
CI_KEYS = ("HR@10", "NDCG@10", "NDCG@20", "MRR@10")
log = logging.getLogger("bench.peers")


def metrics_block(per_case: Dict[str, np.ndarray], seed: int) -> Dict[str, Any]:
    s = summarize(per_case, ci=True, seed=seed)
    return {"metrics": {k: round(s[k], 5) for k in KEYS},
            "ci95": {k: [round(x, 5) for x in s[f"{k}_ci95"]] for k in CI_KEYS},
            "test_users": s["users"]}


def versions() -> Dict[str, str]:
    from importlib.metadata import version
    return {p: version(p) for p in ("rectools", "pm-implicit", "pytorch-lightning", "torch", "numpy", "pandas")}


def subset_users(split: PeerSplit, n: int) -> PeerSplit:
    """A smoke-size split: only the first n users' events (same protocol, far less data)."""
    if n <= 0:
        return split
    ev = split.prep.events
    keep = ev["user_id"].isin(np.sort(ev["user_id"].unique())[:n]).to_numpy()
    prep = split.prep
    prep.events = ev[keep].reset_index(drop=True)
    prep.cols = EventColumns(prep.events)
    prep.split = leave_one_out(prep.events)
    prep.popularity = np.bincount(prep.cols.items[prep.split.train.flat()], minlength=len(prep.index) + 1)
    prep.popularity[0] = 0
    valid = prep.split.valid.subset(len(split.valid_eval), 0)
    return PeerSplit(split.name, prep, eval_cases(prep, valid, split.valid_eval.items.size(1)),
                     eval_cases(prep, prep.split.test, split.test_eval.items.size(1)))


def sasrec_params(hp: Dict[str, Any]) -> Dict[str, Any]:
    """Every scalar setting the library resolves from `hp` (its defaults for the rest)."""
    import warnings
    from rectools.models import SASRecModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = SASRecModel(**hp).get_params(simple_types=True)
    skip = ("cls", "epochs", "verbose", "deterministic")
    out = {k: v for k, v in params.items() if k not in skip and not k.startswith("get_")
           and (isinstance(v, (int, float, str, bool)))}
    out["adam_betas"] = [0.9, 0.98]  # TransformerLightningModule's default, with Adam at `lr`
    return out


def check_pick(split: PeerSplit, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(split.test_eval), min(n, len(split.test_eval)), replace=False))


def run_sasrec(split: PeerSplit, cfg: Dict[str, Any], seed: int) -> Dict[str, Any]:
    from bench.peers_rectools import fit_sasrec, sasrec_library_topk, topk_agreement
    hp = dict(cfg["hyperparameters"])
    fit = fit_sasrec(split, hp, cfg["patience"], cfg["max_epochs"], seed)
    pick = check_pick(split, cfg["library_check_users"], seed)
    topk = sasrec_library_topk(fit, split, split.test_eval.users[pick], 10)
    check = topk_agreement(fit["per_case"], pick, topk, split.test_eval.cases.targets[pick], split.n_items)
    events = fit["events_per_epoch"] * fit["epochs"]
    return {"library": "rectools.models.SASRecModel", **metrics_block(fit["per_case"], seed),
            "hyperparameters": hp, "library_settings": sasrec_params(hp),
            "max_epochs": cfg["max_epochs"], "patience": cfg["patience"],
            "early_stopping": "validation NDCG@10 (project evaluator) after each epoch; best epoch's weights kept",
            "epochs": fit["epochs"], "best_epoch": fit["best_epoch"],
            "stopped_by_hand_after_epoch": fit["stopped_by_hand_after_epoch"],
            "best_valid_NDCG@10": round(fit["best_valid_NDCG@10"], 5),
            "fit_wall_seconds": round(fit["fit_wall_seconds"], 1),
            "train_seconds": round(fit["train_seconds"], 1), "seconds_to_best": round(fit["seconds_to_best"], 1),
            "predict_wall_seconds": round(fit["predict_wall_seconds"], 1),
            "training_events_per_epoch": fit["events_per_epoch"],
            "events_per_s": round(events / max(fit["train_seconds"], 1e-9), 1),
            "known_items": fit["known_items"], "test_users_without_known_item": fit["test_users_without_known_item"],
            "validation_curve": fit["validation_curve"], "library_topk_check": check}


def run_als(split: PeerSplit, cfg: Dict[str, Any], seed: int, threads: int) -> Dict[str, Any]:
    """The grid on validation NDCG@10 only; the chosen setting is evaluated once on test."""
    from bench.peers_rectools import als_library_topk, evaluate_als, fit_als, topk_agreement
    base = dict(cfg["hyperparameters"])
    grid: List[Dict[str, Any]] = [{}]
    for key, values in cfg.get("grid", {}).items():
        grid = [{**g, key: v} for g in grid for v in values]
    train = split.train_frame()
    trials, best = [], None
    for g in grid:
        hp = {**base, **g}
        model, _, fit_s = fit_als(split, hp, seed, threads)
        valid = summarize(evaluate_als(model, split, split.valid_eval, train))
        trials.append({**g, "valid_NDCG@10": round(valid["NDCG@10"], 5), "valid_HR@10": round(valid["HR@10"], 5),
                       "fit_seconds": round(fit_s, 1)})
        log.info("ALS %s: valid NDCG@10 %.4f (%.1f s)", g, valid["NDCG@10"], fit_s)
        if best is None or valid["NDCG@10"] > best[0]:
            best = (valid["NDCG@10"], hp)
    hp = best[1]
    model, ui, fit_s = fit_als(split, hp, seed, threads)  # refit the chosen setting: its own timing
    t = time.perf_counter()
    per_case = evaluate_als(model, split, split.test_eval, split.test_input_frame())
    predict_s = time.perf_counter() - t
    pick = check_pick(split, cfg["library_check_users"], seed)
    topk = als_library_topk(model, split, split.test_eval, pick, 10)
    check = topk_agreement(per_case, pick, topk, split.test_eval.cases.targets[pick], split.n_items)
    events = int(split.prep.split.train.lengths.sum())
    return {"library": "implicit.als.AlternatingLeastSquares (cpu)", **metrics_block(per_case, seed),
            "hyperparameters": hp, "grid_on_validation": trials,
            "user_vectors": "recomputed from each case's input (implicit's recalculate_user): training events "
                            "for validation, training + validation events for test",
            "epochs": hp["iterations"], "fit_wall_seconds": round(fit_s, 1),
            "predict_wall_seconds": round(predict_s, 1), "training_events": events,
            "events_per_s": round(events * hp["iterations"] / max(fit_s, 1e-9), 1),
            "events_per_s_is": "training events x iterations / fit seconds (each iteration solves every user and item once)",
            "library_topk_check": check}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "bench/configs/peers.json"))
    ap.add_argument("--only", nargs="*", help="dataset names to run")
    ap.add_argument("--peers", nargs="*", default=["sasrec", "als"], choices=["sasrec", "als"])
    ap.add_argument("--users", type=int, default=0, help="smoke run: only the first N users (not written "
                                                        "to the results unless --out is given)")
    ap.add_argument("--max-epochs", type=int, default=0, help="smoke run: cap SASRec's epochs")
    ap.add_argument("--out", default=None, help="default bench/results/peers.json (full runs only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    threads = int(os.environ.get("SEQREC_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    cfg = json.loads(Path(args.config).read_text())
    smoke = args.users > 0 or args.max_epochs > 0
    out_path = Path(args.out) if args.out else (None if smoke else ROOT / "bench/results/peers.json")
    results = json.loads(out_path.read_text()) if out_path and out_path.exists() else {}
    results.setdefault("datasets", {})
    results["protocol"] = cfg["protocol"]
    results["versions"] = versions()
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads}
    commit = git_commit()
    for name in args.only or list(cfg["datasets"]):
        dcfg = cfg["datasets"][name]
        split = subset_users(peer_split(name, **cfg["split"]), args.users)
        entry = results["datasets"].setdefault(name, {})
        entry["split"] = split.counts()
        entry["popularity"] = metrics_block(evaluate_popularity(split, split.test_eval), cfg["seed"])
        for peer in args.peers:
            pcfg = {**cfg[peer], **dcfg.get(peer, {})}
            if peer == "sasrec" and args.max_epochs:
                pcfg["max_epochs"] = args.max_epochs
            load_start, t = load_average(), time.perf_counter()
            log.info("%s on %s (%s)", peer, name, split.counts())
            rec = run_sasrec(split, pcfg, cfg["seed"]) if peer == "sasrec" else run_als(split, pcfg, cfg["seed"], threads)
            rec.update({"wall_seconds": round(time.perf_counter() - t, 1), "commit": commit,
                        "seen_items_removed": "whole history",
                        "load_average": {"start": load_start, "end": load_average()}})
            if smoke:
                rec["smoke"] = {"users": args.users, "max_epochs": args.max_epochs}
            entry[peer] = rec
            m = rec["metrics"]
            log.info("%s on %s: HR@10 %.4f NDCG@10 %.4f (%d test users), %.0f s", peer, name, m["HR@10"],
                     m["NDCG@10"], rec["test_users"], rec["wall_seconds"])
            if out_path:
                out_path.write_text(json.dumps(results, indent=2) + "\n")
    if not out_path:
        print(json.dumps(results, indent=2))
    print(readme_table(results))
    return 0


def readme_table(results: Dict[str, Any]) -> str:
    """The README's table: each peer's test figures with 95% CIs, epochs, time and events/s."""
    lines = ["| dataset | model | HR@10 [95% CI] | NDCG@10 [95% CI] | NDCG@20 | MRR@10 | epochs (best) | "
             "fit s | predict s | training events/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"sasrec": "RecTools SASRec", "als": "implicit ALS", "popularity": "popularity"}
    for name, entry in results["datasets"].items():
        for peer in ("sasrec", "als", "popularity"):
            r = entry.get(peer)
            if not r:
                continue
            m, ci = r["metrics"], r["ci95"]
            epochs = f"{r['epochs']} ({r['best_epoch']})" if "best_epoch" in r else str(r.get("epochs", "-"))
            lines.append(f"| {name} | {names[peer]} | {m['HR@10']:.4f} [{ci['HR@10'][0]:.4f}, {ci['HR@10'][1]:.4f}] | "
                         f"{m['NDCG@10']:.4f} [{ci['NDCG@10'][0]:.4f}, {ci['NDCG@10'][1]:.4f}] | {m['NDCG@20']:.4f} | "
                         f"{m['MRR@10']:.4f} | {epochs} | {r.get('fit_wall_seconds', '-')} | "
                         f"{r.get('predict_wall_seconds', '-')} | {r.get('events_per_s', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
