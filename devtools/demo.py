"""`make demo`: recommendations served by a real TorchServe, asked through the SDK.

    .venv/bin/python devtools/demo.py artifacts/demo        # after `make train-demo`

Archives the export into <export>/model_store, starts TorchServe on free loopback ports
(devtools/local_server.py), waits until the model answers, asks for recommendations for three users
of the synthetic marketplace the model was trained on — each user's history without their last
event, which training held out as the test case — prints history and answer with the items'
category, price and availability, then the model's offline test metrics next to popularity, and
stops the server.

The users' histories come from re-running the synthetic generator with the settings saved in
metadata.json (the export keeps items, not events). A dev tool, so it may import train/; nothing
here goes into the .mar.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from devtools.local_server import LocalTorchServe, archive
from seqrec_sdk import Client, Event
from train.synthetic import generate_marketplace

K = 10
USERS = 3
SHOW_HISTORY = 8  # most recent events shown per user; all of them are sent


def demo_users(meta: dict, items: pd.DataFrame, n: int = USERS) -> pd.DataFrame:
    """Events of n users with 10+ events, regenerated from the training settings."""
    cfg = meta["train_config"]
    if cfg.get("data") != "synthetic":
        raise SystemExit(f"demo.py: the export was trained on {cfg.get('data')!r}; the demo needs one "
                         "trained on the synthetic marketplace (make train-demo)")
    events, _ = generate_marketplace(n_users=cfg["synthetic_users"], n_items=cfg["synthetic_items"],
                                     seed=cfg.get("synthetic_seed", 0))
    # Users whose held-out item could be recommended at all: new to them (exclude_seen) and still
    # for sale at the end of the log (sold items are never served; over half of the held-out
    # items are sold by then).
    by_user = events.groupby("user_id")["item_id"]
    servable = by_user.apply(lambda ids: ids.iloc[-1] not in set(ids.iloc[:-1])
                             and bool(items.at[ids.iloc[-1], "available"]))
    eligible = servable[servable & (by_user.size() >= 10)].index
    picked = eligible[[0, len(eligible) // 2, len(eligible) - 1]][:n]  # spread over the user range
    return events[events["user_id"].isin(picked)]


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def item_cells(items: pd.DataFrame, item_id) -> str:
    """Category and price columns of an item ('?' for an id the export does not know)."""
    if item_id not in items.index:
        return f"{'?':<14}{'':>9}"
    return f"{items.at[item_id, 'category']:<14}{items.at[item_id, 'price']:>9.2f}"


def show_user(user_id, events: pd.DataFrame, recs, items: pd.DataFrame) -> None:
    history, target = events.iloc[:-1], events.iloc[-1]
    print(f"\nuser {user_id}: {len(history)} events, the {min(SHOW_HISTORY, len(history))} most recent "
          f"(oldest first)")
    print(f"  {'time (UTC)':<17}{'event':<10}{'item_id':>8}  {'category':<14}{'price':>9}")
    for e in history.tail(SHOW_HISTORY).itertuples():
        print(f"  {when(e.timestamp):<17}{e.event_type:<10}{e.item_id:>8}  {item_cells(items, e.item_id)}")
    print(f"  recommendations (model {recs.model} {recs.model_version}, {recs.latency_ms:.0f} ms"
          f"{', ' + recs.server_fallback if recs.server_fallback else ''}):")
    print(f"  {'rank':<6}{'item_id':>8}{'score':>8}  {'category':<14}{'price':>9}  available")
    for rank, it in enumerate(recs.items, 1):
        avail = bool(items.at[it.item_id, "available"]) if it.item_id in items.index else "?"
        print(f"  {rank:<6}{it.item_id:>8}{it.score:>8.3f}  {item_cells(items, it.item_id)}  {avail}")
    rank = recs.item_ids.index(target.item_id) + 1 if target.item_id in recs.item_ids else None
    outcome = f"rank {rank}" if rank else f"not in the top {K}"
    print(f"  held-out next event: {target.event_type} of item {target.item_id} "
          f"({items.at[target.item_id, 'category']}) -> {outcome}")


def show_metrics(meta: dict) -> None:
    metrics = meta.get("metrics") or {}
    if "model" not in metrics:
        return
    users = metrics["model"].get("users")
    print(f"\noffline test metrics (leave-one-out, full ranking, {users} users; 95% bootstrap CI)")
    names = [f"{m}@{K}" for m in ("HR", "NDCG", "MRR")]
    print(f"  {'':<12}" + "".join(f"{n:>24}" for n in names))
    for who in ("model", "popularity"):
        m = metrics.get(who, {})
        cells = []
        for n in names:
            lo, hi = m.get(f"{n}_ci95", (float("nan"), float("nan")))
            cells.append(f"{m.get(n, float('nan')):.4f} [{lo:.3f}, {hi:.3f}]")
        print(f"  {who:<12}" + "".join(f"{c:>24}" for c in cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="export directory (python -m train --out ...)")
    args = ap.parse_args(argv)
    meta_path = args.export / "metadata.json"
    if not meta_path.exists():
        ap.error(f"{meta_path} not found: train first (make train-demo)")
    meta = json.loads(meta_path.read_text())
    items = pd.read_parquet(args.export / "items.parquet").set_index("item_id")
    users = demo_users(meta, items)

    mar = archive(args.export, args.export / "model_store")
    print(f"archived {mar}")
    with LocalTorchServe(args.export / "model_store", ["seqrec=seqrec.mar"]) as ts:
        print(f"starting TorchServe on {ts.base_url} (management {ts.management_url}, "
              f"metrics {ts.metrics_url}) ...", flush=True)
        ts.wait_ready()
        with Client(ts.base_url, token_file=str(ts.key_file), timeout=(2.0, 30.0)) as client:
            for user_id, events in users.groupby("user_id"):
                history = [Event(e.item_id, timestamp=e.timestamp, event_type=e.event_type, source=e.source)
                           for e in events.iloc[:-1].itertuples()]
                recs = client.recommend(history, k=K, user_id=str(user_id),
                                        now=float(events["timestamp"].iloc[-1]))
                show_user(user_id, events, recs, items)
    show_metrics(meta)
    print("\nTorchServe stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
