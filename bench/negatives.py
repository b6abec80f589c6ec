"""Negative sampling compared: uniform vs popularity-weighted (with and without logQ correction).

    python bench/negatives.py                      # ml-latest-small, its quality config
    python bench/negatives.py --data amazon-beauty

Same config, seed and split for every variant; only the sampler changes. Test metrics with 95%
bootstrap intervals go to bench/results/negatives.json with the git commit.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench.quality import git_commit
from train.config import load_config
from train.pipeline import run

# Early-stopped models only (no refit): the comparison needs equal conditions, not the best number.
VARIANTS = {"uniform": ["negatives=uniform"],
            "popularity+logQ": ["negatives=popularity", "logq=true"],
            "popularity, no logQ": ["negatives=popularity", "logq=false"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-latest-small")
    ap.add_argument("--out", default=str(ROOT / "bench/results/negatives.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commit = git_commit()
    rows = {}
    for name, overrides in VARIANTS.items():
        cfg = load_config(str(ROOT / f"bench/configs/quality-{args.data}.json"), overrides + ["refit_on_validation=false"])
        s = run(cfg, ROOT / "artifacts/bench-negatives" / args.data / name.replace(" ", "_").replace(",", ""), resume=False)
        m = s["test"]["model"]
        rows[name] = {"HR@10": m["HR@10"], "HR@10_ci95": m["HR@10_ci95"], "NDCG@10": m["NDCG@10"],
                      "NDCG@10_ci95": m["NDCG@10_ci95"], "epochs": s["epochs"], "train_seconds": s["train_seconds"]}
        print(f"{name:22} HR@10 {m['HR@10']:.4f} {m['HR@10_ci95']}  NDCG@10 {m['NDCG@10']:.4f}")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.data] = {"commit": commit, "variants": rows}
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
