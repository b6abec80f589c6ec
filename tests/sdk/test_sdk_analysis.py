"""Exposures + clicks -> per-variant hit rate and CTR with Wilson intervals."""

import json

import pytest

from seqrec_sdk import Exposure
from seqrec_sdk.analysis import format_table, summarize, wilson_interval


@pytest.mark.parametrize("k, n, expected", [
    (0, 10, (0.0, 0.2775)),     # worked by hand: z^2/(2n) / (1 + z^2/n) +- the same
    (50, 100, (0.4038, 0.5962)),
    (10, 10, (0.7225, 1.0)),
    (0, 0, (0.0, 1.0)),
])
def test_wilson_interval_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_wilson_interval_narrows_with_confidence_and_rejects_nonsense():
    assert wilson_interval(30, 100, 0.90)[1] < wilson_interval(30, 100, 0.99)[1]
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def exposure(rec_id, variant, user, items, fallback=False):
    return Exposure("ab", variant, user, "1.0" if variant == "control" else "2.0", rec_id,
                    tuple(items), 0.0, fallback)


def test_summarize_counts_hits_and_clicks_exactly():
    exposures = [
        exposure("r1", "control", "u1", [1, 2, 3]),
        exposure("r2", "control", "u2", [1, 2, 3]),
        exposure("r3", "treatment", "u3", [4, 5]),
        exposure("r4", "treatment", "u3", [4, 6]),
        exposure("r4", "treatment", "u3", [4, 6]),  # logged twice: counted once
    ]
    clicks = [("r1", 2), ("r1", 2), ("r1", 3),    # two distinct items in one list, one duplicate
              ("r3", 5), ("r4", "4"),             # ids compared as strings
              ("r2", 99),                          # not shown: ignored
              ("r9", 1)]                           # unknown recommendation: ignored
    control, treatment = summarize(exposures, clicks)
    assert (control.variant, control.exposures, control.users, control.items_shown) == ("control", 2, 2, 6)
    assert (control.hits, control.clicks, control.hit_rate, control.ctr) == (1, 2, 0.5, 2 / 6)
    assert (treatment.exposures, treatment.users, treatment.items_shown) == (2, 1, 4)
    assert (treatment.hits, treatment.clicks, treatment.hit_rate, treatment.ctr) == (2, 2, 1.0, 0.5)
    assert control.hit_rate_ci == wilson_interval(1, 2) and treatment.ctr_ci == wilson_interval(2, 4)


def test_summarize_reads_logged_json_and_can_drop_fallbacks():
    logged = [json.loads(json.dumps(e.to_dict())) for e in [
        exposure("a", "control", "u1", [1]), exposure("b", "control", "u2", [1], fallback=True)]]
    clicks = [{"recommendation_id": "b", "item_id": 1}]
    [itt] = summarize(logged, clicks)
    [per_protocol] = summarize(logged, clicks, include_fallbacks=False)
    assert (itt.exposures, itt.hits, itt.fallbacks) == (2, 1, 1)
    assert (per_protocol.exposures, per_protocol.hits, per_protocol.fallbacks) == (1, 0, 0)


def test_summarize_finds_a_real_difference_on_synthetic_data():
    # treatment users click with p=0.30, control with p=0.20: 4,000 lists each
    exposures, clicks = [], []
    for i in range(8000):
        variant = "control" if i % 2 else "treatment"
        exposures.append(exposure(f"r{i}", variant, f"u{i}", [i, i + 1]))
        if (i * 7919) % 100 < (20 if variant == "control" else 30):
            clicks.append((f"r{i}", i))
    stats = {s.variant: s for s in summarize(exposures, clicks)}
    assert stats["control"].hit_rate == pytest.approx(0.20, abs=0.02)
    assert stats["treatment"].hit_rate == pytest.approx(0.30, abs=0.02)
    assert stats["control"].hit_rate_ci[1] < stats["treatment"].hit_rate_ci[0]  # separated
    table = format_table(stats.values())
    assert "control" in table and "treatment" in table and "95% CI" in table
