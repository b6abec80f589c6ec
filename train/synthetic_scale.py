"""train.synthetic's marketplace at marketplace scale: the same world, vectorised across users.

    python -m train.synthetic_scale --users 1000000 --items 2000000 --events-per-user 5,100 --seed 0 --out DIR
    # -> DIR/events/part-00000.parquet ... (consecutive user ranges), DIR/items.parquet; counts and seconds

    from train.synthetic_scale import generate_marketplace_scale
    events, items = generate_marketplace_scale(n_users=20_000, n_items=10_000, seed=0)

The world, its constants and the five planted signals are train.synthetic's (read its docstring);
tests/test_synthetic_scale.py measures the same rates on both generators and holds them within
stated tolerances. The same seed gives the same frames, but not generate_marketplace's frames: the
draws come in another order, so the demo and the ablation keep the small generator.

Schema as train.synthetic's, with lean dtypes: events user_id int32, item_id int32, timestamp
float64, event_type and source categorical; items item_id int64, category categorical, price,
listed_at, sold_at float64, available bool. With 5-100 events a user (log-uniform, mean ~31),
1,000,000 users give ~31M events.

How it is vectorised:
- Timestamps do not depend on which items are touched, so all of them come first: per-user session
  breaks (Geometric(1/6) lengths), planned starts sorted per user, then a loop over a user's k-th
  session pushing it 30 minutes past the previous one. Taste drift (5) is a loop over k as well.
- Items are then picked in time order, one window at a time (an hour of the log, shorter when
  there are more than WINDOW_EVENTS events an hour: see below); inside a window, the k-th
  event of every user in it at once (a few dozen numpy steps per window). Chain successors (1) and
  popularity draws are chain positions (the popularity draw a searchsorted over cumulative
  popularity within the category), walked forward to the first item live at the event's time.
- A purchase sells its item at once, but an event of another user later in the same window may
  have been picked before it: such events, and their users' later events in the window, are picked
  again knowing the purchase (up to MAX_REPAIRS passes a window); any still left are dropped, as
  train.synthetic drops the events its overlapping sessions put on sold items.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .synthetic import (DAY, EVENT_P, EVENT_TYPES, FEED, HOUR_WEIGHTS, INTEREST, ITEM_ID_OFFSET, LOG_DAYS,
                        MEAN_SESSION_EVENTS, P_CHAIN, P_DRIFT, P_STAY_FEED, P_STAY_INTEREST, P_STAY_REC,
                        P_STAY_SEARCH, POPULARITY_EXPONENT, PURCHASE, RECOMMENDATION, SESSION_GAP, SOURCE_P,
                        SOURCES, T0,
                        _make_items, category_names, check_sizes, drop_after_sale)
from .synthetic_draws import Chains, other_category, weighted_rows

log = logging.getLogger(__name__)

# Items are picked an hour of the log at a time, or a time holding WINDOW_EVENTS events when that is
# shorter: the events re-picked after a purchase grow with the events an item gets in a window.
WINDOW, MIN_WINDOW, WINDOW_EVENTS = 3600.0, 60.0, 1_000
MAX_TASTES = 3
MAX_REPAIRS = 40  # passes per window that re-pick events picked before an earlier purchase


def _tastes(n_users: int, cat_p: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """1-3 distinct categories per user favouring big ones (-1 pads), Dirichlet weights (0 pads)."""
    k = rng.integers(1, MAX_TASTES + 1, n_users)
    gumbel = np.log(cat_p) - np.log(-np.log(rng.random((n_users, len(cat_p)))))
    taste = np.argsort(-gumbel, axis=1)[:, :MAX_TASTES].astype(np.int8)  # weighted, no replacement
    used = np.arange(MAX_TASTES) < k[:, None]
    taste[~used] = -1
    w = rng.exponential(1.0, (n_users, MAX_TASTES)) * used
    return taste, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class _Planned:
    """Every planned event in user-major time order, with what picking its item needs."""

    user: np.ndarray        # int32
    session: np.ndarray     # int32, numbered user-major
    first: np.ndarray       # bool: first event of its session
    t: np.ndarray           # float64 unix seconds
    etype: np.ndarray       # int8 code of EVENT_TYPES
    source: np.ndarray      # int8 code of SOURCES
    session_taste: np.ndarray  # (n_sessions, 3) int8 categories after that session's drift


def _plan(n_users: int, events_per_user: Tuple[int, int], taste: np.ndarray, cat_p: np.ndarray,
          rng: np.random.Generator) -> _Planned:
    lo, hi = events_per_user
    n_events = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1), n_users))).astype(np.int64)
    user = np.repeat(np.arange(n_users, dtype=np.int32), n_events)
    n = len(user)
    user_first = np.zeros(n, bool)
    user_first[np.cumsum(n_events) - n_events] = True
    first = user_first | (rng.random(n) < 1 / MEAN_SESSION_EVENTS)  # Geometric(1/6) session lengths
    session = (np.cumsum(first) - 1).astype(np.int32)
    s_user = user[first]
    n_sessions = len(s_user)
    per_user = np.bincount(s_user, minlength=n_users)
    s_first = np.cumsum(per_user) - per_user  # each user's first session

    hour = rng.choice(24, n_sessions, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    day = rng.integers(0, LOG_DAYS, n_sessions)
    planned = np.round(T0 + day * DAY + hour * 3600 + rng.uniform(0, 3600, n_sessions))
    planned = planned[np.lexsort((planned, s_user))]  # a user's sessions in planned-start order
    gap = np.round(5 + rng.exponential(70.0, n))
    gap[first] = 0.0
    duration = np.add.reduceat(gap, np.flatnonzero(first))
    etype = rng.choice(len(EVENT_TYPES), n, p=EVENT_P).astype(np.int8)
    source = rng.choice(len(SOURCES), n, p=SOURCE_P).astype(np.int8)
    u_drift = rng.random((n_sessions, 3))

    # Planted 4 (sessions >= 30 minutes apart) and 5 (drift), one session rank at a time.
    start = planned.copy()
    session_taste = np.empty((n_sessions, MAX_TASTES), np.int8)
    taste = taste.copy()
    cat_cum = np.cumsum(cat_p)
    for k in range(int(per_user.max())):
        users = np.flatnonzero(per_user > k)
        s = s_first[users] + k
        if k:
            start[s] = np.maximum(planned[s], start[s - 1] + duration[s - 1] + SESSION_GAP)
            d = u_drift[s]
            drift = d[:, 0] < P_DRIFT
            du, d = users[drift], d[drift]
            n_taste = (taste[du] >= 0).sum(axis=1)
            slot = np.minimum((d[:, 1] * n_taste).astype(np.int64), n_taste - 1)
            new = np.minimum(np.searchsorted(cat_cum, d[:, 2] * cat_cum[-1], side="right"), len(cat_p) - 1)
            fresh = ~(taste[du] == new[:, None]).any(axis=1)
            taste[du[fresh], slot[fresh]] = new[fresh]
        session_taste[s] = taste[users]
    cum_gap = np.cumsum(gap)
    t = start[session] + cum_gap - cum_gap[first][session]
    return _Planned(user, session, first, t, etype, source, session_taste)


class _Picker:
    """Picks the item of every planned event, in time order one window at a time; `sold` (off-platform
    sale times) is lowered by the purchases. out[e] = item number, -1 where nothing is on sale."""

    def __init__(self, ev: _Planned, weights: np.ndarray, chains: Chains, category: np.ndarray,
                 listed: np.ndarray, sold: np.ndarray, cat_p: np.ndarray, rng: np.random.Generator):
        self.ev, self.weights, self.chains, self.category = ev, weights, chains, category
        self.listed, self.sold, self.sold_base, self.cat_p = listed, sold, sold.copy(), cat_p
        n = len(ev.t)
        self.u_stay, self.u_item, self.u_chain, self.u_cat = (rng.random(n, dtype=np.float32) for _ in range(4))
        self.out = np.full(n, -1, np.int32)
        self.repicked, self.most_passes = 0, 0  # for the log line
        self.last = np.full(len(weights), -1, np.int64)  # per user: its session's last picked event
        self.stay = np.array([P_STAY_SEARCH, P_STAY_FEED, P_STAY_REC], np.float32)
        assert SOURCES.index("search") == 0 and FEED == 1 and RECOMMENDATION == 2

    def run(self) -> np.ndarray:
        ev, n = self.ev, len(self.ev.t)
        span = max(float(ev.t.max() - ev.t.min()), 1.0)
        self.window = float(np.clip(WINDOW_EVENTS / n * span, MIN_WINDOW, WINDOW))
        window = ((ev.t - ev.t.min()) // self.window).astype(np.int64)
        run_start = np.flatnonzero(np.r_[True, (ev.user[1:] != ev.user[:-1]) | (window[1:] != window[:-1])])
        step = np.arange(n) - np.repeat(run_start, np.diff(np.r_[run_start, n]))  # k-th event of its run
        key = window * (int(step.max()) + 1) + step
        del run_start, step
        order = np.argsort(key, kind="stable")  # by window, then k, then user
        w_bounds = np.r_[0, np.flatnonzero(np.diff(window[order])) + 1, n]
        del window
        n_windows, started = len(w_bounds) - 1, time.perf_counter()
        for w, (a, b) in enumerate(zip(w_bounds[:-1].tolist(), w_bounds[1:].tolist())):
            if w and w % max(n_windows // 6, 1) == 0:  # a long run shows it is moving
                log.info("items picked for %d of %d windows of %.0f s (%.0f s)", w, n_windows,
                         self.window, time.perf_counter() - started)
            k = key[order[a:b]]
            bounds = np.r_[0, np.flatnonzero(np.diff(k)) + 1, b - a] + a
            for g0, g1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                self.step(order[g0:g1])
            self.repair(np.sort(order[a:b]))
        return self.out

    def step(self, idx: np.ndarray) -> None:
        """Pick for events of distinct users, each its user's next event."""
        ev, ch = self.ev, self.chains
        u, t = ev.user[idx], ev.t[idx]
        self.last[u[ev.first[idx]]] = -1  # planted 4: a session starts from taste, not the last item
        last = self.last[u]
        new = last < 0
        lk = np.where(new, 0, last)
        pc = np.where(new, -1, self.category[self.out[lk]])
        et, src = ev.etype[lk], ev.source[lk]
        p_stay = np.where((et == INTEREST[0]) | (et == INTEREST[1]),
                          np.maximum(self.stay[src], P_STAY_INTEREST), self.stay[src])
        taste, w, u_cat = ev.session_taste[ev.session[idx]], self.weights[u], self.u_cat[idx]
        c = pc.astype(np.int64)
        rows = np.flatnonzero(new)
        c[rows] = taste[rows, weighted_rows(w[rows], u_cat[rows])]
        switch = ~new & ((et == PURCHASE) | (self.u_stay[idx] >= p_stay))  # planted 3, 2
        rows = np.flatnonzero(switch)
        c[rows] = other_category(pc[rows], taste[rows], w[rows], self.cat_p, u_cat[rows])
        follow = ~new & ~switch & (self.u_chain[idx] < P_CHAIN)  # planted 1
        pos = ch.by_popularity(c, self.u_item[idx])
        pos[follow] = ch.after(self.out[lk[follow]])
        item = ch.first_live(pos, c, t, self.listed, self.sold)
        for other in range(len(self.cat_p)):  # category c has nothing on sale (tiny catalogues only)
            rows = np.flatnonzero(item < 0)
            if not len(rows):
                break
            oc = np.full(len(rows), other)
            item[rows] = ch.first_live(ch.by_popularity(oc, self.u_item[idx[rows]]), oc, t[rows],
                                       self.listed, self.sold)
        ok = item >= 0
        idx, item = idx[ok], item[ok]
        self.out[idx] = item
        self.last[u[ok]] = idx
        bought = ev.etype[idx] == PURCHASE
        np.minimum.at(self.sold, item[bought], ev.t[idx[bought]])

    def repair(self, w_idx: np.ndarray) -> None:
        """Within a window a user's event may have been picked before another user's earlier purchase
        of the same item: pick such events, and their users' later events of the window, again, now
        knowing that purchase. Whatever is left after MAX_REPAIRS passes is dropped at the end."""
        ev = self.ev
        for passes in range(MAX_REPAIRS + 1):
            e = w_idx[self.out[w_idx] >= 0]
            late = drop_after_sale(self.out[e], ev.t[e], ev.etype[e] == PURCHASE, self.sold)
            if not late.any() or passes == MAX_REPAIRS:
                break
            bad = e[late]
            dirty, first_bad = np.unique(ev.user[bad], return_index=True)
            from_e = bad[first_bad]  # user-major order: each dirty user's first late event
            at = np.minimum(np.searchsorted(dirty, ev.user[w_idx]), len(dirty) - 1)
            redo = w_idx[(dirty[at] == ev.user[w_idx]) & (w_idx >= from_e[at])]
            # Undo the redone events' purchases: their items' sale times from the other purchases.
            mine = redo[(self.out[redo] >= 0) & (ev.etype[redo] == PURCHASE)]
            undo = self.out[mine].astype(np.int64)
            self.out[redo] = -1
            self.sold[undo] = self.sold_base[undo]
            rest = w_idx[(self.out[w_idx] >= 0) & (ev.etype[w_idx] == PURCHASE)]
            rest = rest[np.isin(self.out[rest], undo)]
            np.minimum.at(self.sold, self.out[rest], ev.t[rest])
            self.last[dirty] = self._picked_before(from_e)
            k = np.arange(len(redo)) - np.searchsorted(redo, from_e)[np.searchsorted(dirty, ev.user[redo])]
            for j in range(int(k.max()) + 1):
                self.step(redo[k == j])
            self.repicked += len(redo)
        self.most_passes = max(self.most_passes, passes)

    def _picked_before(self, e: np.ndarray) -> np.ndarray:
        """The last picked event before each event e within its session, -1 if none."""
        out = np.full(len(e), -1, np.int64)
        todo, p = np.flatnonzero(~self.ev.first[e]), e[~self.ev.first[e]] - 1
        while len(todo):
            hit = self.out[p] >= 0
            out[todo[hit]] = p[hit]
            more = ~hit & ~self.ev.first[p]
            todo, p = todo[more], p[more] - 1
        return out


