"""Ranking quality through the candidate index vs the exact scan, on an export's own test users.

    .venv/bin/python -m bench.index_quality artifacts/amazon-beauty                  # HNSW and IVF grids
    .venv/bin/python -m bench.index_quality DIR --kinds hnsw --ef-search 32,64,128 --max-users 5000
    .venv/bin/python -m bench.index_quality DIR --kinds hnsw --hnsw 'M=32;M=32,bits=8'   # float vs 8-bit graph
    .venv/bin/python -m bench.index_quality DIR --kinds pq --pq 'm=16;m=32' --shortlist 300,1000

The test users are rebuilt from the export's train_config (train.pipeline.prepare: same data, same
split, same sample when max_test_users is set), their tastes from its model.pt. Both paths rank
by the project's evaluator definition: rank among the available items, history removed
(exclude_seen), ties against the target. The exact figures come from train.evaluate.chunked_ranks;
the index figures from the handler's own two-stage code (seqrec_twostage.shortlist_topk: the
over-fetched shortlist re-ranked by exact cosine, the exact scan where it runs dry), top 10 only:
a target outside the index's top 10 is a miss. recall@10 is the share of the exact top 10 the
index path returns. Writes the export's result (key --label) into bench/results/index_quality.json
with the commit and load average.
Indexes are built here from the export's vectors (an export need not carry one; at 2M items an
HNSW build takes minutes, SCALE.md: 396 s at M=32 with 2 threads), unless the export carries one of
the same kind and build knobs over all its available items: that one is measured as it is
(build_s null), e.g. the copy bench/serve_bench.py --export leaves under its --work folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from bench.provenance import git_commit, load_average
from handler.seqrec_artifact import verify_export
from handler.seqrec_catalogue import Catalogue
from handler.seqrec_index import CandidateIndex, IndexSpec, build
from handler.seqrec_scoring import chunked_topk
from handler.seqrec_twostage import shortlist_topk
from train.config import TrainConfig
from train.evaluate import chunked_ranks, metrics_from_ranks
from train.pipeline import prepare, sample_test_cases
from train.sequences import encode_cases

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.index_quality")
K = 10


def test_users(export: Path, meta: Dict[str, Any], max_users: int):
    """(tastes (B, D), histories (B, T) item indices, targets (B,)) of the export's test users."""
    cfg = TrainConfig.from_dict(meta["train_config"])
    prep = prepare(cfg)
    cases = sample_test_cases(prep.split.test, cfg)[0]
    if max_users and len(cases) > max_users:
        cases = cases.subset(max_users, cfg.seed)
    model = torch.jit.load(str(export / "model.pt")).eval()
    items, feats, lengths = encode_cases(model, prep.cols, cases)
    with torch.no_grad():
        tastes = torch.cat([model(items[s:s + 512], feats[s:s + 512], lengths[s:s + 512])
                            for s in range(0, len(items), 512)])
    return tastes, items, torch.as_tensor(cases.targets), cfg.exclude_seen


def banned_rows(cat: Catalogue, histories: torch.Tensor, exclude_seen: bool) -> List[torch.Tensor]:
    empty = torch.empty(0, dtype=torch.long)
    out = []
    for h in histories:
        if not exclude_seen:
            out.append(empty)
            continue
        pos = cat.positions(torch.unique(h[h > 0]))
        out.append(pos[pos >= 0])
    return out


def index_ranks(tastes, targets, banned, cat: Catalogue, index: CandidateIndex, exact_top: torch.Tensor):
    """Rank of each target in the index path's top K (K = a miss), recall@K vs exact, seconds."""
    ranks, recall, t0 = [], [], time.perf_counter()
    for s in range(0, len(tastes), 256):
        asks = [(K, b) for b in banned[s:s + 256]]
        answers = shortlist_topk(tastes[s:s + 256], asks, cat, index)
        for j, got in enumerate(answers):
            b = s + j
            if got is None:  # shortlist ran dry: the handler answers from the exact scan
                got = (None, exact_top[b])
            pos = got[1][:K]
            items = cat.rows[pos]
            hit = torch.nonzero(items == targets[b])
            if len(hit):  # ties against the target: every returned item scoring >= it ranks above
                scores = cat.row_vectors(pos) @ tastes[b]
                ranks.append(int((scores >= scores[hit[0, 0]]).sum()) - 1)
            else:
                ranks.append(cat.num_items)
            recall.append(len(set(pos.tolist()) & set(exact_top[b].tolist())) / max(1, len(exact_top[b])))
    return np.array(ranks), float(np.mean(recall)), time.perf_counter() - t0


