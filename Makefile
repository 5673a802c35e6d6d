# xhub — one Makefile for a fresh machine: it builds its own virtual environment.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/xhub/v1/*.proto)
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
PROTOC = $(PY) -m grpc_tools.protoc -I proto \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc

.PHONY: all venv proto proto-check buf-lint typecheck-tree lint test test-fast demo bench clean

all: test

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## proto: regenerate the Python code (and .pyi stubs) beside the .proto files
proto: $(STAMP)
	$(PROTOC) --python_out=proto --mypy_out=proto --grpc_python_out=proto --mypy_grpc_out=proto $(PROTOS)

## proto-check: fail when the committed generated code is stale
proto-check: $(STAMP)
	@tmp=$$(mktemp -d); \
	$(PROTOC) --python_out=$$tmp --mypy_out=$$tmp --grpc_python_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	for f in $$(cd $$tmp && find . -type f); do \
	  cmp -s "$$tmp/$$f" "proto/$$f" || { echo "stale generated code: proto/$$f (run 'make proto')"; rm -rf $$tmp; exit 1; }; \
	done; \
	for f in proto/xhub/v1/*_pb2*.py*; do \
	  test -f "$$tmp/$${f#proto/}" || { echo "generated file without a .proto: $$f"; rm -rf $$tmp; exit 1; }; \
	done; \
	rm -rf $$tmp; echo "generated protobuf code is up to date"

$(BUF):
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@1

## buf-lint: lint the public contract
buf-lint: $(BUF)
	cd proto && ../$(BUF) lint

ROOMS := protocol storage certificates_store hub connectors demo cli
TYPECHECK := .build/typecheck/xhub

## typecheck-tree: the xhub namespace as mypy sees it (links that mirror pyproject's package-dir)
typecheck-tree:
	@mkdir -p $(TYPECHECK)
	@for f in __init__.py py.typed v1; do ln -sfn ../../../proto/xhub/$$f $(TYPECHECK)/$$f; done
	@for d in $(ROOMS); do ln -sfn ../../../$$d $(TYPECHECK)/$$d; done

## lint: ruff + mypy (strict) on project code, buf on the proto
lint: $(STAMP) buf-lint typecheck-tree
	$(VENV)/bin/ruff check $(ROOMS) tests bench
	$(VENV)/bin/mypy

## test: the whole suite, as CI runs it
test: $(STAMP) proto-check lint
	$(VENV)/bin/pytest -q --durations=15

## demo: a hub on SQLite plus a real end-to-end exchange
demo: $(STAMP)
	$(PY) -m xhub.demo

## bench: ratios against bare baselines measured in the same run
bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(TOOLS) .build .pytest_cache .mypy_cache .ruff_cache bench/results.json
