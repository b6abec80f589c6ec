"""GrowthBook-compatible bucketing: hand-worked vectors, GrowthBook's own published cases,
stickiness, weights and coverage on 100,000 synthetic users."""

import json
from collections import Counter
from pathlib import Path

import pytest

from seqrec_sdk import Experiment, Variant
from seqrec_sdk.experiments import (
    choose_variation,
    fnv1a32,
    gb_hash,
    get_bucket_ranges,
    in_namespace,
)

CASES = json.loads((Path(__file__).parent / "growthbook_cases.json").read_text())


def approx_ranges(ranges):
    return [pytest.approx(list(r), abs=1e-9) for r in ranges]


# -- hand-worked vectors -------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("", 0x811C9DC5),         # offset basis: nothing hashed
    ("a", 0xE40C292C),        # (0x811C9DC5 ^ 0x61) * 0x01000193 mod 2**32
    ("foobar", 0xBF9CF968),   # FNV reference test vector
])
def test_fnv1a32_reference_vectors(text, expected):
    assert fnv1a32(text) == expected


def test_fnv1a32_hashes_utf16_code_units_like_javascript():
    # 'a' + U+1F600 is three UTF-16 code units 0x61 0xD83D 0xDE00 (charCodeAt in GrowthBook JS)
    h = 0x811C9DC5
    for unit in (0x61, 0xD83D, 0xDE00):
        h = ((h ^ unit) * 0x01000193) % 2**32
    assert fnv1a32("a\U0001F600") == h == 479120377
    assert fnv1a32("é") == ((0x811C9DC5 ^ 0xE9) * 0x01000193) % 2**32  # BMP: one unit


def test_hash_v2_worked_by_hand():
    # v2 = fnv1a32(str(fnv1a32(seed + id))) % 10000 / 10000
    inner = fnv1a32("my-exp" + "u-1")
    assert inner == 4163819210
    assert fnv1a32(str(inner)) % 10000 / 10000 == 0.8268
    assert gb_hash("my-exp", "u-1", 2) == 0.8268
    assert Experiment("my-exp", [Variant("a", "1"), Variant("b", "2")]).bucket("u-1") == 0.8268
    assert gb_hash("seqrec-ab", "test42", 2) == 0.7511


def test_bucket_ranges_worked_by_hand():
    # weights scaled by coverage, each range starting at the cumulative weight
    assert get_bucket_ranges(2, 0.5, [0.2, 0.8]) == approx_ranges([(0, 0.1), (0.2, 0.6)])
    assert get_bucket_ranges(3, 1.0, [0.5, 0.25, 0.25]) == approx_ranges(
        [(0, 0.5), (0.5, 0.75), (0.75, 1.0)])
    ranges = [(0, 0.1), (0.2, 0.6)]
    assert [choose_variation(n, ranges) for n in (0.0, 0.0999, 0.1, 0.15, 0.2, 0.5999, 0.6)] == \
        [0, 0, -1, -1, 1, 1, -1]


# -- GrowthBook's published cases ----------------------------------------------------------------
@pytest.mark.parametrize("seed, value, version, expected", CASES["hash"])
def test_growthbook_hash_cases(seed, value, version, expected):
    result = gb_hash(seed, value, version)
    assert result == (pytest.approx(expected, abs=1e-12) if expected is not None else None)


@pytest.mark.parametrize("name, args, expected", CASES["getBucketRange"],
                         ids=[c[0] for c in CASES["getBucketRange"]])
def test_growthbook_bucket_range_cases(name, args, expected):
    num, coverage, weights = args
    assert get_bucket_ranges(num, coverage, weights) == approx_ranges(expected)


@pytest.mark.parametrize("name, n, ranges, expected", CASES["chooseVariation"],
                         ids=[c[0] for c in CASES["chooseVariation"]])
def test_growthbook_choose_variation_cases(name, n, ranges, expected):
    assert choose_variation(n, [tuple(r) for r in ranges]) == expected


@pytest.mark.parametrize("name, user, namespace, expected", CASES["inNamespace"],
                         ids=[c[0] for c in CASES["inNamespace"]])
def test_growthbook_namespace_cases(name, user, namespace, expected):
    assert in_namespace(user, tuple(namespace)) is expected


@pytest.mark.parametrize("name, context, exp, value, in_experiment, hash_used", CASES["run"],
                         ids=[c[0] for c in CASES["run"]])
