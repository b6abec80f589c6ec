"""The embedded default dataset: a deterministic synthetic second-hand marketplace.

    from train.synthetic import generate_marketplace
    events, items = generate_marketplace(n_users=2000, n_items=1500, seed=0)   # ~44k events, under a second

No file to download: `make demo` and the fast tests use this. The same seed gives the same frames.
At marketplace scale (millions of users and items, Parquet parts) the same world comes vectorised
from train.synthetic_scale.

events (canonical schema of train.events, sorted by user_id, timestamp, item_id; RangeIndex):
    user_id int64 (1..n_users) · item_id int64 · timestamp float64 (unix s, whole seconds, 60 days from
    2024-01-01 UTC) · event_type str (view | favourite | message | purchase) · source str (search |
    feed | recommendation)
items, one row per item:
    item_id int64 (100001..; never equal to an index, so id/index mix-ups show) · category str ·
    price float64 · listed_at float64 · sold_at float64 (NaN = unsold at the end of the log) ·
    available bool (= not sold by the end of the log)

The world:
- Items fall in categories of unequal size; price is lognormal around a per-category level;
  popularity is a power law (weight ∝ rank^-1.1, ranks shuffled); each item is listed at some time
  (some before the log starts) and sells either off-platform (listed_at + Exp(60 days)) or at its
  first `purchase` event. A user only ever touches an item while it is listed and unsold.
- Each user has 1-3 taste categories with Dirichlet weights and 5-60 events (log-uniform), split
  into sessions of Geometric(1/6) events. Sessions start on random days, mostly in the daytime and
  evening, at least 30 minutes apart; within a session events are 5 s + Exp(70 s) apart. An event
  is skipped when nothing at all is on sale (tiny catalogues only), and the few events that an
  overlapping session put on an item just after someone else bought it are dropped.

What is planted, for a later stage to find (constants are module-level; the rates in brackets are
measured on the defaults by tests/test_synthetic.py):
1. Item chains (sequential habit): each category has a fixed random order of its items. Within a
   session, when the next event stays in the previous category, with P_CHAIN = 0.75 it is the next
   item of that order that is live at the time; otherwise an item drawn by popularity. [Per item,
   its most frequent in-session successor takes 33% of its successors; 3.6% if shuffled.]
2. Category stickiness by source: within a session the next event stays in the previous event's
   category with a probability set by the previous event's source: P_STAY_SEARCH = 0.8 after
   `search`, P_STAY_FEED = 0 after `feed` (the feed always leads elsewhere), P_STAY_REC = 0.9 after
   a `recommendation`; otherwise it moves to another category (another taste category if any).
   [Same category next: 0.90 after a recommendation, 0.81 after search, 0.12 after feed (interest).]
3. Event type: right after a `purchase` the next event of the session is always in another category
   (the purchase also sells the item); after a `favourite` or `message` (interest) it stays in the
   category with at least P_STAY_INTEREST = 0.95. [Same category next: 0.00 after a purchase,
   0.94-0.95 after favourite or message, 0.54 after a view.]
   (Stage 5 of the ablation found nothing in the first version of 2 and 3, where only a
   recommendation and a rare purchase moved the odds; feed and interest were added so that the
   source and type of an event change which items come next for a large share of events.)
4. Time: a gap of 30 minutes or more starts a new session, which forgets the previous item: its
   first category is drawn from the taste weights and its first item by popularity, so neither
   stickiness nor chains cross a long gap. [Same category next: 0.45 after a gap of 30 minutes or
   more, 0.58 within a session.]
5. Recency: tastes drift. At the start of each session after the first, with P_DRIFT = 0.3 one
   taste category is replaced by a new one, so recent sessions predict the next better than old ones.
   [A session's first category appears in the previous session 74% of the time, in the first 51%.]
"""
from __future__ import annotations

import bisect
import logging
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC
DAY = 86_400.0
LOG_DAYS = 60
ITEM_ID_OFFSET = 100_000
CATEGORY_NAMES = ("furniture", "electronics", "clothing", "sports", "garden", "kids",
                  "books", "vehicle_parts", "music", "kitchen", "pets", "tools")
