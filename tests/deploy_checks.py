"""Helpers for the deploy/ tests: the Prometheus text format read back, the metric names a PromQL
expression uses, the alert rules, and the names the SDK side exports (deploy/README.md).

A uniquely named module (importable from any test folder, tests/ is on sys.path). Standard
library and PyYAML only: prometheus_client is not installed here, and only the text format's
sample lines and # TYPE lines are needed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
SDK_GROUP = "seqrec-sdk"
# What a backend exports from seqrec_sdk (deploy/README.md, "SDK metrics"): name -> (class, field).
SDK_METRICS = {
    "seqrec_sdk_requests_total": ("ClientStats", "requests"),
    "seqrec_sdk_fallbacks_total": ("ClientStats", "fallback_reasons"),
    "seqrec_sdk_latency_seconds_bucket": ("Recommendations", "latency_ms"),
}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every target, never by the target

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


@dataclass
class Exposition:
    """One /metrics answer: families by # TYPE, and every sample."""
    types: Dict[str, str] = field(default_factory=dict)
    samples: List[Tuple[str, Dict[str, str], float]] = field(default_factory=list)

    def names(self) -> Set[str]:
        """Names a query can use: the families and every sample name (x_bucket, x_sum, ...)."""
        return set(self.types) | {s[0] for s in self.samples}

    def values(self, name: str, **labels: str) -> List[float]:
        return [v for n, ls, v in self.samples if n == name and all(ls.get(k) == x for k, x in labels.items())]


def parse_exposition(text: str) -> Exposition:
    """The Prometheus text format (version 0.0.4), strictly: a line that is neither a comment nor
    a well-formed sample, a sample of no declared family or a non-number fails."""
    out = Exposition()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                assert re.fullmatch(_NAME, parts[2]), f"line {n}: bad metric name: {line!r}"
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), f"line {n}: {line!r}"
                out.types[parts[2]] = parts[3]
            continue
        m = _SAMPLE.match(line)
        assert m, f"line {n}: not a sample: {line!r}"
        name, labels_text, value = m.groups()
        labels = _labels(labels_text or "", n)
        assert _family(name, out.types), f"line {n}: sample of an undeclared family: {line!r}"
        out.samples.append((name, labels, _number(value, n)))
    return out


def metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                   # strings
    s = re.sub(r"\{[^}]*\}", " ", s)                                # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                               # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan"}
    names = set()
    for m in re.finditer(_NAME, s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":                       # the e of 1e-9
            continue
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in keywords:
            continue                                                # a function or an aggregation
        names.add(m.group(0))
    return names


def alert_rules(path: Path = ALERTS) -> Iterator[Tuple[str, dict]]:
    """(group name, rule) for every rule of a rules file."""
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule


def server_metric_names(path: Path = ALERTS) -> Set[str]:
    """The names the rules expect on TorchServe's /metrics: all but the SDK group's and Prometheus' own."""
    return {n for g, r in alert_rules(path) if g != SDK_GROUP for n in metric_names(r["expr"])} - PROMETHEUS_OWN


# ---- helpers
def _labels(text: str, n: int) -> Dict[str, str]:
    labels, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"line {n}: bad labels: {text!r}"
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def _family(sample: str, types: Dict[str, str]) -> bool:
    """The sample belongs to a declared family: its own name, or the name less _bucket, _sum..."""
    return sample in types or any(sample.endswith(s) and sample[: -len(s)] in types for s in _SUFFIXES)


def _number(value: str, n: int) -> float:
    try:
        f = float(value)
    except ValueError:
        raise AssertionError(f"line {n}: not a number: {value!r}") from None
    assert not math.isnan(f) or value == "NaN", f"line {n}: {value!r}"
    return f
