"""Catalogue churn at marketplace scale (issue 12, item 6): new and sold listings reach a served
version end to end, under load, with no failed request.

    python -m bench.churn                          # 2M items, 20k new, 20k sold -> bench/results/churn.json
    python -m bench.churn --items 20000 --new 200 --sold 200 --out /tmp/churn.json   # smoke size

The base export (cached in --work; rebuilt when the size, the model code or the format changes) is
an untrained content model (model.use_content, random weights: nothing timed here depends on them)
over train.synthetic's item table of --items listings (category, price), 95% available, with the
--index candidate index (default: PQ, what `auto` picks at this size). A real TorchServe
(config.properties, with the model API on: the shipped config keeps it off, and then a new version
can only be loaded at a start, on another host) serves it to --clients keep-alive clients, and
then, timed one after another:

  update    python -m train.catalog: a table of --new new listings and --sold sold ones -> a new
            export: new vectors from their content, the index extended (never rebuilt here)
  archive   ./archive.sh -> seqrec_<version>.mar
  register  POST /models with 0 workers
  rollout   python -m ops.rollout: the new version's workers one at a time, a smoke test,
            set-default, drain, the old version scaled to 0

end_to_end_s runs from the table's arrival to set-default; from then on every answer of the default
route is the new version's. Checks, each recorded: failed requests through the whole run (an HTTP
status other than 200, or no answer); answers of the new version holding a sold listing; new
listings the new version does not know (a history of them must have no unknown ids); the index
record of the new export (entries added, not rebuilt).
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import requests
import torch

from bench.provenance import ROOT, git_commit, load_average
from devtools.local_server import LocalTorchServe, archive

HISTORY, K = 50, 10
BASE_VERSION = "1"


def build_base(n: int, out: Path, index_spec: str, seed: int = 0) -> Path:
    """The cached base export: an untrained content model over n synthetic listings."""
    from handler.seqrec_artifact import FORMAT_VERSION, ItemIndex
    from model import ModelConfig, SequenceModel
    from train.content import fit_content_spec, index_content
    from train.export import export_model
    from train.synthetic import _make_items, category_names

    code = subprocess.run(["git", "rev-parse", "HEAD:model"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta_path = out / "metadata.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    key = [n, code, FORMAT_VERSION, index_spec, seed]
    if old.get("bench_key") == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    category, price, *_ = _make_items(n, 12, rng)
    items = pd.DataFrame({"item_id": np.arange(n, dtype=np.int64) + 1_000_000,
                          "category": pd.Categorical.from_codes(category, categories=category_names(12)),
                          "price": price, "available": rng.random(n) < 0.95})
    index = ItemIndex.from_items(items["item_id"])
    mc = ModelConfig(num_items=n, total_length=HISTORY, use_content=True,
                     content_categorical=["category"], content_numeric=["price"])
    fit_content_spec(mc, items)
    torch.manual_seed(seed)
    model = SequenceModel(mc, None, index_content(mc, items, index.ids))
    popularity = rng.zipf(1.5, n).clip(max=10 ** 6)
    export_model(model, index, popularity, out, items=items, index_spec=index_spec,
                 metadata={"model_version": BASE_VERSION, "model_config": mc.to_dict(), "bench_key": key})
    return out


def churn_table(export: Path, new: int, sold: int, seed: int = 1) -> pd.DataFrame:
    """--new listings with fresh ids and content like the catalogue's, and --sold available ones."""
    items = pd.read_parquet(export / "items.parquet", columns=["item_id", "category", "price", "available"])
    rng = np.random.default_rng(seed)
    live = items.loc[items["available"], "item_id"].to_numpy()
    gone = rng.choice(live, sold, replace=False)
    like = items.sample(new, random_state=seed)
    fresh = pd.DataFrame({"item_id": np.arange(new, dtype=np.int64) + int(items["item_id"].max()) + 1,
                          "category": like["category"].to_numpy(), "price": like["price"].to_numpy(),
                          "available": True})
    sold_rows = items.set_index("item_id").loc[gone, ["category", "price"]].reset_index().assign(available=False)
    return pd.concat([fresh, sold_rows], ignore_index=True)


class Load:
    """Keep-alive clients posting histories to the default route until stopped; every answer kept
    as (time, status, model_version, item ids)."""

    def __init__(self, ts: LocalTorchServe, bodies: List[str], clients: int):
        self.ts, self.bodies, self.clients = ts, bodies, clients
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.answers: List[tuple] = []
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]

    def _client(self, c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.ts.inference_port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.ts.key}"}
        j = c
        while not self.stop_event.is_set():
            body = self.bodies[j % len(self.bodies)]
            j += self.clients
            t = time.time()
            try:
                conn.request("POST", "/predictions/seqrec", body, headers)
                r = conn.getresponse()
                text = r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.ts.inference_port, timeout=60)
                status, text = f"{type(e).__name__}", b"{}"
            try:
                answer = json.loads(text) if status == 200 else {}
            except ValueError:
                status, answer = "bad json", {}
            with self.lock:
                self.answers.append((t, time.time(), status, answer.get("model_version"),
                                     [x["item_id"] for x in answer.get("items", [])]))
        conn.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=90)


def timed(name: str, cmd: List[str], phases: Dict[str, float], env=None) -> None:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    phases[name] = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-4000:]}{r.stdout[-2000:]}")


