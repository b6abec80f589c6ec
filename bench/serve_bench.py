"""Serving benchmark: the handler called in process vs the same handler behind TorchServe (HTTP),
on synthetic catalogues of 50,000 and 2,000,000 items, histories of 50 items, k = 10.

    python bench/serve_bench.py                     # CPU, writes bench/results/serve.json
    python bench/serve_bench.py --device cuda       # the same on a GPU (handler gets gpu_id 0)
    python bench/serve_bench.py --sizes 50000 --configs 1,16,5 2,16,5   # compare server configs
    python bench/serve_bench.py --sizes 2000000 --scoring index --index hnsw:M=32,ef_search=64
    python bench/serve_bench.py --sizes 50000 --export artifacts/scale/export   # + a trained 2M-item model
    python bench/serve_bench.py --sizes 50000 --export artifacts/scale/export --ef-search 768   # served at 768

Per size it measures, in one run:
  scoring    chunked exact top-k (handler/seqrec_scoring.py) vs plain torch.topk(q @ E.T), ms per
             call for 1, 8 and 32 queries;
  in_process SeqrecHandler.handle() called directly with batches of 1 and of batchSize requests,
             at 1 thread and at all cores: latency per call and requests/s;
  torchserve a real TorchServe (archive.sh + config.properties, loopback, token auth) at
             concurrency 1, 8, 32: p50/p95/p99 latency and requests/s (keep-alive http.client
             clients in threads, on the same cores as the server);
  ratio      best TorchServe requests/s / best in-process requests/s.
Each of those (but scoring) for both scoring modes of the model YAML side by side: exact (the full
scan) and index (the export's candidate index, --index, auto = PQ from 100k available items,
then exact re-ranking); `summary` has the shipped config's figures per size and mode.
--export adds trained exports (e.g. make bench-scale's 2M-item model): a copy of each with the
--index candidate index built over its own vectors, keyed "<items> trained" in `sizes`.
Exports and archives are cached under --work; the machine's load average is recorded because
these 2 cores are shared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from devtools.local_server import LocalTorchServe, archive
from handler.seqrec_scoring import chunked_topk, plain_topk

HISTORY, K = 50, 10


def percentiles(xs_ms):
    a = np.asarray(xs_ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


# ---- data
def build_export(n: int, out: Path, index_spec: str = "auto") -> Path:
    """A scripted SequenceModel over n items (random unit vectors), 95% available, with the
    candidate index `index_spec` builds (auto: PQ from 100k available items)."""
    from handler.seqrec_artifact import FORMAT_VERSION, ItemIndex

    meta = out / "metadata.json"
    # Keyed by the committed model/ tree and the export format too: an export of another format
    # version does not load in this handler.
    code = subprocess.run(["git", "rev-parse", "HEAD:model"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    old = json.loads(meta.read_text()) if meta.exists() else {}
    key = (n, code, FORMAT_VERSION, f"{index_spec} {index_code()}")
    if (old.get("num_items"), old.get("model_code"), old.get("format_version"), old.get("index_spec")) == key:
        return out
    from model import ModelConfig, SequenceModel
    from train.export import export_model

    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ids = np.arange(n, dtype=np.int64) * 7 + 100_000
    index = ItemIndex.from_items(pd.Series(ids))
    items = pd.DataFrame({"item_id": index.ids.to_numpy(), "available": rng.random(n) < 0.95})
    popularity = rng.zipf(1.5, n).clip(max=10 ** 6)
    model = SequenceModel(ModelConfig(num_items=n, total_length=HISTORY))
    export_model(model, index, popularity, out, items=items, index_spec=index_spec,
                 metadata={"model_version": f"bench{n}", "model_code": code, "index_spec": key[3]})
    return out


def index_code() -> str:
    """The committed index module: an export cached under one meaning of a spec ("auto" was HNSW,
    is PQ) must not be served under another."""
    return subprocess.run(["git", "rev-parse", "HEAD:handler/seqrec_index.py"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


def trained_export(src: Path, out: Path, index_spec: str) -> Path:
    """A copy of a trained export's files with the candidate index `index_spec` built over its own
    item vectors (cached: the same source files and spec are not built again)."""
    from handler.seqrec_artifact import DATA_FILES, INDEX_FILE, ITEMS_FILE, VECTORS_FILE, verify_export, write_metadata
    from handler.seqrec_index import IndexSpec, build

    meta = verify_export(src)
    key = [meta["files"], f"{index_spec} {index_code()}"]
    old = out / "metadata.json"
    if old.exists() and json.loads(old.read_text()).get("bench_key") == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in DATA_FILES:  # not its train/ folder, nor an index of its own
        shutil.copyfile(src / name, out / name)
    vectors = np.load(out / VECTORS_FILE, mmap_mode="r")
    available = pd.read_parquet(out / ITEMS_FILE, columns=["available"])["available"].to_numpy()
    meta["index"] = build(IndexSpec.parse(index_spec), vectors, available, out / INDEX_FILE)
    write_metadata(out, {**meta, "bench_key": key})
    return out


def has_index(export: Path) -> bool:
    info = json.loads((export / "metadata.json").read_text()).get("index") or {}
    return info.get("kind", "none") != "none"


def request_bodies(export: Path, count=256, seed=0):
    items = pd.read_parquet(export / "items.parquet", columns=["item_id", "available"])
    avail = items.loc[items["available"], "item_id"].to_numpy()
    rng = random.Random(seed)
    return [{"history": [int(x) for x in rng.sample(list(avail[:200_000]), HISTORY)], "k": K} for _ in range(count)]


# ---- scoring: chunked vs plain, same matrix, same queries
def bench_scoring(matrix: torch.Tensor, device, reps: int):
    out = {}
    g = torch.Generator().manual_seed(1)
    for b in (1, 8, 32):
        q = torch.nn.functional.normalize(torch.randn(b, matrix.size(1), generator=g), dim=-1).to(device)
        banned = [torch.randint(0, matrix.size(0), (HISTORY,), generator=g).to(device) for _ in range(b)]
        row = {}
        for name, fn in (("chunked", lambda: chunked_topk(q, matrix, K, banned)),
                         ("plain", lambda: plain_topk(q, matrix, K, banned))):
            times = []
            for i in range(reps + 1):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if i:  # first call warms caches and allocator
                    times.append((time.perf_counter() - t0) * 1e3)
            row[f"{name}_ms"] = {"median": float(np.median(times)), "min": float(np.min(times))}
        row["chunked_speedup"] = row["plain_ms"]["median"] / row["chunked_ms"]["median"]
        out[f"B={b}"] = row
    return out


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---- in process: the handler exactly as TorchServe calls it
def bench_in_process(export: Path, bodies, device: str, batch_sizes, thread_counts, seconds: float,
                     section: dict):
    from handler.seqrec_handler import SeqrecHandler
    from ts.context import Context, RequestProcessor

    gpu_id = (int(device.split(":")[1]) if ":" in device else 0) if device.startswith("cuda") else None
    # metrics=None: measure the handler, not its metric log lines
    ctx = Context("seqrec", str(export), {"model": {"modelName": "seqrec"}}, max(batch_sizes), gpu_id, "0.12.0",
                  model_yaml_config={"seqrec": section})

    def run_batch(h, ctx, batch):
        ctx.request_processor = [RequestProcessor({}) for _ in batch]
        return h.handle([{"body": b} for b in batch], ctx)

    h = SeqrecHandler()
    t0 = time.perf_counter()
    h.initialize(ctx)
    load_s = time.perf_counter() - t0
    results = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for b in batch_sizes:
            lat, done, i = [], 0, 0
            run_batch(h, ctx, bodies[:b])  # warm
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(lat) < 5:
                batch = [bodies[(i + j) % len(bodies)] for j in range(b)]
                i += b
                t = time.perf_counter()
                run_batch(h, ctx, batch)
                lat.append((time.perf_counter() - t) * 1e3)
                done += b
            wall = time.perf_counter() - start
            results[f"threads={threads},batch={b}"] = {**percentiles(lat), "rps": done / wall}
    return {"load_s": load_s, "runs": results, "best_rps": max(r["rps"] for r in results.values())}


# ---- TorchServe over HTTP
def worker_rss_mb(ts: LocalTorchServe):
    try:
        import psutil
        procs = psutil.Process(ts.proc.pid).children(recursive=True)
        return sum(p.memory_info().rss for p in procs if "model_service_worker" in " ".join(p.cmdline())) / 2 ** 20
    except Exception:  # noqa: BLE001 -- informative only
        return None


def load_test(ts: LocalTorchServe, bodies, concurrency: int, total: int):
    per = max(1, total // concurrency)
    lat, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)
    key = ts.key

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", ts.inference_port, timeout=300)
        mine = []
        barrier.wait()
        for j in range(per):
            body = bodies[(c * per + j) % len(bodies)]
            t = time.perf_counter()
            conn.request("POST", "/predictions/seqrec", body,
                         {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            r = conn.getresponse()
            r.read()
            mine.append((time.perf_counter() - t) * 1e3)
            if r.status != 200:
                with lock:
                    errors.append(r.status)
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {**percentiles(lat), "rps": len(lat) / wall, "errors": len(errors)}


def bench_http(export: Path, bodies, work: Path, cfg: dict, concurrencies, totals, gpu: bool,
               section: dict):
    store = work / "model_store"
    work.mkdir(parents=True, exist_ok=True)
    name = "-".join(f"{k}{v}" for k, v in section.items())
    yaml_path = work / f"model-w{cfg['workers']}-b{cfg['batchSize']}-d{cfg['maxBatchDelay']}-{name}.yaml"
    yaml_path.write_text(f"minWorkers: {cfg['workers']}\nmaxWorkers: {cfg['workers']}\nbatchSize: {cfg['batchSize']}\n"
                         f"maxBatchDelay: {cfg['maxBatchDelay']}\nresponseTimeout: 120\n"
                         "seqrec:\n" + "".join(f"  {k}: {v}\n" for k, v in section.items()))
    t0 = time.perf_counter()
    archive(export, store, yaml_path)
    archive_s = time.perf_counter() - t0
    settings = {} if gpu else {"number_of_gpu": "0"}
    # SEQREC_THREADS would override the handler's own cores // workers choice being measured.
    ts = LocalTorchServe(store, ["seqrec=seqrec.mar"], workdir=work / "server", settings=settings,
                         env={"SEQREC_THREADS": None})
    json_bodies = [json.dumps(b) for b in bodies]
    t0 = time.perf_counter()
    with ts:
        ts.wait_ready(["/predictions/seqrec"], timeout=600, body=bodies[0])
        startup_s = time.perf_counter() - t0
        for b in bodies[:8]:
            ts.post(body=b)
        out = {"archive_s": archive_s, "startup_s": startup_s, "worker_rss_mb": worker_rss_mb(ts), "levels": {}}
        for c, total in zip(concurrencies, totals):
            out["levels"][f"c={c}"] = load_test(ts, json_bodies, c, total)
        out["best_rps"] = max(v["rps"] for v in out["levels"].values())
        return out


def serve_mode(export: Path, bodies, n: int, mode: str, configs, cores: int, args) -> dict:
    """In-process and TorchServe figures for one scoring mode (model YAML seqrec.scoring)."""
    batch_sizes = sorted({1, *[c["batchSize"] for c in configs]})
    section = {"scoring": mode, **({"ef_search": args.ef_search} if mode == "index" and args.ef_search else {})}
    out = {"model_yaml_seqrec": section,
           "in_process": bench_in_process(export, bodies, args.device, batch_sizes, sorted({1, cores}),
                                          args.seconds, section)}
    print(f"[{n} {mode}] in-process {json.dumps(out['in_process'])}", flush=True)
    if args.skip_http:
        return out
    slow = n > 100_000 and mode == "exact"
    totals = [max(c * (max(1, args.per_client // 3) if slow else args.per_client), 40) for c in args.concurrency]
    out["torchserve"] = {}
    for cfg in configs:
        name = f"workers={cfg['workers']},batchSize={cfg['batchSize']},maxBatchDelay={cfg['maxBatchDelay']}"
        r = bench_http(export, bodies, args.work / f"http_{n}_{mode}", cfg, args.concurrency, totals,
                       args.device.startswith("cuda"), section)
        r["ratio_to_in_process"] = r["best_rps"] / out["in_process"]["best_rps"]
        out["torchserve"][name] = r
        print(f"[{n} {mode}] torchserve {name} {json.dumps(r)}", flush=True)
    return out


def summary(sizes: dict) -> dict:
    """The shipped config's headline per size and mode, and each against the smallest catalogue's exact."""
    rows = {}
    for n, size in sizes.items():
        for mode in ("exact", "index"):
            ts = next(iter(size.get(mode, {}).get("torchserve", {}).values()), None)
            if ts:
                rows[f"{n} {mode}"] = {"rps_c32": ts["levels"].get("c=32", {}).get("rps"),
                                       "p99_ms_c8": ts["levels"].get("c=8", {}).get("p99"),
                                       "ratio_to_in_process": ts["ratio_to_in_process"],
                                       "worker_rss_mb": ts["worker_rss_mb"]}
    synthetic = [n for n in sizes if n.isdigit()]
    base = rows.get(f"{min(synthetic, key=int)} exact", {}).get("rps_c32") if synthetic else None
    for row in rows.values():
        row["rps_c32_vs_smallest_exact"] = row["rps_c32"] / base if base and row["rps_c32"] else None
    return rows


def shipped_config():
    import yaml  # PyYAML: TorchServe's own dependency
    y = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())
    return {"workers": int(y["minWorkers"]), "batchSize": int(y["batchSize"]), "maxBatchDelay": int(y["maxBatchDelay"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 2_000_000])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--configs", nargs="*", default=None, metavar="WORKERS,BATCH,DELAY_MS",
                    help="TorchServe settings to measure (default: handler/model-config.yaml)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per in-process measurement")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--index", default="auto", help="the exports' candidate index (train.config index)")
    ap.add_argument("--scoring", nargs="+", default=["exact", "index"], choices=["exact", "index"],
                    help="scoring modes to measure side by side (index: where the export has one)")
    # 288: p99 from 2,304 answers at 8 clients (its 23rd slowest; at 24 a client it was the 2nd
    # slowest of 192), and levels long enough that the workers' first touches of the memory-mapped
    # vectors are not most of them: 96 a client measured p99 48-67 ms at 1.9M live items, 288 40 ms
    ap.add_argument("--per-client", type=int, default=288,
                    help="requests each client sends per concurrency level (a third of it for exact scans past 100k items)")
    ap.add_argument("--ef-search", type=int, default=None,
                    help="index mode's model YAML seqrec.ef_search (default: the index's own, from --index); "
                         "another value needs no rebuild of a cached export")
    ap.add_argument("--export", type=Path, nargs="*", default=[], metavar="DIR",
                    help="trained exports measured too, with the --index candidate index built over their vectors")
    ap.add_argument("--work", type=Path, default=Path("/tmp/seqrec_serve_bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    configs = [dict(zip(("workers", "batchSize", "maxBatchDelay"), map(int, c.split(","))))
               for c in args.configs] if args.configs else [shipped_config()]
    cores = len(os.sched_getaffinity(0))
    result = {
        "benchmark": "serve",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "handler_dirty": bool(subprocess.run(["git", "status", "--porcelain", "handler", "config.properties", "archive.sh"],
                                             cwd=ROOT, capture_output=True, text=True).stdout.strip()),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": cores, "cpu": _cpu_name(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "loadavg_start": os.getloadavg()},
        "setup": {"history": HISTORY, "k": K, "item_vectors": "sizes given as numbers: random unit vectors, D=64, "
                  "95% available; '<items> trained': the --export's own vectors and availability",
                  "exports": [str(e) for e in args.export], "index_spec": args.index, "ef_search": args.ef_search,
                  "requests_per_client": args.per_client,
                  "in_process": "SeqrecHandler.handle() with ts.context.Context, metrics off",
                  "http": "TorchServe 0.12 loopback, token auth, http.client keep-alive clients in threads on the same cores",
                  "ratio": "best TorchServe requests/s over concurrency levels / best in-process requests/s"},
        "sizes": {},
    }
    catalogues = [(str(n), lambda n=n: build_export(n, args.work / f"export_{n}", args.index)) for n in args.sizes]
    for src in args.export:
        items = json.loads((src / "metadata.json").read_text())["num_items"]
        catalogues.append((f"{items} trained", lambda src=src: trained_export(src, args.work / f"trained_{src.name}",
                                                                                args.index)))
    for label, make in catalogues:
        t0 = time.perf_counter()
        export = make()
        n = json.loads((export / "metadata.json").read_text())["num_items"]
        bodies = request_bodies(export)
        size = {"export_build_s": time.perf_counter() - t0,
                "index": json.loads((export / "metadata.json").read_text()).get("index")}
        print(f"[{label}] export ready", flush=True)
        matrix = torch.from_numpy(np.load(export / "item_vectors.npy"))[1:].to(device)
        threads = max(1, cores // configs[0]["workers"])  # what one TorchServe worker gets
        torch.set_num_threads(threads)
        size["scoring"] = {"threads": threads, **bench_scoring(matrix, device, reps=5 if n > 100_000 else 20)}
        del matrix
        print(f"[{n}] scoring {json.dumps(size['scoring'])}", flush=True)
        # Exact and index side by side on the same export (an export without an index: exact only).
        for mode in [m for m in args.scoring if m == "exact" or has_index(export)]:
            size[mode] = serve_mode(export, bodies, n, mode, configs, cores, args)
        result["sizes"][label] = size
    result["summary"] = summary(result["sizes"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
