"""Vectorised draws for train.synthetic_scale: item chains laid end to end, walked to the first live
item, and weighted choices per row, each as train.synthetic's scalar version decides.

    chains = Chains.build(category, popularity, n_categories, rng)
    item = chains.first_live(chains.by_popularity(c, u), c, t, listed_at, sold_at)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chains:
    """All categories' item chains laid end to end: category c owns positions start[c]:start[c+1]."""

    item: np.ndarray      # chain position -> item number
    position: np.ndarray  # item number -> chain position
    start: np.ndarray     # (n_categories + 1,)
    cum_key: np.ndarray   # chain position -> c + cumulative popularity share within c, in (c, c+1]

    @classmethod
    def build(cls, category: np.ndarray, popularity: np.ndarray, n_categories: int,
              rng: np.random.Generator) -> "Chains":
        perm = rng.permutation(len(category))
        item = perm[np.argsort(category[perm], kind="stable")]  # a random order within each category
        cat = category[item]
        start = np.searchsorted(cat, np.arange(n_categories + 1))
        cum = np.cumsum(popularity[item])
        base = np.concatenate([[0.0], cum])[start[:-1]]
        share = (cum - base[cat]) / (cum[start[1:] - 1] - base)[cat]
        position = np.empty(len(item), np.int64)
        position[item] = np.arange(len(item))
        return cls(item, position, start, cat + share)

    def by_popularity(self, c: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cum_key, c + u.astype(np.float64))
        return np.clip(pos, self.start[c], self.start[c + 1] - 1)

    def after(self, item: np.ndarray) -> np.ndarray:
        """The chain position after each item's, wrapping round its category."""
        pos = self.position[item]
        c = np.searchsorted(self.start, pos, side="right") - 1
        return np.where(pos + 1 == self.start[c + 1], self.start[c], pos + 1)

    def first_live(self, pos: np.ndarray, c: np.ndarray, t: np.ndarray, listed: np.ndarray,
                   sold: np.ndarray) -> np.ndarray:
        """The item at the first position at or after pos (wrapping round category c, which holds
        pos) that is live at t; -1 where the whole category has nothing live."""
        item = self.item[pos]
        out = np.where((listed[item] <= t) & (t < sold[item]), item, -1)  # most walks end here
        todo = np.flatnonzero(out < 0)
        t, c = t[todo], c[todo]
        first, size = self.start[c], self.start[c + 1] - self.start[c]
        left, ahead = size - 1, pos[todo] + 1 - first  # positions not yet looked at; the next one
        width = 4
        while len(todo):
            # A block of positions per walk at once: the few long walks take a few rounds.
            off = np.arange(width)
            item = self.item[first[:, None] + (ahead[:, None] + off) % size[:, None]]
            tt = t[:, None]
            live = (listed[item] <= tt) & (tt < sold[item]) & (off < left[:, None])
            hit = live.any(axis=1)
            rows = np.flatnonzero(hit)
            out[todo[rows]] = item[rows, np.argmax(live[rows], axis=1)]
            more = ~hit & (left > width)
            todo, t, first, size = todo[more], t[more], first[more], size[more]
            left, ahead = left[more] - width, ahead[more] + width
            width *= 4
        return out


def weighted_rows(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the column drawn from unnormalised weights (b, k) with the uniform u (b,): the first
    column whose cumulative weight exceeds u * total, as train.synthetic._weighted."""
    if not len(u):
        return np.zeros(0, np.int64)
    cum = np.cumsum(weights, axis=1)
    idx = (cum <= (u * cum[:, -1])[:, None]).sum(axis=1)
    last = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)  # rounding at u ~ 1
    return np.minimum(idx, last)


def other_category(c: np.ndarray, taste: np.ndarray, w: np.ndarray, cat_p: np.ndarray,
                    u: np.ndarray) -> np.ndarray:
    """Another of the user's taste categories if there is one, else any other category."""
    if not len(c):
        return np.zeros(0, np.int64)
    ww = np.where((taste != c[:, None]) & (taste >= 0), w, 0.0)
    out = np.empty(len(c), np.int64)
    has = ww.sum(axis=1) > 0
    rows = np.flatnonzero(has)
    out[rows] = taste[rows, weighted_rows(ww[rows], u[rows])]
    rows = np.flatnonzero(~has)
    p = np.broadcast_to(cat_p, (len(rows), len(cat_p))).copy()
    p[np.arange(len(rows)), c[rows]] = 0.0
    out[rows] = weighted_rows(p, u[rows])
    return out
