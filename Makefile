# Two commands a new user needs: `make run` and `make test`. Everything else
# (the venv, the Cython kernel, the gRPC stubs, the demo data) is built on the
# way, only when its inputs changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PACKAGE := $(VENV)/.package-installed
PROTOS := $(wildcard proto/tally/v1/*.proto)
STUBS := proto/.stubs-built
SDK_DESCRIPTORS := clients/python/tally_client/_generated/tally_v1.binpb
SDK_PATH := $(VENV)/.sdk-path
NODE_TOOLS := node_modules/.installed
DEMO_DATA := var/demo
LISTEN ?= 127.0.0.1:50051

.PHONY: build run test test-all bench perf soak clean proto-baseline

build: $(INSTALLED) $(PACKAGE) $(STUBS) $(SDK_DESCRIPTORS) $(SDK_PATH)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Tally itself, editable (pyproject.toml, setup.py): compiles the Cython
# kernel in place, maps `tally.v1` to proto/tally/v1, and installs the
# `tally` command and the tally.channels entry points into the venv. The
# pinned requirements are already there: no build isolation, no deps.
$(PACKAGE): $(INSTALLED) core/kernel.pyx core/kernel.pxd core/replication/encoding.pyx server/fastpay.pyx setup.py pyproject.toml
	rm -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tally-proto.pth"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(STUBS): $(INSTALLED) $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTOS)
	touch $@

# The client SDK (clients/python, its own distributable): its descriptors
# are built from the contract as a wheel build does, and this venv imports
# it from its source folder (tests drive it against a real server).
$(SDK_DESCRIPTORS): $(INSTALLED) $(PROTOS) clients/python/build_descriptors.py clients/python/proto/tally_client/google_rpc.proto
	$(PY) clients/python/build_descriptors.py

$(SDK_PATH): $(INSTALLED)
	echo "$(CURDIR)/clients/python" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tally-client.pth"
	touch $@

# buf (npm package @bufbuild/buf, pinned in package.json and its lock) for
# the contract's lint and breaking-change check. Without npm the test that
# needs it says so and skips.
$(NODE_TOOLS): package.json package-lock.json
	if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: tests/test_proto_contract.py will skip buf lint"; fi

# At a release only: the contract as released becomes the baseline that
# tests/test_proto_contract.py holds every later change to.
proto-baseline: $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iproto --descriptor_set_out=proto/baseline/tally-v1.binpb $(sort $(patsubst proto/%,%,$(PROTOS)))

# A demo directory made by an older Tally is brought to this data format
# first (core/migrations.py; nothing to do when it is current or new).
run: build
	test ! -e $(DEMO_DATA)/data.mdb || $(PY) -m core.migrations $(DEMO_DATA)
	$(PY) -m server --data $(DEMO_DATA) --listen $(LISTEN) --demo

# The suite without the long runs (soak, full load); under 15 minutes here.
test: build $(NODE_TOOLS)
	$(PY) -m pytest -q -m "not slow" tests

test-all: build $(NODE_TOOLS)
	$(PY) -m pytest -q tests

bench: build
	mkdir -p reports
	$(PY) -m bench kernel --json reports/kernel.json
	$(PY) -m bench e2e --concurrency 1500 --duration 30 --json reports/e2e.json

# The operating figures (issue 7): a 10-million-transaction directory (made
# once, kept in $(SEED_DATA)), the stream and open-loop runs on a fresh copy
# of it (each run adds its own transactions: a soak adds millions, so the
# seed itself is never run on), a soak and the crash cycles; reports and PNG
# charts in reports/.
SEED_DATA ?= var/seed-10m
RUN_DATA ?= var/run-10m
SOAK_SECONDS ?= 1800
perf: build
	mkdir -p reports
	test -e $(SEED_DATA)/data.mdb || $(PY) -m bench seed --transactions 10000000 --accounts 1000000 $(SEED_DATA) --json reports/seed.json --chart reports/seed.png
	rm -rf $(RUN_DATA) && cp -r $(SEED_DATA) $(RUN_DATA)
	$(PY) -m core.migrations $(RUN_DATA)
	$(PY) -m bench e2e --mode stream --concurrency 1500 --duration 120 --warmup 10 --rounds 2 --compare-empty --skip-echo --data $(RUN_DATA) --json reports/e2e-stream.json --chart reports/e2e-stream.png
	$(PY) -m bench e2e --mode unary --rate 1000 --concurrency 1500 --duration 30 --data $(RUN_DATA) --json reports/e2e-open.json --chart reports/e2e-open.png
	$(PY) -m bench soak --concurrency 500 --duration $(SOAK_SECONDS) --data $(RUN_DATA) --json reports/soak.json --chart reports/soak.png
	$(PY) -m bench crash --cycles 20 --json reports/crash.json --chart reports/crash.png

soak: build
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build *.egg-info var reports core/*.so core/kernel.c $(STUBS) proto/tally/v1/*_pb2*.py* \
		$(SDK_DESCRIPTORS) $(SDK_PATH) clients/python/build node_modules