EVENT_TYPES = ("view", "favourite", "message", "purchase")
EVENT_P = (0.865, 0.07, 0.055, 0.01)
SOURCES = ("search", "feed", "recommendation")
SOURCE_P = (0.45, 0.35, 0.20)
PURCHASE, RECOMMENDATION = EVENT_TYPES.index("purchase"), SOURCES.index("recommendation")
FEED, INTEREST = SOURCES.index("feed"), (EVENT_TYPES.index("favourite"), EVENT_TYPES.index("message"))

P_STAY_REC, P_CHAIN, P_DRIFT = 0.9, 0.75, 0.3
P_STAY_SEARCH, P_STAY_FEED, P_STAY_INTEREST = 0.8, 0.0, 0.95
SESSION_GAP = 30 * 60.0
MEAN_SESSION_EVENTS = 6
POPULARITY_EXPONENT = 1.1
MEAN_LISTING_DAYS = 60
# Relative session-start rate per hour of day (UTC): quiet nights, lunch and evening peaks.
HOUR_WEIGHTS = np.array([1, 1, 1, 1, 1, 1, 2, 4, 5, 5, 5, 6, 8, 7, 6, 6, 6, 7, 9, 11, 12, 10, 6, 3], float)


class _Catalogue:
    """Per-category item chains, popularity lookups and live-ness at a time."""

    def __init__(self, category: np.ndarray, popularity: np.ndarray, listed_at: np.ndarray,
                 sold_at: np.ndarray, n_categories: int, rng: np.random.Generator):
        self.listed_at = listed_at.tolist()
        self.sold_at = sold_at.tolist()  # mutated: a purchase sells the item
        self.chains: List[List[int]] = []    # category -> item numbers in chain order
        self.cum_pop: List[List[float]] = []  # category -> cumulative popularity along the chain
        self.position: List[int] = [0] * len(category)  # item -> its place in its chain
        for c in range(n_categories):
            chain = rng.permutation(np.flatnonzero(category == c))
            cum = np.cumsum(popularity[chain])
            self.chains.append(chain.tolist())
            self.cum_pop.append((cum / cum[-1]).tolist())
            for pos, item in enumerate(chain.tolist()):
                self.position[item] = pos

    def live(self, item: int, t: float) -> bool:
        return self.listed_at[item] <= t < self.sold_at[item]

    def first_live(self, c: int, start: int, t: float) -> Optional[int]:
        """The first item live at t at or after chain position `start` (wrapping round)."""
        chain = self.chains[c]
        n = len(chain)
        for k in range(n):
            item = chain[(start + k) % n]
            if self.live(item, t):
                return item
        return None

    def by_popularity(self, c: int, u: float, t: float) -> Optional[int]:
        pos = min(bisect.bisect_left(self.cum_pop[c], u), len(self.chains[c]) - 1)
        return self.first_live(c, pos, t)

    def pick(self, c: int, follow: Optional[int], u: float, t: float) -> Optional[int]:
        """The chain successor of `follow` if given, else by popularity; another category's item
        if category c has nothing on sale at t; None if nothing at all is on sale."""
        item = None
        if follow is not None:
            item = self.first_live(c, self.position[follow] + 1, t)
        if item is None:
            item = self.by_popularity(c, u, t)
        for other in range(len(self.chains)):
            if item is not None:
                break
            item = self.by_popularity(other, u, t)
        return item


def _make_items(n_items: int, n_categories: int, rng: np.random.Generator,
                popularity_exponent: float = POPULARITY_EXPONENT):
    """Vectorised: category, price, popularity, listed_at and off-platform sale time per item."""
    cat_weight = rng.dirichlet(np.full(n_categories, 2.0))
    # Every category gets at least one item, the rest follow the unequal category sizes.
    category = np.concatenate([np.arange(n_categories),
                               rng.choice(n_categories, n_items - n_categories, p=cat_weight)])
    category = rng.permutation(category)
    price_level = rng.uniform(np.log(50), np.log(5000), n_categories)
    price = np.round(np.exp(price_level[category] + 0.6 * rng.standard_normal(n_items)), 2)
    popularity = rng.permutation(np.arange(1, n_items + 1, dtype=float) ** -popularity_exponent)
    listed_at = np.round(T0 + rng.uniform(-30, LOG_DAYS - 5, n_items) * DAY)
    sold_at = np.round(listed_at + rng.exponential(MEAN_LISTING_DAYS * DAY, n_items))
    sold_at[sold_at > T0 + LOG_DAYS * DAY] = np.inf
    return category, price, popularity, listed_at, sold_at, cat_weight


