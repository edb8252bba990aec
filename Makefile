# wasmkv: `make demo` runs the main job, `make test` runs every test.
# Both build their own virtualenv in .venv; only Python 3.11+ and make are needed
# (`make test` also installs Debian's redis-server when it is missing and we are root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STATE := .wasmkv/demo-state

.PHONY: demo test plugins plugins-all lint bench clean redis-cluster

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

plugins: $(STAMP)
	$(BIN)/python plugins/build.py

# Every sample, Rust (Debian's toolchain, installed when missing and we are root) and
# AssemblyScript/Extism (npm, into plugins/<toolchain>/node_modules) included.
plugins-all: $(STAMP)
	$(BIN)/python plugins/build.py --all

# The counter plugin twice against the embedded durable store: the count survives the process.
demo: plugins
	@echo "--- run 1"
	$(BIN)/wasmkv run plugins/build/counter.wasm --call hit --state $(DEMO_STATE)
	@echo "--- run 2 (a new process; the count went on)"
	$(BIN)/wasmkv run plugins/build/counter.wasm --call hit --state $(DEMO_STATE)
	$(BIN)/wasmkv inspect --state $(DEMO_STATE)

test: plugins-all
	$(BIN)/python tests/ensure_redis.py
	$(BIN)/python -m pytest -q

# mypy maps module names to folders and cannot follow setuptools' editable import hook, so it
# reads the packages through links that lay the folders out as their import names (wasmkv/kv -> kv).
TYPECHECK := $(VENV)/typecheck
SOURCES   := wasmkv abi kv host tests bench examples plugins

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/wasmkv
	ln -s $(CURDIR)/wasmkv/__init__.py $(CURDIR)/wasmkv/serve.py $(CURDIR)/wasmkv/py.typed $(TYPECHECK)/wasmkv/
	ln -s $(CURDIR)/abi $(CURDIR)/kv $(CURDIR)/host $(TYPECHECK)/wasmkv/
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p wasmkv

bench: plugins
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/compare.py --skip-cluster
	$(BIN)/python bench/bench_scan.py
	$(BIN)/python plugins/build.py --all
	$(BIN)/python bench/bench_wasi.py
	$(BIN)/python bench/bench_extism.py
	$(BIN)/python bench/bench_host.py
	$(BIN)/python bench/bench_dev.py
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python tests/ensure_redis.py
	$(BIN)/python bench/bench_cluster.py

# A local Redis Cluster (3 masters, 3 replicas) on free loopback ports, until Ctrl-C; installs
# Debian's redis-server first when it is missing and we are root.
redis-cluster: $(STAMP)
	$(BIN)/python tests/ensure_redis.py
	$(BIN)/python tests/_servers.py

clean:
	rm -rf $(VENV) plugins/build .wasmkv
