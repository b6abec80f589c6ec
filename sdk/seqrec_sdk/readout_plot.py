"""Cumulative lift over the test: how the estimate settles as users enter.

    from seqrec_sdk.readout_plot import cumulative_lift, plot_cumulative_lift
    series = cumulative_lift(exposures, outcomes, ranker_test, points=30)
    plot_cumulative_lift(series, "lift.png", plan=plan)

A point at time t counts the users whose first exposure is at or before t, with every outcome
recorded for them (as GrowthBook's cumulative charts do by enrolment). The band is the same
fixed-horizon interval as the readout's: it shows the estimate settling, it is not a license to
stop early (decide at the planned sample only). matplotlib is imported by
:func:`plot_cumulative_lift` alone, never with the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .experiments import Experiment
from .readout import ExposureLike, OutcomeLike, Plan, user_outcomes
from .stats import Lift, relative_lift

__all__ = ["LiftPoint", "cumulative_lift", "plot_cumulative_lift"]


@dataclass(frozen=True)
class LiftPoint:
    timestamp: float  # unix seconds: users who entered by then
    variant: str
    users: Tuple[int, int]  # (control, this variant)
    lift: Lift


def cumulative_lift(exposures: Iterable[ExposureLike], outcomes: Iterable[OutcomeLike],
                    experiment: Experiment, *, points: int = 20, kind: str = "click",
                    alpha: float = 0.05, include_fallbacks: bool = True) -> List[LiftPoint]:
    """The lift of each treatment over the control at ``points`` evenly spaced entry counts;
    the last point is the readout's lift on all users."""
    if points < 1:
        raise ValueError("points must be >= 1")
    arm_of, converted, first, _ = user_outcomes(
        exposures, outcomes, experiment.key, kind=kind, include_fallbacks=include_fallbacks)
    order = sorted(first, key=lambda u: (first[u].timestamp, u))
    confidence = 1 - alpha / max(1, len(experiment.variants) - 1)
    names = [v.name for v in experiment.variants]
    users: Dict[str, int] = {n: 0 for n in names}
    conv: Dict[str, int] = {n: 0 for n in names}
    cuts = sorted({max(1, round(len(order) * (i + 1) / points)) for i in range(points)})
    out: List[LiftPoint] = []
    done = 0
    for cut in cuts if order else []:
        for u in order[done:cut]:
            name = arm_of[u]
            if name in users:
                users[name] += 1
                conv[name] += u in converted
        done = cut
        t = first[order[cut - 1]].timestamp
        control = names[0]
        for name in names[1:]:
            lift = relative_lift(conv[control], users[control], conv[name], users[name],
                                 confidence) if users[control] and users[name] else \
                Lift(None, None, None, confidence)
            out.append(LiftPoint(t, name, (users[control], users[name]), lift))
    return out


def plot_cumulative_lift(series: List[LiftPoint], path: Optional[str] = None, *,
                         plan: Optional[Plan] = None, title: str = "Cumulative lift") -> Any:
    """A matplotlib Figure of the lift (and its band) against users in the test; saved to
    ``path`` when given. A dashed line marks the planned sample when ``plan`` is given."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError as e:
        raise ImportError("plot_cumulative_lift needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    for i, name in enumerate(dict.fromkeys(p.variant for p in series), 1):
        if plan is not None and i < len(plan.users_per_variant):
            ax.axvline(plan.users_per_variant[0] + plan.users_per_variant[i], color="grey",
                       linestyle="--", label="planned sample" if i == 1 else None)
        pts = [p for p in series if p.variant == name and p.lift.lift is not None]
        x = [sum(p.users) for p in pts]
        ax.plot(x, [p.lift.lift for p in pts], marker=".", label=f"{name} vs control")
        ax.fill_between(x, [p.lift.ci[0] for p in pts], [p.lift.ci[1] for p in pts],  # type: ignore[index]
                        alpha=0.2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:+.0%}")
    ax.set_xlabel("users in the test (control + variant)")
    ax.set_ylabel("relative lift of user hit rate")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