def _make_sessions(n_users: int, events_per_user: Tuple[int, int], rng: np.random.Generator):
    """(user, planned start, length) per session, in planned start order."""
    lo, hi = events_per_user
    n_events = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1), n_users))).astype(int)
    users, lengths = [], []
    for u, n in enumerate(n_events.tolist()):
        while n > 0:
            k = min(int(rng.geometric(1 / MEAN_SESSION_EVENTS)), n)
            users.append(u)
            lengths.append(k)
            n -= k
    users_a = np.array(users)
    hour = rng.choice(24, len(users), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    day = rng.integers(0, LOG_DAYS, len(users))
    start = np.round(T0 + day * DAY + hour * 3600 + rng.uniform(0, 3600, len(users)))
    order = np.lexsort((users_a, start))
    return users_a[order], start[order], np.array(lengths)[order]


def check_sizes(n_users: int, n_items: int, n_categories: int, events_per_user: Tuple[int, int]) -> None:
    """The arguments both generators share, checked once (ValueError naming the rule)."""
    if n_items < n_categories or n_categories < 2 or n_users < 1:
        raise ValueError("need n_users >= 1, n_categories >= 2 and n_items >= n_categories")
    lo, hi = events_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"events_per_user must be (lo, hi) with 1 <= lo <= hi, got {events_per_user}")


