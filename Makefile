# seqrec: `make demo` and `make test` set up everything they need (venv, Java 17) on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml sdk/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
DEMO_DIR := artifacts/demo
SERVE_DIR := artifacts/serve

.PHONY: setup java test test-fast demo train-demo serve stop bench-quality bench-negatives bench-serve bench-sdk bench-ablation bench-reliability bench-scale bench-optimizers bench-index

setup: $(STAMP) java

$(STAMP): requirements.txt pyproject.toml sdk/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e . -e ./sdk
	rm -f $(VENV)/.installed-*; touch $@

# TorchServe's frontend is Java 17.
java:
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless; }

# Every test, the TorchServe and training ones included: what CI (.ci/run) runs.
test: setup
	$(PY) -m pytest -q --durations=15 tests

# The inner loop: no TorchServe, no training (pytest.ini's markers; tests/lane_guard.py enforces
# them), so no Java either.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not torchserve and not training and not slow" tests

# Train on the embedded synthetic marketplace, every seed stage on (train/configs/demo.json: the
# ablation's synthetic settings), and export to $(DEMO_DIR).
train-demo: setup
	$(PY) -m train --config train/configs/demo.json --out $(DEMO_DIR) --version 1.0 --fresh

# Archive, start TorchServe on free ports, recommendations for 3 users through the SDK, stop.
demo: train-demo
	$(PY) -m devtools.demo $(DEMO_DIR)

# The demo export, trained only when missing (make train-demo retrains).
$(DEMO_DIR)/metadata.json:
	$(MAKE) train-demo

# TorchServe on config.properties' ports with the demo model, left running; `make stop` ends it.
serve: setup $(DEMO_DIR)/metadata.json
	$(PY) -m devtools.serve $(DEMO_DIR) --workdir $(SERVE_DIR)

stop:
	$(PY) -m devtools.serve --stop --workdir $(SERVE_DIR)

# ml-latest-small with 3 training seeds (its spread is the larger noise there), then Beauty.
bench-quality: setup
	$(PY) -m bench.quality --only ml-latest-small --seeds 3
	$(PY) -m bench.quality --only amazon-beauty

# Sparse vs dense item-table optimizer on amazon-beauty and ml-latest-small (~20 min alone).
bench-optimizers: setup
	$(PY) -m bench.optimizers

bench-negatives: setup
	$(PY) -m bench.negatives

bench-ablation: setup
	$(PY) -m bench.ablation

bench-reliability: setup
	$(PY) -m bench.reliability

# Exact and index scoring side by side at 50k and 2M items (in process and through TorchServe), and on
# make bench-scale's trained 2M-item model when it is there; then the index's ranking quality against
# exact on trained models (bench-index). SERVE_ARGS: more bench/serve_bench.py options.
bench-serve: setup
	$(PY) -m bench.serve_bench $(if $(wildcard artifacts/scale/export/metadata.json),--export artifacts/scale/export) $(SERVE_ARGS)
	$(MAKE) bench-index

# The candidate index on trained models -> bench/results/index_quality.json: amazon-beauty (the
# export make bench-optimizers leaves) and the 2M-item model (make bench-scale's export).
INDEX_EXPORTS ?= amazon-beauty=artifacts/bench-optimizers/amazon-beauty/sparse_adam scale-2M=artifacts/scale/export
# HNSW efSearch grid: Beauty needs 64, the 2M-item model 640 (0.994 of exact HR@10); PQ (auto's
# index) is measured at bench.index_quality's default shortlists, 300, 500 and 1000.
INDEX_EF ?= 16,32,64,128,256,512,768,1024
bench-index: setup
	@for pair in $(INDEX_EXPORTS); do label=$${pair%%=*}; dir=$${pair#*=}; \
	  if [ -f $$dir/metadata.json ]; then $(PY) -m bench.index_quality $$dir --label $$label --ef-search $(INDEX_EF) || exit 1; \
	  else echo "bench-index: skipping $$label: no export in $$dir (make bench-optimizers / make bench-scale write them)"; fi; \
	done

# Catalogue churn at 2M items (issue 12, item 6): 20k new and 20k sold listings through train.catalog,
# archive.sh and ops/rollout.py on a real TorchServe under load -> bench/results/churn.json.
.PHONY: bench-churn
bench-churn: setup
	$(PY) -m bench.churn $(CHURN_ARGS)

bench-sdk: setup
	$(PY) -m bench.sdk_overhead

# Simulated online A/B (stage 2 vs all stages) and A/A tests through the SDK and one real TorchServe
# (issue 15) -> bench/results/ab.json, ab.png, ab-aa.png; the exports stay in artifacts/bench-ab/.
.PHONY: bench-ab
bench-ab: setup
	$(PY) -m bench.ab

# Marketplace scale (issue 11): 2M items, 1M users, ~31M events through generate, load, one epoch,
# evaluation, export and archive.sh -> bench/results/scale.json; the export stays in artifacts/scale/.
# About an hour on 2 cores; run it alone. `python -m bench.scale --small` is the smoke size.
bench-scale: setup
	$(PY) -m bench.scale

# Hyperparameter search on validation only (issue 13, item 3): optuna trials of the Beauty recipe ->
# bench/results/<study>.json; the study resumes from artifacts/search/. TRIALS=20, STUDY=name,
# ENQUEUE='model.dropout=0.5 negatives=popularity' (hand-picked trials, run first).
.PHONY: bench-search
bench-search: setup
	$(PY) -m bench.search --config bench/configs/quality-amazon-beauty.json --trials $(or $(TRIALS),20) \
		$(if $(STUDY),--study $(STUDY)) $(if $(ENQUEUE),--enqueue $(ENQUEUE)) $(if $(SEEDS),--seeds $(SEEDS))

# Peers side by side (issue 13, item 4): RecTools' SASRec and implicit's ALS on the project's own
# split, ranked by the project's evaluator -> bench/results/peers.json. In their own venv,
# .venv-bench (bench/requirements-peers.txt), so the product's dependencies stay lean; torch first.
.PHONY: bench-peers
bench-peers:
	test -x .venv-bench/bin/python || python3 -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q torch==2.13.0
	.venv-bench/bin/python -m pip install -q -r bench/requirements-peers.txt
	.venv-bench/bin/python -m pip install -q --no-deps -e .
	.venv-bench/bin/python -m bench.peers
