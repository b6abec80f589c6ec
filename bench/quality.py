"""Quality benchmark: full-ranking HR/NDCG/MRR next to popularity on the real datasets.

    python bench/quality.py                       # every dataset in bench/configs/quality-*.json
    python bench/quality.py --only amazon-beauty

Each dataset trains with its committed config (chosen on validation NDCG@10, never on test).
Early stopping on validation NDCG@10 picks the epoch count; with refit_on_validation a fresh model
is then trained that long on train + validation events and exported. Test metrics of both models
are written to bench/results/quality.json with the git commit it ran on.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from train.config import load_config
from train.datasets import data_dir
from train.pipeline import run

KEYS = [f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("HR", "NDCG", "MRR")]


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="dataset names to run")
    ap.add_argument("--out", default=str(ROOT / "bench/results/quality.json"))
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts/bench"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configs = sorted((ROOT / "bench/configs").glob("quality-*.json"))
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("datasets", {})
    commit = git_commit()  # the code as it was when the run started
    for path in configs:
        cfg = load_config(str(path), [])
        if args.only and cfg.data not in args.only:
            continue
        if not (data_dir() / cfg.data).is_dir():
            logging.warning("skipping %s: not found under %s (set SEQREC_DATA)", cfg.data, data_dir())
            continue
        t0 = time.perf_counter()
        s = run(cfg, Path(args.artifacts) / cfg.data, resume=False)
        test = s["test"]
        results["datasets"][cfg.data] = {
            "commit": commit,
            "config_file": str(path.relative_to(ROOT)),
            "model": {k: test["model"][k] for k in KEYS},
            "model_ci95": {k: test["model"].get(f"{k}_ci95") for k in ("HR@10", "NDCG@10")},
            "popularity": {k: test["popularity"][k] for k in KEYS},
            "test_users": test["model"]["users"],
            "refit_on_validation": cfg.refit_on_validation,
            "early_stopped_model": ({k: s["early_stopped_before_refit"]["test"]["model"][k] for k in KEYS}
                                    if s.get("early_stopped_before_refit") else None),
            "early_stopped_popularity": ({k: s["early_stopped_before_refit"]["test"]["popularity"][k] for k in KEYS}
                                         if s.get("early_stopped_before_refit") else None),
            "train_seconds": round(s["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "epochs": s["epochs"], "best_epoch": s["best_epoch"],
            "events_per_s": round(s["events_per_s"], 1),
            "sequences_per_s": round(s["sequences_per_s"], 1),
            "threads": s["machine"]["threads"],
            "validation_curve": [{k: e[k] for k in ("epoch", "loss", "valid_NDCG@10") if k in e} for e in s["history"]],
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        m, p = results["datasets"][cfg.data]["model"], results["datasets"][cfg.data]["popularity"]
        print(f"{cfg.data}: HR@10 {m['HR@10']:.4f} NDCG@10 {m['NDCG@10']:.4f} | popularity "
              f"HR@10 {p['HR@10']:.4f} NDCG@10 {p['NDCG@10']:.4f} | {s['train_seconds']:.0f} s train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
