"""A/B experiments between model versions, bucketed exactly as GrowthBook does.

A team that already runs GrowthBook gets the same arm for the same user from both: the hash,
the bucket ranges and the choice of variation follow GrowthBook's SDK spec, and the tests check
them against GrowthBook's own published cases (tests/sdk/growthbook_cases.json).

    exp = Experiment("ranker-2024-06", [Variant("control", "1.0", 0.5),
                                        Variant("gru-v2", "2.0", 0.5)], coverage=0.2)
    exp.assign("user-42")   # -> Variant(...) or None when outside the 20 % coverage

The functions below keep GrowthBook's names and lenient behaviour (bad weights fall back to
equal weights, coverage is clamped); :class:`Experiment` is strict instead and refuses
weights that GrowthBook would silently replace.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from .models import Variant

__all__ = [
    "fnv1a32",
    "gb_hash",
    "get_equal_weights",
    "get_bucket_ranges",
    "choose_variation",
    "in_namespace",
    "Experiment",
]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"

BucketRange = Tuple[float, float]


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's UTF-16 code units, as JavaScript's charCodeAt sees
    them (GrowthBook's reference SDK). Same as iterating code points for every character
    below U+10000; an astral character (e.g. an emoji) counts as its two surrogates."""
    h = _FNV_OFFSET
    units = text.encode("ascii") if text.isascii() else array("H", text.encode(_UTF16))
    for unit in units:
        h = ((h ^ unit) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def gb_hash(seed: str, value: str, version: int = 2) -> Optional[float]:
    """GrowthBook's ``hash(seed, value, version)`` -> a number in [0, 1), None for an
    unknown version. v2 = fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000;
    v1 (older SDKs, namespaces) = fnv1a32(value + seed) % 1000 / 1000."""
    if version == 2:
        return fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000
    if version == 1:
        return fnv1a32(value + seed) % 1000 / 1000
    return None


def get_equal_weights(n: int) -> List[float]:
    return [1.0 / n] * n if n > 0 else []


def get_bucket_ranges(
    num_variations: int, coverage: float = 1.0, weights: Optional[Sequence[float]] = None
) -> List[BucketRange]:
    """GrowthBook's ``getBucketRanges``: variant i owns [start_i, start_i + coverage * w_i)
    where start_i is the cumulative weight of the variants before it, so raising coverage
    only grows each range and never moves a user to another variant."""
    coverage = min(max(coverage, 0.0), 1.0)
    equal = get_equal_weights(num_variations)
    w = list(weights) if weights is not None else equal
    if len(w) != num_variations or not 0.99 <= sum(w) <= 1.01:
        w = equal
    ranges: List[BucketRange] = []
    cumulative = 0.0
    for weight in w:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """Index of the range holding ``n`` (start inclusive, end exclusive), -1 if none."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(user_id: str, namespace: Tuple[str, float, float]) -> bool:
    """GrowthBook namespaces keep experiments mutually exclusive: each experiment takes a
    disjoint slice [start, end) of the same namespace id."""
    n = gb_hash("__" + namespace[0], user_id, 1)
    return n is not None and namespace[1] <= n < namespace[2]


@dataclass(frozen=True)
class Experiment:
    """An A/B test between model versions.

    ``seed`` defaults to ``key`` (as in GrowthBook). Users outside ``coverage`` or outside the
    ``namespace`` slice get ``None``: the client then calls the default version. Assignment is a
    pure function of (seed, user id, weights, coverage): sticky for as long as those stay the
    same, across processes and machines, with no storage. ``hash_version`` 2 is GrowthBook's
    current hash; 1 is what it uses for an experiment whose payload names no ``hashVersion``.
    """

    key: str
    variants: Tuple[Variant, ...]
    coverage: float = 1.0
    seed: Optional[str] = None
    namespace: Optional[Tuple[str, float, float]] = None
    hash_version: int = 2
    _ranges: Tuple[BucketRange, ...] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        key: str,
        variants: Sequence[Variant],
        coverage: float = 1.0,
        seed: Optional[str] = None,
        namespace: Optional[Tuple[str, float, float]] = None,
        hash_version: int = 2,
    ) -> None:
        set_ = object.__setattr__  # frozen: fields are set once, here
        set_(self, "key", key)
        set_(self, "variants", tuple(variants))
        set_(self, "coverage", float(coverage))
        set_(self, "seed", seed)
        set_(self, "namespace", tuple(namespace) if namespace is not None else None)
        set_(self, "hash_version", hash_version)
        self._validate()
        weights = self.weights
        set_(self, "_ranges", tuple(get_bucket_ranges(len(self.variants), self.coverage, weights)))

    def _validate(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("Experiment key must be a non-empty string")
        if len(self.variants) < 2:
            raise ValueError(f"experiment {self.key!r}: needs at least two variants")
        if not all(isinstance(v, Variant) for v in self.variants):
            raise TypeError(f"experiment {self.key!r}: variants must be Variant objects")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.key!r}: variant names must be unique: {names}")
        ids = [self.variation_id(v) for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"experiment {self.key!r}: variant keys must be unique: {ids}")
        if self.hash_version not in (1, 2) or isinstance(self.hash_version, bool):
            raise ValueError(f"experiment {self.key!r}: hash_version must be 1 or 2")
        given = [v.weight for v in self.variants if v.weight is not None]
        if given and len(given) != len(self.variants):
            raise ValueError(f"experiment {self.key!r}: give a weight to every variant or none")
        if any(w < 0 for w in given):
            raise ValueError(f"experiment {self.key!r}: weights must be >= 0")
        # GrowthBook silently uses equal weights outside [0.99, 1.01]; refuse instead.
        if given and not 0.99 <= sum(given) <= 1.01:
            raise ValueError(f"experiment {self.key!r}: weights must sum to 1, got {sum(given)}")
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"experiment {self.key!r}: coverage must be in [0, 1]")
        if self.namespace is not None:
            ns = self.namespace
            if len(ns) != 3 or not isinstance(ns[0], str) or not 0 <= ns[1] <= ns[2] <= 1:
                raise ValueError(f"experiment {self.key!r}: namespace is (id, start, end)")

    @property
    def weights(self) -> List[float]:
        if self.variants[0].weight is None:
            return get_equal_weights(len(self.variants))
        return [float(v.weight) for v in self.variants]  # type: ignore[arg-type]

    @property
    def ranges(self) -> Tuple[BucketRange, ...]:
        return self._ranges

    @property
    def model_versions(self) -> Tuple[str, ...]:
        return tuple(v.model_version for v in self.variants)

    def variation_id(self, variant: Variant) -> str:
        """The id a warehouse joins on: ``variant.key``, else its position ("0", "1", ...)."""
        if variant.key is not None:
            return variant.key
        return str(self.variants.index(variant))

    def bucket(self, user_id: Union[str, int]) -> float:
        """The user's hash (``hash_version``) in [0, 1) for this experiment."""
        seed = self.seed if self.seed is not None else self.key
        return gb_hash(seed, str(user_id), self.hash_version)  # type: ignore[return-value]

    def assign(self, user_id: Union[str, int, None]) -> Optional[Variant]:
        """The user's variant, or None when the user is not in the experiment (no id,
        outside the namespace slice, or outside coverage)."""
        if user_id is None or user_id == "" or isinstance(user_id, bool):
            return None
        uid = str(user_id)
        if self.namespace is not None and not in_namespace(uid, self.namespace):
            return None
        i = choose_variation(self.bucket(uid), self._ranges)
        return self.variants[i] if i >= 0 else None