def test_growthbook_run_cases(name, context, exp, value, in_experiment, hash_used):
    """GrowthBook's experiment runs, with its own hash version (v1 unless the case says 2)."""
    user = context["attributes"]["id"]
    n_var = len(exp["variations"])
    version = exp.get("hashVersion", 1)
    seed = exp.get("seed", exp["key"])
    ranges = get_bucket_ranges(n_var, exp.get("coverage", 1), exp.get("weights"))
    chosen = -1
    if user and ("namespace" not in exp or in_namespace(user, tuple(exp["namespace"]))):
        chosen = choose_variation(gb_hash(seed, user, version), ranges)
    assert (chosen >= 0) is in_experiment
    assert (chosen if chosen >= 0 else 0) == value
    if version == 2:  # the SDK's Experiment uses hash v2: it must agree with GrowthBook
        variants = [Variant(f"v{i}", str(i), w) for i, w in
                    enumerate(exp.get("weights") or [1 / n_var] * n_var)]
        e = Experiment(exp["key"], variants, coverage=exp.get("coverage", 1.0), seed=exp.get("seed"))
        assigned = e.assign(user)
        assert (assigned.name if assigned else None) == (f"v{value}" if in_experiment else None)


@pytest.mark.parametrize("name, rule, result", CASES["experimentResult"],
                         ids=[c[0] for c in CASES["experimentResult"]])
def test_growthbook_experiment_results(name, rule, result):
    bucket = gb_hash(rule["seed"], rule["hashValue"], rule["hashVersion"])
    assert bucket == pytest.approx(result["bucket"], abs=1e-12)
    ranges = rule.get("ranges") or get_bucket_ranges(rule["numVariations"], rule.get("coverage", 1),
                                                     rule.get("weights"))
    assert choose_variation(bucket, [tuple(r) for r in ranges]) == result["variationId"]
    if rule["hashVersion"] == 2 and "weights" in rule:
        e = Experiment(rule["seed"], [Variant(str(i), f"m{i}", w) for i, w in enumerate(rule["weights"])])
        assert e.assign(rule["hashValue"]).name == str(result["variationId"])


# -- Experiment: stickiness, weights, coverage ---------------------------------------------------
def _exp(coverage=1.0, weights=(0.5, 0.3, 0.2), key="ranker-test"):
    return Experiment(key, [Variant("control", "1.0", weights[0]), Variant("gru", "2.0", weights[1]),
                            Variant("sasrec", "3.0", weights[2])], coverage=coverage)


def test_assignment_is_sticky_and_deterministic():
    a, b = _exp(), _exp()  # two instances, as in two processes
    users = [f"user-{i}" for i in range(2000)]
    first = [a.assign(u) for u in users]
    assert first == [a.assign(u) for u in users] == [b.assign(u) for u in users]
    assert a.assign(12345) == a.assign("12345")  # ints hash as their decimal string


def test_raising_coverage_never_moves_a_user():
    low, high = _exp(coverage=0.3), _exp(coverage=1.0)
    moved = [u for u in map(str, range(20000)) if low.assign(u) and low.assign(u) != high.assign(u)]
    assert moved == []


def test_weights_and_coverage_honoured_on_100000_users():
    exp = _exp(coverage=0.8)
    counts = Counter((v.name if v else None) for v in map(exp.assign, (f"u{i}" for i in range(100_000))))
    shares = {k: c / 100_000 for k, c in counts.items()}
    # 4 binomial standard deviations at n = 100,000 are at most 0.0063
    assert shares[None] == pytest.approx(0.2, abs=0.0063)
    assert shares["control"] == pytest.approx(0.8 * 0.5, abs=0.0063)
    assert shares["gru"] == pytest.approx(0.8 * 0.3, abs=0.0063)
    assert shares["sasrec"] == pytest.approx(0.8 * 0.2, abs=0.0063)


def test_seed_changes_assignment_and_defaults_to_key():
    e1 = _exp(key="k1")
    e_seeded = Experiment("other-key", e1.variants, seed="k1")
    users = [str(i) for i in range(500)]
    assert [e1.assign(u) for u in users] == [e_seeded.assign(u) for u in users]
    e2 = _exp(key="k2")
    assert sum(e1.assign(u) != e2.assign(u) for u in users) > 200  # independent buckets


def test_zero_coverage_and_missing_ids_are_outside():
    exp = _exp(coverage=0.0)
    assert all(exp.assign(str(i)) is None for i in range(1000))
    full = _exp()
    assert full.assign(None) is None and full.assign("") is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(variants=[Variant("a", "1", 0.7), Variant("b", "2", 0.6)]), "sum to 1"),
    (dict(variants=[Variant("a", "1", 0.5), Variant("b", "2")]), "every variant or none"),
    (dict(variants=[Variant("a", "1"), Variant("a", "2")]), "unique"),
    (dict(variants=[Variant("a", "1")]), "two variants"),
    (dict(variants=[Variant("a", "1"), Variant("b", "2")], coverage=1.5), "coverage"),
])
def test_experiment_refuses_what_growthbook_would_silently_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Experiment("x", **kwargs)


def test_experiment_is_a_frozen_value():
    exp = _exp()
    with pytest.raises(AttributeError):
        exp.coverage = 0.5  # type: ignore[misc]
    assert exp == _exp() and exp.ranges == tuple(get_bucket_ranges(3, 1.0, [0.5, 0.3, 0.2]))
