"""The candidate index (faiss): built at export, updated by the catalogue rebuild, searched by the
handler as the first of two scoring stages.

    spec = IndexSpec.parse("pq:m=32,shortlist=500")    # or "hnsw:M=32,ef_search=64", "ivf:nlist=1024,nprobe=32", "none", "auto"
    info = build(spec, vectors, available, out_dir / INDEX_FILE)            # -> metadata["index"]
    index = CandidateIndex.load(model_dir, meta)                           # memory-mapped, read-only
    ids = index.search(queries, fetch)                                     # (B, fetch) item indices, -1 = none

faiss ids are item indices (1..N), stable across catalogue updates. The index holds vectors of
items that were available when they were added; sold items stay in it (HNSW cannot remove) and
the handler filters them, with the exact re-rank over the item vectors deciding the order
(seqrec_twostage.py). faiss is imported only where an index is built or read, so parsing a spec
needs nothing but the standard library.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

if __package__:  # imported as handler.seqrec_index
    from .seqrec_artifact import INDEX_FILE, ExportError, index_kind
else:  # TorchServe: the archive's files sit flat on the worker's import path
    from seqrec_artifact import INDEX_FILE, ExportError, index_kind

log = logging.getLogger(__name__)

# Defaults from measurements on trained vectors (amazon-beauty, 54k items): HNSW M=32 kept
# 0.997 / 0.995 of exact HR@10 / NDCG@10 at efSearch 64; IVF needed nprobe 32 of 256 lists for 0.98.
# HNSW `bits`: how the graph stores each vector for its distance computations: 32 = float, 8 / 16 =
# faiss scalar-quantised codes (a quarter / half the bytes a visit reads); either way the exact
# re-rank over the float item vectors decides the order and the score.
# PQ: a scan of every entry's 4-bit product-quantised code (faiss fast-scan: `m` codes of 4 bits a
# vector, m/2 bytes, scored 32 vectors per SIMD lookup), whose best `shortlist` the exact cosine
# re-ranks: linear in the live items, but 16 bytes an item at m=32, and built in seconds.
KNOBS = {"hnsw": {"M": 32, "ef_construction": 200, "ef_search": 64, "bits": 32},
         "ivf": {"nlist": 1024, "nprobe": 32},
         "pq": {"m": 32, "shortlist": 500}}
BITS = (8, 16, 32)
SEARCH_KNOBS = ("ef_search", "nprobe", "shortlist")
PQ_MIN_TRAIN = 16 * 39  # 16 centroids a sub-quantiser; faiss wants >= 39 points each
# "auto": exact below this many available items, where a full scan costs a few ms at most; PQ
# from there. On make bench-scale's trained 2M-item model (991,747 available) PQ m=32 with a
# shortlist of 500 kept 0.999 / 1.000 of exact HR@10 / NDCG@10 at 1.4 ms a user on one thread,
# built in 3 s; HNSW at efSearch 640, in the same run, 0.992 / 0.995 at 3.8 ms, built in 13 min
# (bench/results/index_quality.json, key scale-2M-pq).
AUTO_MIN_ITEMS = 100_000
# The catalogue rebuild starts a fresh index when more than this share of its entries are dead
# (sold, or a vector superseded by a re-added one): they cost shortlist slots and search time.
REBUILD_DEAD_SHARE = 0.2


@dataclass(frozen=True)
class IndexSpec:
    kind: str                                   # hnsw | ivf | none | auto
    knobs: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "IndexSpec":
        """'kind' or 'kind:key=value,...'; ValueError naming what is wrong."""
        kind, _, rest = str(text).strip().partition(":")
        if kind in ("none", "auto"):
            if rest:
                raise ValueError(f"{kind!r} takes no knobs, got {rest!r}")
            return cls(kind)
        if kind not in KNOBS:
            raise ValueError(f"kind must be one of {', '.join(KNOBS)}, none, auto; got {kind!r}")
        knobs = dict(KNOBS[kind])
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if key not in knobs or not eq:
                raise ValueError(f"{kind}: unknown knob {part!r} (knobs: {', '.join(knobs)})")
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{kind}: {key} must be a positive integer, got {value!r}")
            knobs[key] = int(value)
        if kind == "hnsw" and knobs["bits"] not in BITS:
            raise ValueError(f"hnsw: bits must be one of {', '.join(map(str, BITS))}, got {knobs['bits']}")
        return cls(kind, knobs)

    @classmethod
    def of(cls, info: Dict[str, Any]) -> "IndexSpec":
        """The build spec of an export's index record (knobs an older export lacks: the defaults)."""
        kind = info["kind"]
        return cls(kind, {k: int(info.get(k, v)) for k, v in KNOBS[kind].items()})

    def resolved(self, available: int) -> "IndexSpec":
        """'auto' decided for a catalogue of this many available items."""
        if self.kind != "auto":
            return self
        if available < AUTO_MIN_ITEMS:
            return IndexSpec("none")
        return IndexSpec("pq", dict(KNOBS["pq"]))


