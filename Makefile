# Two commands a new user needs: `make run` and `make test`. Everything else
# (the venv, the Cython kernel, the gRPC stubs, the demo data) is built on the
# way, only when its inputs changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
KERNEL := core/.kernel-built
PROTOS := $(wildcard proto/tally/v1/*.proto)
STUBS := proto/.stubs-built
DEMO_DATA := var/demo
LISTEN ?= 127.0.0.1:50051

.PHONY: build run test test-all bench soak clean

build: $(INSTALLED) $(KERNEL) $(STUBS)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# The generated stubs import as `tally.v1`: put proto/ on the venv's path.
	echo "$(CURDIR)/proto" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tally-proto.pth"
	touch $@

$(KERNEL): $(INSTALLED) core/kernel.pyx core/kernel.pxd setup.py
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

$(STUBS): $(INSTALLED) $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTOS)
	touch $@

run: build
	$(PY) -m server --data $(DEMO_DATA) --listen $(LISTEN) --demo

# The suite without the long runs (soak, full load); under 15 minutes here.
test: build
	$(PY) -m pytest -q -m "not slow" tests

test-all: build
	$(PY) -m pytest -q tests

bench: build
	mkdir -p reports
	$(PY) -m bench kernel --json reports/kernel.json
	$(PY) -m bench e2e --concurrency 1500 --duration 30 --json reports/e2e.json

soak: build
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build var reports core/*.so core/kernel.c $(KERNEL) $(STUBS) proto/tally/v1/*_pb2*.py*
