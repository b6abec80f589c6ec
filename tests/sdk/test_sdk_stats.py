"""The readout's statistics against published tables, hand-worked closed forms, and simulations
where the truth is known (numpy draws the binomials here; the SDK itself never imports it)."""

import math

import numpy as np
import pytest

from seqrec_sdk.readout import plan_test
from seqrec_sdk.stats import chi2_sf, relative_lift, sample_size, srm_test


# -- chi-square: critical values from any published table ----------------------------------------
@pytest.mark.parametrize("x, df, p", [
    (3.841459, 1, 0.05), (6.634897, 1, 0.01), (10.827566, 1, 0.001),
    (5.991465, 2, 0.05), (13.815511, 2, 0.001), (7.814728, 3, 0.05), (11.344867, 3, 0.01),
    (9.487729, 4, 0.05), (13.276704, 4, 0.01), (11.070498, 5, 0.05), (14.067140, 7, 0.05),
    (18.307038, 10, 0.05), (39.996847, 20, 0.005), (0.454936, 1, 0.5), (1.386294, 2, 0.5),
])
def test_chi2_sf_matches_the_tables(x, df, p):
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-5)


def test_chi2_sf_edges_and_the_df2_closed_form():
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(-1.0, 1) == 1.0
    assert chi2_sf(7.3, 2) == pytest.approx(math.exp(-7.3 / 2), rel=1e-12)
    assert chi2_sf(1e6, 5) == 0.0
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError):
            chi2_sf(1.0, bad)


def test_srm_test_worked_by_hand():
    assert srm_test([5000, 5000], [0.5, 0.5]) == (0.0, 1, 1.0)
    stat, df, p = srm_test([5200, 4800], [0.5, 0.5])  # 2 * 200^2 / 5000 = 16
    assert (stat, df) == (16.0, 1) and p == pytest.approx(math.erfc(math.sqrt(8)), rel=1e-12)
    stat, _, p = srm_test([310, 690], [0.3, 0.7])  # 10^2/300 + 10^2/700
    assert stat == pytest.approx(100 / 300 + 100 / 700) and p > 0.4
    assert srm_test([5, 1], [1.0, 0.0])[2] == 0.0  # users in an arm given no traffic


# -- relative lift: the Katz interval worked by hand ---------------------------------------------
def test_relative_lift_worked_by_hand():
    # 30/100 vs 20/100: RR 1.5, se(log RR) = sqrt(0.7/30 + 0.8/20) = 0.251661,
    # exp(ln 1.5 -+ 1.959964 * 0.251661) = [0.915961, 2.456437], z = 1.611155 -> p = 0.107146
    lift = relative_lift(20, 100, 30, 100)
    assert lift.lift == pytest.approx(0.5)
    assert lift.ci == pytest.approx((0.915961 - 1, 2.456437 - 1), abs=1e-6)
    assert lift.p_value == pytest.approx(0.107146, abs=1e-6)
    # 99 % is wider; a symmetric swap mirrors on the log scale
    assert relative_lift(20, 100, 30, 100, 0.99).ci[0] < lift.ci[0]
    down = relative_lift(30, 100, 20, 100)
    assert (1 + down.ci[0]) * (1 + lift.ci[1]) == pytest.approx(1.0)
    assert down.p_value == pytest.approx(lift.p_value)


def test_relative_lift_without_conversions_has_no_estimate():
    lift = relative_lift(0, 100, 5, 100)
    assert (lift.lift, lift.ci, lift.p_value) == (None, None, None)
    with pytest.raises(ValueError):
        relative_lift(5, 4, 1, 10)


# -- sample size ---------------------------------------------------------------------------------
def test_sample_size_worked_by_hand_and_near_the_classic_formula():
    # (1.959964 + 0.841621)^2 * (0.8/(0.5*0.2) + 0.75/(0.5*0.25)) / ln(1.25)^2 = 2206.8
    assert sample_size(0.20, 0.25, [0.5, 0.5]) == 2207
    plan = plan_test(0.20, 0.25)
    assert plan.users_per_variant == (1104, 1104) and plan.total_users == 2208
    # the pooled two-proportion formula (Fleiss, no continuity correction) gives 1093.7 per arm
    assert plan.users_per_variant[0] == pytest.approx(1093.7, rel=0.02)
    # uneven weights need more users in total; a third arm halves alpha (Bonferroni)
    assert plan_test(0.20, 0.25, weights=(0.2, 0.8)).total_users > plan.total_users
    three = plan_test(0.20, 0.25, weights=(1 / 3, 1 / 3, 1 / 3))
    assert three.users_per_variant[0] > plan.users_per_variant[0]
    for bad in [dict(baseline=0), dict(relative_mde=0), dict(relative_mde=5), dict(power=1)]:
        with pytest.raises(ValueError):
            plan_test(**{"baseline": 0.2, "relative_mde": 0.25, **bad})


# -- simulations: the truth is known -------------------------------------------------------------
REPEATS = 4000


def rejection_rate(p0, p1, n, seed, alpha=0.05):
    rng = np.random.default_rng(seed)
    c0 = rng.binomial(n, p0, REPEATS)
    c1 = rng.binomial(n, p1, REPEATS)
    return np.mean([relative_lift(int(a), n, int(b), n).p_value < alpha for a, b in zip(c0, c1)])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aa_false_positive_rate_is_alpha(seed):
    plan = plan_test(0.08, 0.10)
    rate = rejection_rate(0.08, 0.08, plan.users_per_variant[0], seed)
    # 4,000 repeats: 3 binomial standard deviations around 0.05 are +-0.0103
    assert 0.05 - 0.0103 < rate < 0.05 + 0.0103


@pytest.mark.parametrize("seed", [4, 5])
def test_a_planted_lift_of_the_mde_is_found_with_the_planned_power(seed):
    plan = plan_test(0.08, 0.10)
    rate = rejection_rate(0.08, 0.08 * 1.10, plan.users_per_variant[0], seed)
    assert 0.80 - 0.019 < rate < 0.80 + 0.019  # 3 standard deviations at 4,000 repeats


def test_lift_interval_covers_the_true_lift_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    n, p0, p1 = 3000, 0.1, 0.13
    c0, c1 = rng.binomial(n, p0, REPEATS), rng.binomial(n, p1, REPEATS)
    cover = np.mean([lo <= p1 / p0 - 1 <= hi for lo, hi in
                     (relative_lift(int(a), n, int(b), n).ci for a, b in zip(c0, c1))])
    assert 0.95 - 0.0103 < cover < 0.95 + 0.0103
