"""The item table's optimizer compared on real data: the sparse paths (a sparse gradient with
CatchUpAdam, the default, or with torch's lazy SparseAdam) against the dense reference (one Adam
over every parameter), so that the step cost independent of the catalogue size is seen not to
cost ranking quality.

    python -m bench.optimizers                        # amazon-beauty and ml-latest-small
    python -m bench.optimizers --only ml-latest-small

Each dataset trains with its committed quality config (bench/configs/quality-*.json), changed in
the same two ways for both variants: early-stopped models (no refit on validation) and no
wall-clock cap, so epochs and patience alone decide and both variants get equal conditions. Same
seed, split and test users; the difference sparse - dense has a paired 95% bootstrap interval over
test users (bench/ablation.py's helpers). Results: bench/results/optimizers.json, with the commit.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.ablation import METRICS, boot_mean, paired_diff, run_stage
from bench.provenance import ROOT, git_commit, load_average
from train.config import load_config
from train.datasets import data_dir

log = logging.getLogger("optimizers")
DATASETS = ("ml-latest-small", "amazon-beauty")
EQUAL_CONDITIONS = ["refit_on_validation=false", "max_train_seconds=0"]
VARIANTS = {"sparse_adam": ["item_optimizer=sparse_adam"], "lazy_adam": ["item_optimizer=lazy_adam"],
            "adam": ["item_optimizer=adam"]}
SPARSE = ("sparse_adam", "lazy_adam")


def compare(name: str) -> Dict[str, Any]:
    base = load_config(str(ROOT / f"bench/configs/quality-{name}.json"), EQUAL_CONDITIONS)
    rows: Dict[str, Any] = {}
    per_user: Dict[str, Dict[str, Any]] = {}
    for variant, overrides in VARIANTS.items():
        row, users, test = run_stage(base, overrides, base.seed, ROOT / "artifacts/bench-optimizers" / name / variant)
        per_user[variant] = users
        rows[variant] = {**row, "model_ci95": {k: boot_mean(users[k], base.seed)["ci95"] for k in METRICS},
                         "popularity": {k: test["popularity"][k] for k in METRICS},
                         "test_users": test["model"]["users"]}
    diff = {v: {k: paired_diff(per_user[v][k], per_user["adam"][k], base.seed) for k in METRICS} for v in SPARSE}
    return {"config_file": f"bench/configs/quality-{name}.json", "overrides": EQUAL_CONDITIONS,
            "variants": rows, "minus_dense": diff,
            "not_worse_than_dense": {v: {k: d[k]["ci95"][1] >= 0 for k in METRICS} for v, d in diff.items()}}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.optimizers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="dataset names to run")
    ap.add_argument("--out", default=str(ROOT / "bench/results/optimizers.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.only or DATASETS:
        if not (data_dir() / name).is_dir():
            log.warning("skipping %s: not found under %s (set SEQREC_DATA)", name, data_dir())
            continue
        start = load_average()
        r = compare(name)
        results[name] = {"commit": git_commit(["model", "train", "bench/optimizers.py", "bench/configs"]),
                         "load_average_start": start, "load_average_end": load_average(), **r}
        out.write_text(json.dumps(results, indent=2))
        for variant, row in r["variants"].items():
            print(f"{name:16} {variant:12} HR@10 {row['HR@10']:.4f} {row['model_ci95']['HR@10']}  "
                  f"NDCG@10 {row['NDCG@10']:.4f} {row['model_ci95']['NDCG@10']}  {row['epochs']} epochs, "
                  f"{row['train_seconds']:.0f} s")
        for v, diffs in r["minus_dense"].items():
            for k, d in diffs.items():
                print(f"{name:16} {v} - adam {k}: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
