"""Marketplace scale, end to end (issue 11): generate -> load -> split and windows -> one epoch ->
evaluate -> export -> archive.sh, each phase timed, peak RSS measured, HR/NDCG@10 next to popularity.

    python -m bench.scale              # 2,000,000 items, 1,000,000 users, ~31M events -> bench/results/scale.json
    python -m bench.scale --small      # smoke size (20k items, 10k users) -> bench/results/scale-small.json
    python -m bench.scale --items 200000 --users 100000 --set max_test_users=20000 --out /tmp/s.json

The phases are the real command-line pieces, run one after another as child processes:
`python -m train.synthetic_scale` (Parquet parts), `python -m train --data DIR` with
bench/configs/scale.json (load, split, windows, one epoch, evaluation, export; their seconds come
from its summary.json) and ./archive.sh. Peak RSS is each child's own high-water mark (os.wait4;
archive.sh's covers the processes it starts); the run's peak is the largest of them, since they
never overlap. The export is left in <work>/export (artifacts/scale/export at full size: the
2M-item model the serving benchmarks can load), its archive in <work>/model_store.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.provenance import ROOT, git_commit, load_average

# 2.6M listings, a flatter popularity than the small generator (0.9, not 1.1): only items with events
# enter the trained catalogue, and 2.4M listings gave 1,984,916 of them in 31M events (3d436bf).
FULL = {"items": 2_600_000, "users": 1_000_000, "events_per_user": "5,100", "popularity_exponent": "0.9"}
SMALL = {"items": 20_000, "users": 10_000, "events_per_user": "5,60", "popularity_exponent": "1.1"}
# Issue 11's "done means" for the full size.
TARGETS = {"items": 2_000_000, "events": 30_000_000, "training_events_per_s": 15_000, "peak_rss_gb": 12.0}
CONFIG = ROOT / "bench/configs/scale.json"
GB = 1024 ** 3


@dataclass
class Phase:
    seconds: float
    peak_rss_bytes: int


def run_phase(name: str, cmd: List[str]) -> Phase:
    """Run one phase as a child process (its output goes to ours); fails loudly when it does."""
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage, not this process's
    child.returncode = os.waitstatus_to_exitcode(status)
    phase = Phase(time.perf_counter() - t0, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux
    if child.returncode != 0:
        raise RuntimeError(f"phase {name} failed with exit status {child.returncode}: {' '.join(cmd)}")
    print(f"== {name}: {phase.seconds:.1f} s, peak RSS {phase.peak_rss_bytes / GB:.2f} GB", flush=True)
    return phase


def parquet_rows(paths: List[Path]) -> int:
    import pyarrow.parquet as pq
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def metrics(summary: Dict[str, Any]) -> Dict[str, Any]:
    test = summary["test"]
    keys = ("HR@10", "NDCG@10")
    return {name: {**{k: test[name][k] for k in keys}, **{f"{k}_ci95": test[name].get(f"{k}_ci95") for k in keys}}
            for name in ("model", "popularity")}


def phase_seconds(generate: Phase, summary: Dict[str, Any], archive: Phase) -> Dict[str, Optional[float]]:
    """The issue's phases from the children's clocks: the training process reports its own."""
    p = summary["phase_seconds"]
    prep = summary.get("prepare_seconds") or {}  # the loader's own split of `prepare`, when it gives one
    load = prep.get("load")
    return {"generate": generate.seconds, "load": load,
            "split_windows": p["prepare"] - (load or 0.0) + p["windows"],
            "train_epoch": summary["train_seconds"], "validation_and_checkpoint": p["train"] - summary["train_seconds"],
            "evaluate": p["evaluate"], "export": p["export"], "archive": archive.seconds}


def judge(r: Dict[str, Any]) -> Dict[str, bool]:
    """Issue 11's done-means, each checked on this run (only the full size can meet the sizes)."""
    m, p = r["test"]["model"], r["test"]["popularity"]
    above = all(m[f"{k}_ci95"] and p[f"{k}_ci95"] and m[f"{k}_ci95"][0] > p[f"{k}_ci95"][1] for k in ("HR@10", "NDCG@10"))
    return {"items": r["data"]["items"] >= TARGETS["items"], "events": r["data"]["events"] >= TARGETS["events"],
            "training_events_per_s": r["training_events_per_s"] >= TARGETS["training_events_per_s"],
            "peak_rss_gb": r["peak_rss_gb"]["run"] <= TARGETS["peak_rss_gb"],
            "model_above_popularity": above}


