# wasmkv: `make demo` runs the main job, `make test` runs every test.
# Both build their own virtualenv in .venv; only Python 3.11+ and make are needed
# (`make test` also installs Debian's redis-server when it is missing and we are root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STATE := .wasmkv/demo-state

.PHONY: demo test plugins lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

plugins: $(STAMP)
	$(BIN)/python plugins/build.py

# The counter plugin twice against the embedded durable store: the count survives the process.
demo: plugins
	@echo "--- run 1"
	$(BIN)/wasmkv run plugins/build/counter.wasm --call hit --state $(DEMO_STATE)
	@echo "--- run 2 (a new process; the count went on)"
	$(BIN)/wasmkv run plugins/build/counter.wasm --call hit --state $(DEMO_STATE)
	$(BIN)/wasmkv inspect --state $(DEMO_STATE)

test: plugins
	$(BIN)/python tests/ensure_redis.py
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check abi kv host tests bench examples plugins
	$(BIN)/ruff format --check abi kv host tests bench examples plugins
	$(BIN)/mypy

bench: plugins
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_host.py
	$(BIN)/python bench/bench_dev.py
	$(BIN)/python tests/ensure_redis.py
	$(BIN)/python bench/bench_cluster.py

clean:
	rm -rf $(VENV) plugins/build .wasmkv