def generate_marketplace(
    n_users: int = 2000,
    n_items: int = 1500,
    n_categories: int = 12,
    events_per_user: Tuple[int, int] = (5, 60),
    seed: int = 0,
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) of a synthetic marketplace; see the module docstring for what is planted."""
    check_sizes(n_users, n_items, n_categories, events_per_user)
    rng = np.random.default_rng(seed)
    category, price, popularity, listed_at, sold_at, cat_weight = _make_items(n_items, n_categories, rng)
    cat = _Catalogue(category, popularity, listed_at, sold_at, n_categories, rng)
    cat_p = cat_weight.tolist()

    # Tastes: 1-3 distinct categories each, favouring big categories, with Dirichlet weights.
    tastes: List[List[int]] = []
    weights: List[List[float]] = []
    for k in rng.integers(1, 4, n_users).tolist():
        tastes.append(rng.choice(n_categories, k, replace=False, p=cat_weight).tolist())
        weights.append(rng.dirichlet(np.ones(k)).tolist())

    s_user, s_start, s_len = _make_sessions(n_users, events_per_user, rng)
    n = int(s_len.sum())
    # All randomness of the sequential loop, drawn up front (fast, and the order is fixed).
    gaps = np.round(5 + rng.exponential(70.0, n)).tolist()
    etype = rng.choice(len(EVENT_TYPES), n, p=EVENT_P).tolist()
    source = rng.choice(len(SOURCES), n, p=SOURCE_P).tolist()
    u_stay, u_item, u_chain, u_cat = (rng.random(n).tolist() for _ in range(4))
    u_drift = rng.random((len(s_len), 3)).tolist()

    out_user, out_item, out_t, keep = [0] * n, [0] * n, [0.0] * n, [True] * n
    last_t = [-np.inf] * n_users
    i = 0
    for s, (u, start, length) in enumerate(zip(s_user.tolist(), s_start.tolist(), s_len.tolist())):
        taste, w = tastes[u], weights[u]
        if last_t[u] > -np.inf and u_drift[s][0] < P_DRIFT:  # planted 5: taste drift
            slot = min(int(u_drift[s][1] * len(taste)), len(taste) - 1)
            new = _weighted(cat_p, u_drift[s][2])
            if new not in taste:
                taste[slot] = new
        t = max(start, last_t[u] + SESSION_GAP)  # planted 4: sessions >= 30 minutes apart
        prev_item = prev_c = -1  # -1: no earlier event in this session
        prev_purchase, p_stay = False, P_STAY_SEARCH
        for k in range(length):
            if k:
                t += gaps[i]
            if prev_c < 0:  # planted 4: a session starts from taste, not from the last item
                c = taste[_weighted(w, u_cat[i])]
            elif prev_purchase or u_stay[i] >= p_stay:  # planted 3, 2
                c = _other_category(prev_c, taste, w, cat_p, u_cat[i])
            else:
                c = prev_c
            follow = prev_item if c == prev_c and u_chain[i] < P_CHAIN else None  # planted 1
            item = cat.pick(c, follow, u_item[i], t)
            if item is None:  # nothing at all on sale (tiny catalogues): no event
                keep[i] = False
            else:
                if etype[i] == PURCHASE:
                    cat.sold_at[item] = t
                out_user[i], out_item[i], out_t[i] = u + 1, item, t
                prev_item, prev_c = item, int(category[item])
                prev_purchase = etype[i] == PURCHASE
                p_stay = (P_STAY_REC if source[i] == RECOMMENDATION else P_STAY_FEED if source[i] == FEED
                          else P_STAY_SEARCH)
                if etype[i] in INTEREST:
                    p_stay = max(p_stay, P_STAY_INTEREST)
            i += 1
        last_t[u] = t

    events = pd.DataFrame({
        "user_id": np.array(out_user, dtype=np.int64),
        "item_id": np.array(out_item, dtype=np.int64),
        "timestamp": np.array(out_t, dtype=np.float64),
        "event_type": np.array(EVENT_TYPES, dtype=object)[etype],
        "source": np.array(SOURCES, dtype=object)[source],
    })
    events = events[np.array(keep)]
    sold = np.array(cat.sold_at)
    # Sessions are simulated one after another, so an overlapping session may have touched an item
    # just after another user bought it; drop those few events to keep "only live items" exact.
    late = drop_after_sale(events["item_id"].to_numpy(), events["timestamp"].to_numpy(),
                           events["event_type"].to_numpy() == "purchase", sold)
    if late.any():
        log.debug("dropping %d events on items already sold", int(late.sum()))
        events = events[~late]
    events = events.assign(item_id=events["item_id"] + ITEM_ID_OFFSET + 1)
    events = events.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)

    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64) + ITEM_ID_OFFSET + 1,
        "category": np.array(category_names(n_categories), dtype=object)[category],
        "price": price,
        "listed_at": listed_at,
        "sold_at": np.where(np.isinf(sold), np.nan, sold),
        "available": np.isinf(sold),
    })
    log.info("synthetic marketplace: %d events, %d users, %d items (seed %d)",
             len(events), events["user_id"].nunique(), n_items, seed)
    return events, items


def category_names(n_categories: int) -> List[str]:
    return [CATEGORY_NAMES[c] if c < len(CATEGORY_NAMES) else f"category_{c}" for c in range(n_categories)]


def drop_after_sale(item: np.ndarray, t: np.ndarray, is_purchase: np.ndarray, sold: np.ndarray) -> np.ndarray:
    """Which events (item numbers, times) touch an item at or after its sale time `sold`, its
    first purchase's buyer excepted; also a second purchase at that same second (the earlier row
    kept), so every item is bought at most once."""
    t_sold = sold[item]
    late = (t > t_sold) | ((t == t_sold) & ~is_purchase)
    at_sale = np.flatnonzero(is_purchase & ~late)
    late[at_sale[pd.Index(item[at_sale]).duplicated()]] = True
    return late


def _weighted(weights: List[float], u: float) -> int:
    """Index drawn from unnormalised weights with the uniform number u."""
    total, acc = sum(weights), 0.0
    for j, w in enumerate(weights):
        acc += w
        if u * total < acc:
            return j
    return len(weights) - 1


def _other_category(c: int, taste: List[int], w: List[float], cat_p: List[float], u: float) -> int:
    """Another of the user's taste categories if there is one, else any other category."""
    others = [j for j, x in enumerate(taste) if x != c]
    if others:
        return taste[others[_weighted([w[j] for j in others], u)]]
    p = [0.0 if j == c else pj for j, pj in enumerate(cat_p)]
    return _weighted(p, u)