def generate_marketplace_scale(
    n_users: int = 20_000,
    n_items: int = 10_000,
    n_categories: int = 12,
    events_per_user: Tuple[int, int] = (5, 60),
    seed: int = 0,
    popularity_exponent: float = POPULARITY_EXPONENT,
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) of train.synthetic's marketplace, vectorised; see the module docstring.
    popularity_exponent: item weight ~ rank^-exponent. The default is the small generator's 1.1;
    a marketplace catalogue is flatter than that (at 1.1 and 31M events over 2M items only ~1.3M
    items get any event), so the scale benchmark uses 0.9."""
    check_sizes(n_users, n_items, n_categories, events_per_user)
    if n_items + ITEM_ID_OFFSET >= 2**31 or n_users >= 2**31:
        raise ValueError("ids must fit int32")
    rng = np.random.default_rng(seed)
    category, price, popularity, listed_at, sold_at, cat_p = _make_items(n_items, n_categories, rng, popularity_exponent)
    chains = Chains.build(category, popularity, n_categories, rng)
    taste, weights = _tastes(n_users, cat_p, rng)
    ev = _plan(n_users, events_per_user, taste, cat_p, rng)
    picker = _Picker(ev, weights, chains, category, listed_at, sold_at, cat_p, rng)
    item = picker.run()
    repicked, most_passes = picker.repicked, picker.most_passes
    del picker  # its per-event uniforms, before the frames are built

    keep = item >= 0
    keep[keep] = ~drop_after_sale(item[keep], ev.t[keep], ev.etype[keep] == PURCHASE, sold_at)
    skipped, late = int((item < 0).sum()), int((item >= 0).sum() - keep.sum())
    events = pd.DataFrame({
        "user_id": ev.user[keep] + 1,
        "item_id": (item[keep] + ITEM_ID_OFFSET + 1).astype(np.int32),
        "timestamp": ev.t[keep],
        "event_type": pd.Categorical.from_codes(ev.etype[keep], categories=list(EVENT_TYPES)),
        "source": pd.Categorical.from_codes(ev.source[keep], categories=list(SOURCES)),
    })  # user-major with strictly increasing times per user: already sorted by (user, time, item)
    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64) + ITEM_ID_OFFSET + 1,  # small table: the export's dtype
        "category": pd.Categorical.from_codes(category, categories=category_names(n_categories)),
        "price": price,
        "listed_at": listed_at,
        "sold_at": np.where(np.isinf(sold_at), np.nan, sold_at),
        "available": np.isinf(sold_at),
    })
    log.info("synthetic marketplace (scale): %d events, %d users, %d items (seed %d; %d events with "
             "nothing on sale skipped, %d on items already sold dropped; %d re-picked, at most %d "
             "passes in a window)", len(events), n_users, n_items, seed, skipped, late, repicked, most_passes)
    return events, items


def write_parquet(events: pd.DataFrame, items: pd.DataFrame, out: Path, users_per_part: int = 100_000) -> int:
    """out/events/part-00000.parquet ... (consecutive user ranges, each sorted as events is) and
    out/items.parquet, written with pyarrow; the number of event parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if users_per_part < 1:
        raise ValueError(f"users_per_part must be >= 1, got {users_per_part}")
    parts = Path(out) / "events"
    parts.mkdir(parents=True, exist_ok=True)
    for old in parts.glob("part-*.parquet"):  # a rerun with fewer users leaves no stale part behind
        old.unlink()
    user = events["user_id"].to_numpy()
    edges = np.searchsorted(user, np.arange(1, int(user.max()) + users_per_part, users_per_part))
    edges = np.unique(np.r_[edges, len(events)])
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        table = pa.Table.from_pandas(events.iloc[a:b], preserve_index=False)
        pq.write_table(table, parts / f"part-{k:05d}.parquet")
    pq.write_table(pa.Table.from_pandas(items, preserve_index=False), Path(out) / "items.parquet")
    return len(edges) - 1


def _events_range(text: str) -> Tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 5,100), got {text!r}") from None
    return lo, hi


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.synthetic_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=2_000_000)
    parser.add_argument("--categories", type=int, default=12)
    parser.add_argument("--events-per-user", type=_events_range, default=(5, 100), metavar="LO,HI",
                        help="log-uniform range per user (default 5,100: ~31 a user)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--popularity-exponent", type=float, default=POPULARITY_EXPONENT,
                        help=f"item weight ~ rank^-exponent (default {POPULARITY_EXPONENT}, the small generator's)")
    parser.add_argument("--users-per-part", type=int, default=100_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        events, items = generate_marketplace_scale(args.users, args.items, args.categories,
                                                   args.events_per_user, args.seed,
                                                   args.popularity_exponent)
    except ValueError as e:
        parser.error(str(e))
    generated = time.perf_counter()
    n_parts = write_parquet(events, items, args.out, args.users_per_part)
    written = time.perf_counter()
    print(f"{len(events)} events, {events['user_id'].nunique()} users, {len(items)} items "
          f"-> {args.out}/events ({n_parts} parts), {args.out}/items.parquet; "
          f"generate {generated - start:.1f} s, write {written - generated:.1f} s")


if __name__ == "__main__":
    main()
