"""`make serve` / `make stop`: the demo model on config.properties' ports, left running.

    .venv/bin/python devtools/serve.py artifacts/demo             # archive, start, wait, print how to call it
    .venv/bin/python devtools/serve.py --stop                     # stop the server this started

The server runs from --workdir (default artifacts/serve: key_file.json, logs/, its own TMPDIR) in a
process session of its own, so it outlives this script and `--stop` ends exactly that server.
ops/rotate_keys.py runs beside it (its own session too) and renews both keys at half their
lifetime, so the server keeps answering after token_expiration_min; it stops with the server.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from devtools import key_rotator
from devtools.local_server import LocalTorchServe, archive, config_ports, stop_server_in

WORKDIR = ROOT / "artifacts" / "serve"


def serve(export: Path, workdir: Path) -> int:
    if not (export / "metadata.json").exists():
        print(f"serve.py: {export}/metadata.json not found: train first (make train-demo)", file=sys.stderr)
        return 1
    mar = archive(export, export / "model_store")
    ts = LocalTorchServe(export / "model_store", ["seqrec=seqrec.mar"], workdir=workdir, ports=config_ports())
    try:
        ts.start()
        print(f"archived {mar}; starting TorchServe on {ts.base_url} ...", flush=True)
        # TorchServe never renews its keys: without this every call is refused after 60 min.
        rotator = key_rotator.start(ts, detach=True)
        ts.wait_ready()
    except RuntimeError as e:  # already running, ports taken, or the model did not load (logs)
        key_rotator.stop_detached(workdir)
        ts.stop()
        print(f"serve.py: {e}", file=sys.stderr)
        return 1
    except BaseException:
        key_rotator.stop_detached(workdir)
        ts.stop()
        raise
    items = pd.read_parquet(export / "items.parquet", columns=["item_id", "available"])
    example = items.loc[items["available"], "item_id"].head(3).tolist()
    body = json.dumps({"history": example, "k": 5})
    print(f"""
TorchServe is up (launcher pid {ts.proc.pid}), model seqrec {json.loads((export / 'metadata.json').read_text())['model_version']}.

  KEY=$(python3 -c 'import json; print(json.load(open("{ts.key_file}"))["inference"]["key"])')
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d '{body}' {ts.base_url}/predictions/seqrec

  keys:    {ts.key_file}   (management key for {ts.management_url}; both are rotated at half
           their lifetime by ops/rotate_keys.py, pid {rotator.pid}, log {ts.dir / 'logs' / 'rotate_keys.log'})
  metrics: curl -s {ts.metrics_url}/metrics
  logs:    {ts.dir / 'logs'}/
  stop:    make stop     (or .venv/bin/python devtools/serve.py --stop)""")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, nargs="?", default=ROOT / "artifacts" / "demo",
                    help="export directory (default artifacts/demo)")
    ap.add_argument("--workdir", type=Path, default=WORKDIR, help="server directory (default artifacts/serve)")
    ap.add_argument("--stop", action="store_true", help="stop the server started from --workdir")
    args = ap.parse_args(argv)
    if args.stop:
        key_rotator.stop_detached(args.workdir)  # it would also stop by itself with the server
        if stop_server_in(args.workdir):
            print(f"stopped the TorchServe of {args.workdir}")
        else:
            print(f"no TorchServe started from {args.workdir} is running")
        return 0
    return serve(args.export, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
