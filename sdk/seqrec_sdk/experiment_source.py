"""Where a client's experiments come from: a fixed list, or a source that refreshes them.

    client = Client(url, experiments=[exp_a, exp_b])                    # fixed (StaticExperiments)
    client = Client(url, experiments=GrowthBookSource(url=..., feature="seqrec-model"))

A source hands out immutable snapshots (:class:`ExperimentSet`): one request reads one
snapshot, so a refresh in another thread never mixes two definitions inside a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Protocol, Tuple, Union, runtime_checkable

from .experiments import Experiment
from .models import Variant

__all__ = ["ExperimentSet", "ExperimentSource", "StaticExperiments", "as_source"]


@dataclass(frozen=True)
class ExperimentSet:
    """The experiments in force, in evaluation order (the first that takes a user decides, as
    GrowthBook evaluates a feature's rules), and the version for everyone else (None: the
    server's default version)."""

    experiments: Tuple[Experiment, ...] = ()
    default_version: Optional[str] = None

    def __post_init__(self) -> None:
        keys = [e.key for e in self.experiments]
        if len(set(keys)) != len(keys):
            raise ValueError(f"experiment keys must be unique: {keys}")

    def assign(self, user_id: Optional[str]) -> Optional[Tuple[Experiment, Variant]]:
        if user_id is None:
            return None
        for exp in self.experiments:
            variant = exp.assign(user_id)
            if variant is not None:
                return exp, variant
        return None

    def versions(self) -> List[Optional[str]]:
        """Every version this set sends traffic to, the default first (None = server default)."""
        out: List[Optional[str]] = [self.default_version]
        for exp in self.experiments:
            out += [v for v in exp.model_versions if v not in out]
        return out


@runtime_checkable
class ExperimentSource(Protocol):
    """Anything with ``current() -> ExperimentSet`` and ``close()``; must be thread-safe."""

    def current(self) -> ExperimentSet: ...

    def close(self) -> None: ...


class StaticExperiments:
    """A fixed list of experiments (what ``Client(experiments=[...])`` wraps)."""

    def __init__(self, experiments: Iterable[Experiment] = (),
                 default_version: Optional[str] = None) -> None:
        self._set = ExperimentSet(tuple(experiments), default_version)

    def current(self) -> ExperimentSet:
        return self._set

    def close(self) -> None:
        pass  # nothing held

    def __repr__(self) -> str:
        return f"StaticExperiments({[e.key for e in self._set.experiments]})"


def as_source(experiments: Union[Iterable[Experiment], ExperimentSource]) -> ExperimentSource:
    if isinstance(experiments, ExperimentSource):
        return experiments
    return StaticExperiments(experiments)