def register(ts: LocalTorchServe, mar: str) -> None:
    r = requests.post(f"{ts.management_url}/models", params={"url": mar, "model_name": "seqrec",
                                                             "initial_workers": 0, "synchronous": "true"},
                      headers={"Authorization": f"Bearer {ts.management_key}"}, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"registering {mar} failed ({r.status_code}): {r.text}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2_000_000)
    ap.add_argument("--new", type=int, default=20_000, help="new listings in the update")
    ap.add_argument("--sold", type=int, default=20_000, help="listings sold in the update")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients during the update")
    ap.add_argument("--index", default="pq:m=32,shortlist=500",
                    help="the base export's candidate index (handler.seqrec_index.IndexSpec)")
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench-churn")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "churn.json")
    args = ap.parse_args(argv)
    if args.items < 1000 or args.new < 1 or not 0 < args.sold < 0.5 * args.items or args.clients < 1:
        ap.error("need --items >= 1000, --new >= 1, 0 < --sold < half of --items, --clients >= 1")
    py = sys.executable
    env = dict(os.environ, PATH=f"{Path(py).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result: Dict[str, Any] = {"benchmark": "churn", "commit": git_commit(), "command": ["python -m bench.churn", *(argv or sys.argv[1:])],
                              "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "load_average": {"start": load_average()},
                              "setup": {"items": args.items, "new": args.new, "sold": args.sold, "clients": args.clients,
                                        "index": args.index, "model": "untrained content model (category, price), "
                                        "random weights; 95% of items available", "history": HISTORY, "k": K}}
    t = time.perf_counter()
    base = build_base(args.items, args.work / "base", args.index)
    result["base_build_s"] = time.perf_counter() - t  # ~0 when cached
    result["base_index"] = json.loads((base / "metadata.json").read_text())["index"]

    store, new_export = args.work / "model_store", args.work / "v2"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(new_export, ignore_errors=True)
    t = time.perf_counter()
    archive(base, store)
    result["base_archive_s"] = time.perf_counter() - t
    table = churn_table(base, args.new, args.sold)
    table_path = args.work / "churn.parquet"
    table.to_parquet(table_path, index=False)
    sold_ids = set(table.loc[~table["available"], "item_id"].tolist())
    new_ids = table.loc[table["available"], "item_id"].tolist()

    items = pd.read_parquet(base / "items.parquet", columns=["item_id", "available"])
    live = items.loc[items["available"], "item_id"].to_numpy()
    rng = np.random.default_rng(2)
    # Histories of listings for sale before and after the update.
    keep = np.setdiff1d(live, np.fromiter(sold_ids, dtype=np.int64))
    bodies = [json.dumps({"history": [int(x) for x in rng.choice(keep, HISTORY, replace=False)], "k": K})
              for _ in range(256)]
    shutil.rmtree(args.work / "server", ignore_errors=True)
    ts = LocalTorchServe(store, ["seqrec=seqrec_1.mar"], workdir=args.work / "server",
                         settings={"number_of_gpu": "0", "enable_model_api": "true"}, env={"SEQREC_THREADS": None})
    phases: Dict[str, float] = {}
    with ts:
        ts.wait_ready(["/predictions/seqrec"], timeout=900, body=json.loads(bodies[0]))
        with Load(ts, bodies, args.clients) as load:
            time.sleep(10)  # the old version under load before the update arrives
            t0_wall = time.time()
            timed("update", [py, "-m", "train.catalog", "--export", str(base), "--items", str(table_path),
                             "--out", str(new_export), "--version", "2"], phases, env)
            timed("archive", [str(ROOT / "archive.sh"), str(new_export), "--out", str(store)], phases, env)
            t = time.perf_counter()
            register(ts, "seqrec_2.mar")
            phases["register"] = time.perf_counter() - t
            keys = ts.dir / "key_file.json"
            timed("rollout", [py, "-m", "ops.rollout", "--to", "2", "--from", BASE_VERSION, "--workers", "2",
                              "--drain", "5", "--management", ts.management_url, "--inference", ts.base_url,
                              "--key-file", str(keys), "--timeout", "600"], phases, env)
            time.sleep(10)  # the new version alone under load
        probe = ts.post(body={"history": [int(x) for x in new_ids[:HISTORY]], "k": K}).json()
        cand = ts.post(body={"history": [int(x) for x in keep[:5]], "candidates": [int(x) for x in new_ids[:100]],
                             "k": K}).json()
    answers = load.answers
    failed = [a for a in answers if a[2] != 200]
    v2 = [a for a in answers if a[3] == "2"]
    first_v2 = min((a[1] for a in v2), default=None)
    result.update({
        "phase_seconds": phases,
        # The table's arrival -> the first answer of the new version on the default route.
        "end_to_end_s": first_v2 - t0_wall if first_v2 else None,
        "requests": {"total": len(answers), "failed": len(failed),
                     "failed_examples": [str(a[2]) for a in failed[:5]],
                     "old_version": sum(a[3] == BASE_VERSION for a in answers), "new_version": len(v2),
                     "rps": len(answers) / (max(a[1] for a in answers) - min(a[0] for a in answers)) if answers else 0},
        "checks": {"new_version_answers_with_a_sold_listing": sum(any(i in sold_ids for i in a[4]) for a in v2),
                   # the same count for the old version, which does not know they sold: the check can fail
                   "old_version_answers_with_a_now_sold_listing": sum(any(i in sold_ids for i in a[4]) for a in answers
                                                                      if a[3] == BASE_VERSION),
                   "new_listings_unknown_to_new_version": len(probe["unknown_items"]) if "unknown_items" in probe else None,
                   "new_listings_ranked_as_candidates": len(cand.get("items", [])),
                   "probe_model_version": probe.get("model_version")},
        "new_export": json.loads((new_export / "metadata.json").read_text())["catalog_update"],
    })
    result["load_average"]["end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("phase_seconds", "end_to_end_s", "requests", "checks")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
