"""Benchmarks (`make bench-*`): each writes JSON under bench/results/ with the git commit."""
from train.threads import quiet_openmp_waits

# Before any benchmark module imports torch: OpenMP threads that sleep while waiting, as
# `python -m train` does, so that a benchmark beside another torch process is not slowed 30x.
quiet_openmp_waits()
