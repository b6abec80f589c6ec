"""The statistics of the readout, standard library only, each with its closed form.

- :func:`chi2_sf`: upper tail of the chi-square distribution for an integer df, exact (the
  finite sums of the regularized incomplete gamma for integer and half-integer shape).
- :func:`relative_lift`: lift = p1 / p0 - 1 with the Katz log interval,
  log(p1/p0) +- z * sqrt((1-p1)/c1 + (1-p0)/c0) (c = units converted), and the matching Wald
  p-value, so that the interval excludes 0 exactly when p < alpha.
- :func:`sample_size`: units for that same test to reach ``power`` at a relative lift
  ``relative_mde`` over ``baseline``, with the arms' shares of traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence, Tuple

__all__ = ["chi2_sf", "Lift", "relative_lift", "sample_size", "srm_test"]

_N = NormalDist()


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df), df a positive integer.
    Even df: exp(-x/2) * sum_{i<df/2} (x/2)^i / i!;
    odd df: erfc(sqrt(x/2)) + sqrt(2x/pi) exp(-x/2) * sum_{j=1}^{(df-1)/2} x^(j-1) / (2j-1)!!."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if x <= 0:
        return 1.0
    if df % 2 == 0:
        term = total = math.exp(-x / 2)
        for i in range(1, df // 2):
            term *= (x / 2) / i
            total += term
    else:
        total = math.erfc(math.sqrt(x / 2))
        term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= x / (2 * j + 1)
    return min(1.0, total)


def srm_test(observed: Sequence[int], weights: Sequence[float]) -> Tuple[float, int, float]:
    """Pearson's chi-square of the arms' unit counts against the configured weights:
    (statistic, df, p-value). Weights are renormalized to the arms given."""
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError("need one weight per arm, two arms or more")
    total, wsum = sum(observed), float(sum(weights))
    if total == 0:
        return 0.0, len(observed) - 1, 1.0
    stat = 0.0
    for o, w in zip(observed, weights):
        e = total * w / wsum
        if e <= 0:
            if o:  # units in an arm configured to get none: as mismatched as it gets
                return math.inf, len(observed) - 1, 0.0
            continue
        stat += (o - e) ** 2 / e
    df = len(observed) - 1
    return stat, df, chi2_sf(stat, df)


@dataclass(frozen=True)
class Lift:
    """Treatment vs control: ``lift`` = p1/p0 - 1, its interval, the p-value of lift = 0."""

    lift: Optional[float]
    ci: Optional[Tuple[float, float]]
    p_value: Optional[float]
    confidence: float


def relative_lift(c0: int, n0: int, c1: int, n1: int, confidence: float = 0.95) -> Lift:
    """Relative lift of rate c1/n1 over c0/n0 (Katz log interval). None fields when an arm has
    no units or no conversions: the ratio then has no finite estimate."""
    for c, n in ((c0, n0), (c1, n1)):
        if not 0 <= c <= n:
            raise ValueError(f"need 0 <= converted <= units, got {c}/{n}")
    if min(c0, c1) == 0:
        return Lift(None, None, None, confidence)
    p0, p1 = c0 / n0, c1 / n1
    log_rr = math.log(p1 / p0)
    se = math.sqrt((1 - p1) / c1 + (1 - p0) / c0)
    z = _N.inv_cdf(0.5 + confidence / 2)
    if se == 0:  # both arms converted every unit: no uncertainty left
        return Lift(p1 / p0 - 1, (p1 / p0 - 1, p1 / p0 - 1), 1.0 if log_rr == 0 else 0.0,
                    confidence)
    ci = (math.exp(log_rr - z * se) - 1, math.exp(log_rr + z * se) - 1)
    p_value = 2 * (1 - _N.cdf(abs(log_rr) / se))
    return Lift(p1 / p0 - 1, ci, p_value, confidence)


def sample_size(baseline: float, relative_mde: float, weights: Sequence[float],
                alpha: float = 0.05, power: float = 0.8) -> int:
    """Total units N so that each treatment vs the control (arm 0) reaches ``power`` with
    the two-sided test of :func:`relative_lift` at ``alpha``:
    N = (z_{1-alpha/2} + z_power)^2 * ((1-p0)/(w0 p0) + (1-p1)/(w1 p1)) / log(1+mde)^2,
    p1 = baseline * (1 + mde), the largest N over the treatments."""
    if not 0 < baseline < 1:
        raise ValueError("baseline must be a rate in (0, 1)")
    p1 = baseline * (1 + relative_mde)
    if relative_mde == 0 or not 0 < p1 < 1:
        raise ValueError("relative_mde must be non-zero and keep baseline * (1 + mde) in (0, 1)")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power must be in (0, 1)")
    if len(weights) < 2 or any(w <= 0 for w in weights):
        raise ValueError("need two or more arms, each with a weight > 0")
    wsum = float(sum(weights))
    shares = [w / wsum for w in weights]
    z = _N.inv_cdf(1 - alpha / 2) + _N.inv_cdf(power)
    effect = math.log1p(relative_mde) ** 2
    worst = max((1 - baseline) / (shares[0] * baseline) + (1 - p1) / (w * p1) for w in shares[1:])
    return math.ceil(z * z * worst / effect)
