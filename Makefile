# churnml: `make help` lists the targets. Every target that runs code creates .venv on first use
# and reinstalls it when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup features train evaluate score export kpis experiment serve explain test test-fast test-spark lint bench ui clean postgresql
TARGETS ?= churn,repurchase

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Pass options to a stage with ARGS, e.g. make train ARGS=\"data=cdnow model=logistic\""

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The build backend of pyproject.toml, so that a wheel builds offline (setuptools below 81: see pyproject).
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77,<81' wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	touch $@

setup: $(STAMP) ## Create or update the virtualenv (.venv)

features: $(STAMP) ## Write the feature table at a date, as_of (churnml-features)
	$(BIN)/churnml-features $(ARGS)

train: $(STAMP) ## Train, evaluate and register the churn and repurchase models (churnml-train)
	$(BIN)/churnml-train --multirun target=$(TARGETS) $(ARGS)

evaluate: $(STAMP) ## Evaluate the registered champion on a holdout date, as_of (churnml-evaluate)
	$(BIN)/churnml-evaluate $(ARGS)

score: $(STAMP) ## Score every customer with the champion models (churnml-score): scores/as_of=.../scores.parquet
	$(BIN)/churnml-score $(ARGS)

export: $(STAMP) ## Export both champions from the registry to models/ (make train does it too)
	$(BIN)/churnml-export $(ARGS)

kpis: $(STAMP) ## Loyalty KPIs, cohorts, tier migration and a dashboard (churnml-kpis): outputs/kpis/<data>/as_of=.../
	$(BIN)/churnml-kpis $(ARGS)

experiment: $(STAMP) ## Evaluate the campaigns of the treatments table: lift, CUPED, sample ratio, power, uplift (churnml-experiment)
	$(BIN)/churnml-experiment $(ARGS)

serve: $(STAMP) ## Serve scores over HTTP on 127.0.0.1:8000 from the events stored so far (churnml-serve)
	$(BIN)/churnml-serve $(ARGS)

explain: $(STAMP) ## Run the SHAP and overview notebooks headless: HTML in reports/notebooks, logged to the churn champion's run
	$(BIN)/churnml-notebooks --output-dir reports/notebooks $(ARGS)

ui: $(STAMP) ## Open the MLflow UI on the project's tracking store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

postgresql: ## Install the PostgreSQL server the tests start a throwaway cluster of (Debian packages, as root or with sudo)
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo="sudo -n"; fi; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# Tests run in one process per core (at most 4), a test file's tests in the same process, so
# that module fixtures (a trained model, a Spark session) are built once per file.
PYTEST_PARALLEL ?= -n auto --maxprocesses=4 --dist loadfile

test: $(STAMP) postgresql ## Run ruff and every test, slow ones included
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(ARGS)

test-spark: $(STAMP) ## Run the Spark parity tests (a local Spark session, Java 17)
	$(BIN)/python -m pytest -m spark $(ARGS)

test-fast: $(STAMP) ## Run ruff and the tests not marked slow
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow" $(ARGS)

lint: $(STAMP) ## Check the code with ruff (pyflakes, import order, docstrings)
	$(BIN)/ruff check src tests bench

bench: $(STAMP) ## Run the benchmarks under bench/ (ratios against a reference run measured alongside)
	$(BIN)/python bench/run.py $(ARGS)

clean: ## Remove generated data, outputs and the virtualenv
	rm -rf $(VENV) data outputs multirun scores reports serve