def _faiss():
    import faiss  # noqa: PLC0415 -- only where an index is built or read
    return faiss


@contextmanager
def _build_threads():
    """A build uses every core this process may run on, and then gives back the thread count it
    found: faiss shares OpenMP's with torch, so a caller's torch.set_num_threads(1) (a benchmark, a
    training process's share) had left a 2M-item HNSW build on one thread (~20 min here)."""
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _new_index(spec: IndexSpec, vectors: np.ndarray):
    faiss = _faiss()
    d = vectors.shape[1]
    if spec.kind == "hnsw":
        bits, metric = spec.knobs["bits"], faiss.METRIC_INNER_PRODUCT
        if bits == 32:
            inner = faiss.IndexHNSWFlat(d, spec.knobs["M"], metric)
        else:  # per-dimension ranges from the vectors at build; a catalogue update's clip to them
            qtype = faiss.ScalarQuantizer.QT_8bit if bits == 8 else faiss.ScalarQuantizer.QT_fp16
            inner = faiss.IndexHNSWSQ(d, qtype, spec.knobs["M"], metric)
            inner.train(np.ascontiguousarray(vectors, dtype=np.float32))
        inner.hnsw.efConstruction = spec.knobs["ef_construction"]
        return faiss.IndexIDMap2(inner)  # the Python wrapper keeps `inner` alive with it
    if spec.kind == "pq":
        m = spec.knobs["m"]
        if d % m:
            raise ValueError(f"pq: m={m} must divide the vector dimension {d}")
        inner = faiss.IndexPQFastScan(d, m, 4, faiss.METRIC_INNER_PRODUCT)
        train = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(train) < PQ_MIN_TRAIN:  # a small catalogue: repeat it rather than fail the k-means
            train = np.tile(train, (-(-PQ_MIN_TRAIN // len(train)), 1))
        inner.train(train)
        return faiss.IndexIDMap2(inner)
    nlist = max(1, min(spec.knobs["nlist"], len(vectors) // 39))  # faiss wants >= 39 points a list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build(spec: IndexSpec, vectors: np.ndarray, available: np.ndarray, path: Path) -> Dict[str, Any]:
    """Index the available items' vectors (row i of `vectors` is item index i, row 0 padding) and
    write it to `path` unless the resolved kind is none. Returns metadata's "index" record."""
    ids = np.flatnonzero(np.asarray(available, dtype=bool)) + 1
    spec = spec.resolved(len(ids))
    if spec.kind == "none" or not len(ids):
        return {"kind": "none"}
    x = np.ascontiguousarray(vectors[ids], dtype=np.float32)
    with _build_threads():
        index = _new_index(spec, x)
        index.add_with_ids(x, ids.astype(np.int64))
    _faiss().write_index(index, str(path))
    log.info("index: %s %s over %d items -> %s", spec.kind, spec.knobs, len(ids), path)
    return {"kind": spec.kind, **spec.knobs, "entries": int(index.ntotal), "live": int(len(ids))}


def update(info: Dict[str, Any], src: Path, out: Path, vectors: np.ndarray, available: np.ndarray,
           added: np.ndarray, changed: np.ndarray) -> Dict[str, Any]:
    """The catalogue rebuild's index: the base index plus the new listings (`added` item indices)
    and the re-added vectors of items whose content moved (`changed`); sold items stay and are
    filtered when served. A fresh build when the dead share would pass REBUILD_DEAD_SHARE."""
    kind = info.get("kind", "none")
    if kind == "none":
        return {"kind": "none"}
    spec = IndexSpec.of(info)
    available = np.asarray(available, dtype=bool)
    fresh = np.r_[added, changed].astype(np.int64)
    fresh = fresh[available[fresh - 1]] if len(fresh) else fresh
    entries = int(info.get("entries", 0)) + len(fresh)
    live = int(available.sum())
    dead = 1 - live / entries if entries else 1.0
    if dead > REBUILD_DEAD_SHARE:
        log.info("index: %.0f%% of %d entries would be dead: rebuilt from scratch", 100 * dead, entries)
        return {**build(spec, vectors, available, out / INDEX_FILE), "rebuilt": True}
    faiss = _faiss()
    index = faiss.read_index(str(src / INDEX_FILE))
    if len(fresh):
        with _build_threads():
            index.add_with_ids(np.ascontiguousarray(vectors[fresh], dtype=np.float32), fresh)
    faiss.write_index(index, str(out / INDEX_FILE))
    log.info("index: %d entries added (%d live of %d)", len(fresh), live, index.ntotal)
    return {**spec.knobs, "kind": kind, "entries": int(index.ntotal), "live": live, "rebuilt": False}


class CandidateIndex:
    """A read-only, memory-mapped faiss index: workers share its pages through the page cache."""

    def __init__(self, index, info: Dict[str, Any], search_knobs: Dict[str, int]):
        self.index, self.info = index, info
        self.kind = info["kind"]
        self.entries = int(index.ntotal)
        self.knobs = search_knobs
        entries = max(1, int(info.get("entries", index.ntotal)))
        self.dead_share = max(0.0, 1 - int(info.get("live", entries)) / entries)
        # the shortlist an exact re-rank needs at least: a PQ code's score is too coarse to rank on
        self.min_fetch = search_knobs["shortlist"] if self.kind == "pq" else 0
        faiss = _faiss()
        if self.kind == "hnsw":
            self.params = faiss.SearchParametersHNSW(efSearch=search_knobs["ef_search"])
        elif self.kind == "ivf":
            self.params = faiss.SearchParametersIVF(nprobe=search_knobs["nprobe"])
        else:
            self.params = None

    @classmethod
    def load(cls, model_dir, meta: Dict[str, Any], ef_search: Optional[int] = None,
             nprobe: Optional[int] = None, threads: int = 1,
             shortlist: Optional[int] = None) -> Optional["CandidateIndex"]:
        """The export's index (None when it has none); the search knobs from the export unless given;
        `threads`: faiss's OpenMP threads, the worker's torch budget (oversubscribing spins)."""
        kind = index_kind(meta)
        if kind == "none":
            return None
        if kind not in KNOBS:
            raise ExportError(f"seqrec: metadata names an index of unknown kind {kind!r}")
        faiss = _faiss()
        faiss.omp_set_num_threads(max(1, threads))
        path = Path(model_dir) / INDEX_FILE
        try:  # MMAP_IFC maps the stored vectors too, not only inverted lists
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            raise ExportError(f"seqrec: cannot read {path}: {e}") from None
        info = meta["index"]
        given = {"ef_search": ef_search, "nprobe": nprobe, "shortlist": shortlist}
        defaults = {knob: v for kind_knobs in KNOBS.values() for knob, v in kind_knobs.items()}
        knobs = {k: given[k] or int(info.get(k, defaults[k])) for k in SEARCH_KNOBS}
        return cls(index, info, knobs)

    def search(self, queries: np.ndarray, fetch: int) -> np.ndarray:
        """(B, D) unit tastes -> (B, fetch) item indices by inner product, best first; -1 = none."""
        _, labels = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch, params=self.params)
        return labels