def table(r: Dict[str, Any]) -> str:
    """The README's table: one row per run."""
    s, d, m, p = r["phase_seconds"], r["data"], r["test"]["model"], r["test"]["popularity"]
    fmt = lambda x: "-" if x is None else f"{x:,.0f}" if x >= 10 else f"{x:.1f}"  # noqa: E731
    head = ("| items | users | events | generate s | load s | split+windows s | epoch s | events/s | evaluate s "
            "(users) | export s | archive s | peak RSS GB | HR@10 model / pop. | NDCG@10 model / pop. |")
    row = (f"| {d['items']:,} | {d['users']:,} | {d['events']:,} | {fmt(s['generate'])} | {fmt(s['load'])} | "
           f"{fmt(s['split_windows'])} | {fmt(s['train_epoch'])} | {fmt(r['training_events_per_s'])} | "
           f"{fmt(s['evaluate'])} ({r['test']['users']:,} of {r['test']['of']:,}) | {fmt(s['export'])} | "
           f"{fmt(s['archive'])} | {r['peak_rss_gb']['run']:.1f} | {m['HR@10']:.4f} / {p['HR@10']:.4f} | "
           f"{m['NDCG@10']:.4f} / {p['NDCG@10']:.4f} |")
    return f"{head}\n|{'---|' * (head.count('|') - 1)}\n{row}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help=f"smoke size {SMALL} instead of {FULL}")
    ap.add_argument("--items", type=int)
    ap.add_argument("--users", type=int)
    ap.add_argument("--events-per-user", metavar="LO,HI", help="log-uniform range of events a user")
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--work", type=Path, help="data, export and model store (default artifacts/scale[-small])")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/scale[-small].json)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")
    args = ap.parse_args(argv)
    size = {**(SMALL if args.small else FULL),
            **{k: v for k, v in (("items", args.items), ("users", args.users),
                                 ("events_per_user", args.events_per_user)) if v is not None}}
    suffix = "-small" if args.small else ""
    work = (args.work or ROOT / f"artifacts/scale{suffix}").resolve()
    out = (args.out or ROOT / f"bench/results/scale{suffix}.json").resolve()
    data, export, store = work / "data", work / "export", work / "model_store"
    py = sys.executable
    started, commit, load_start = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), git_commit(), load_average()
    t0 = time.perf_counter()

    gen = run_phase("generate", [py, "-m", "train.synthetic_scale", "--items", str(size["items"]), "--users",
                                 str(size["users"]), "--events-per-user", size["events_per_user"],
                                 "--popularity-exponent", size["popularity_exponent"],
                                 "--seed", str(args.seed), "--out", str(data)])
    train = run_phase("train", [py, "-m", "train", "--data", str(data), "--out", str(export), "--config", str(CONFIG),
                                "--version", "scale", "--fresh", "--set", *args.set])
    archive = run_phase("archive", [str(ROOT / "archive.sh"), str(export), "--out", str(store)])
    summary = json.loads((export / "train" / "summary.json").read_text())
    mar = store / "seqrec_scale.mar"

    r: Dict[str, Any] = {
        "commit": commit, "started_utc": started, "size": "small" if args.small else "full", "generator": size,
        "generator_seed": args.seed, "command": ["python -m bench.scale", *(argv if argv is not None else sys.argv[1:])],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": summary["machine"]["threads"]},
        "load_average": {"start": load_start, "end": load_average()},
        "data": {"items_generated": parquet_rows([data / "items.parquet"]),
                 "events_generated": parquet_rows(sorted((data / "events").glob("*.parquet"))),
                 "items": summary["data"]["items"], "users": summary["data"]["users"],
                 "events": summary["data"]["events"], "training_events": summary["data"]["training_events"],
                 "dropped": summary["data"]["dropped"]},
        "phase_seconds": phase_seconds(gen, summary, archive),
        "wall_seconds": time.perf_counter() - t0,
        "training_events_per_s": summary["events_per_s"],
        "peak_rss_gb": {"generate": gen.peak_rss_bytes / GB, "train": train.peak_rss_bytes / GB,
                        "archive": archive.peak_rss_bytes / GB,
                        "run": max(train.peak_rss_bytes, archive.peak_rss_bytes) / GB},  # load -> archive.sh
        "test": {**summary["data"]["test_sample"], **metrics(summary)},
        "config": {"file": str(CONFIG.relative_to(ROOT)), "overrides": args.set, "resolved": summary["config"]},
        "export": {"dir": str(export), "bytes": dir_bytes(export) - dir_bytes(export / "train"),
                   "archive": str(mar), "archive_bytes": mar.stat().st_size},
    }
    r["meets_issue_targets"] = judge(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"\n{table(r)}\n\n{out}: targets {r['meets_issue_targets']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