def own_index(meta: Dict[str, Any], spec: IndexSpec, search_knob: str):
    """The export's own index record when it is of this kind, built with these knobs over every
    available item (so measuring it needs no build: minutes at 2M items); else None."""
    info = meta.get("index") or {}
    if info.get("kind") != spec.kind:
        return None
    built = IndexSpec.of(info).knobs
    same = all(v == built[k] for k, v in spec.knobs.items() if k != search_knob)
    return info if same and info.get("live") == info.get("entries") else None


def quality(ranks: np.ndarray) -> Dict[str, float]:
    m = metrics_from_ranks(ranks, ks=(K,))
    return {f"HR@{K}": float(m[f"HR@{K}"].mean()), f"NDCG@{K}": float(m[f"NDCG@{K}"].mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.index_quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("--kinds", default="hnsw,ivf,pq")
    ap.add_argument("--hnsw", default="M=32,ef_construction=200",
                    help="HNSW build knobs; several builds separated by ';' (e.g. 'M=32;M=32,bits=8')")
    ap.add_argument("--ef-search", default="16,32,64,128,256")
    ap.add_argument("--ivf", default="nlist=1024", help="IVF build knobs; several separated by ';'")
    ap.add_argument("--nprobe", default="1,4,8,16,32,64")
    ap.add_argument("--pq", default="m=32", help="PQ build knobs; several separated by ';'")
    ap.add_argument("--shortlist", default="300,500,1000", help="PQ shortlists re-ranked exactly")
    ap.add_argument("--max-users", type=int, default=0, help="0: every test user the export was evaluated on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", help="the result's key in --out (default: the export's folder name)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "index_quality.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    export = Path(args.export)
    meta = verify_export(export)
    cat = Catalogue.load(export, meta, torch.device("cpu"))
    load_before = load_average()
    tastes, histories, targets, exclude_seen = test_users(export, meta, args.max_users)
    scorable = torch.zeros(cat.num_items + 1, dtype=torch.bool)
    scorable[cat.rows] = True
    exact = quality(chunked_ranks(tastes, cat.vectors, targets, histories, exclude_seen, scorable).numpy())
    banned = banned_rows(cat, histories, exclude_seen)
    exact_top = chunked_topk(tastes, cat.matrix, K, banned)[1]
    log.info("exact on %d users: %s", len(tastes), exact)
    grid = {"hnsw": ("ef_search", args.ef_search, args.hnsw), "ivf": ("nprobe", args.nprobe, args.ivf),
            "pq": ("shortlist", args.shortlist, args.pq)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        builds = [(kind, b) for kind in args.kinds.split(",") for b in grid[kind][2].split(";")]
        for kind, build_knobs in builds:
            knob, values = grid[kind][:2]
            spec = IndexSpec.parse(f"{kind}:{build_knobs}")
            info, where, build_s = own_index(meta, spec, knob), export, None
            if info is None:
                t0 = time.perf_counter()
                info = build(spec, cat.vectors.numpy(), scorable[1:].numpy(), Path(tmp) / f"{kind}.faiss")
                build_s = time.perf_counter() - t0
                os.replace(Path(tmp) / f"{kind}.faiss", Path(tmp) / "candidates.faiss")
                where = Path(tmp)
            else:
                log.info("%s: the export's own index (%s), not rebuilt", kind, info)
            built = {k: v for k, v in IndexSpec.of(info).knobs.items() if k != knob}
            for v in map(int, values.split(",")):
                index = CandidateIndex.load(where, {"index": info}, **{knob: v}, threads=args.threads)
                ranks, recall, secs = index_ranks(tastes, targets, banned, cat, index, exact_top)
                q = quality(ranks)
                row = {"kind": kind, **built, knob: v, **q,
                       "HR_ratio": q[f"HR@{K}"] / exact[f"HR@{K}"] if exact[f"HR@{K}"] else None,
                       "NDCG_ratio": q[f"NDCG@{K}"] / exact[f"NDCG@{K}"] if exact[f"NDCG@{K}"] else None,
                       f"recall@{K}": recall, "ms_per_user": 1000 * secs / len(tastes), "build_s": build_s}
                log.info("%s", row)
                rows.append(row)
    result = {"commit": git_commit(["handler", "train", "bench/index_quality.py"]), "export": str(export), "model_version": meta.get("model_version"),
              "items": cat.num_items, "available": len(cat.rows), "users": len(tastes), "threads": args.threads,
              "exact": exact, "grid": rows, "load_average_before": load_before,
              "load_average_after": load_average()}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.label or export.resolve().name] = result  # one file, a result per export
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
