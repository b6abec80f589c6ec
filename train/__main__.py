"""Train, evaluate and export a seqrec model.

    python -m train --data synthetic --out artifacts/demo
    python -m train --data amazon-beauty --out artifacts/beauty --set epochs=40 model.embedding_dim=64
    python -m train --config my.json --out artifacts/x --version 2.0
    torchrun --nproc_per_node 2 -m train --data synthetic --out artifacts/ddp   # DDP (gloo), processes share the cores

Data: `synthetic` (embedded generator), a bundled dataset name under $SEQREC_DATA
(ml-latest-small, amazon-beauty, otto-sample, diginetica-sample), or a .csv/.parquet event log.
"""
from __future__ import annotations

from .threads import quiet_openmp_waits

quiet_openmp_waits()  # first: OpenMP reads its wait policy once, when torch loads it

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

import torch.distributed as dist  # noqa: E402 -- torch after quiet_openmp_waits()

from .config import load_config  # noqa: E402
from .errors import UserError, cli_error  # noqa: E402
from .pipeline import exit_rank, run, under_torchrun  # noqa: E402
from .report import closing_lines  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="dataset name or event-log path (overrides config)")
    ap.add_argument("--out", required=True, help="export directory")
    ap.add_argument("--config", help="JSON file with TrainConfig fields")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. epochs=5 model.hidden_dim=64")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--version", help="model version written to metadata.json")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data={args.data}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.version:
        overrides.append(f"version={json.dumps(args.version)}")
    try:
        cfg = load_config(args.config, overrides)
        summary = run(cfg, args.out, resume=not args.fresh)
    except UserError as e:  # a mistake in what was asked: one line; anything else is a bug
        return cli_error(ap.prog, e)
    finally:
        # Under torchrun: leave the process group before the interpreter exits. A rank that
        # exited with gloo's threads still running aborted at times ("terminate called without
        # an active exception", SIGABRT) while rank 0 was still exporting.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if not summary:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print("\n" + "\n".join(closing_lines(summary, args.out)))
    return 0


if __name__ == "__main__":
    code = main()
    if under_torchrun():  # a torchrun rank: no interpreter teardown (exit_rank says why)
        exit_rank(code)
    sys.exit(code)
