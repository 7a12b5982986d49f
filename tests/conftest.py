import os

import pytest
from hypothesis import Phase, settings

# `make test` runs the default profile; TALLY_HYPOTHESIS=deep searches longer
# (used before changing the kernel: thousands of random sequences).
settings.register_profile("deep", max_examples=3000)
# For chasing a failure: no shrinking, first failure reported at once.
settings.register_profile("find", phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("TALLY_HYPOTHESIS", "default"))

from core.ledger import Ledger, load_kernel
from core.store import open_store
from tests.support import ServerProcess

KERNELS = ["cython", "reference"]
MAP_SIZE_TEST_BYTES = 2**30


def open_ledger(path: str, kernel: str) -> Ledger:
    return Ledger(open_store(path, MAP_SIZE_TEST_BYTES), load_kernel(kernel))


@pytest.fixture(params=KERNELS)
def ledger(request, tmp_path):
    """A real LMDB ledger on disk, once per kernel: every rule test runs
    against the Cython kernel and the reference alike (as uvloop's tests run
    against both loops)."""
    opened = open_ledger(str(tmp_path / f"ledger-{request.param}"), request.param)
    yield opened
    opened.store.close()


@pytest.fixture
def cython_ledger(tmp_path):
    """A real LMDB ledger on disk with the Cython kernel alone: for what only
    it has (the group commit's tests, its record cache)."""
    opened = open_ledger(str(tmp_path / "data"), "cython")
    yield opened
    opened.store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server with demo data for a test module."""
    process = ServerProcess(str(tmp_path_factory.mktemp("server") / "data")).start()
    yield process
    if process.process.poll() is None:
        process.stop()


@pytest.fixture
def server_factory(tmp_path):
    started = []

    def start(*args, data_dir=None, demo=True):
        process = ServerProcess(data_dir or str(tmp_path / f"data{len(started)}"), *args, demo=demo).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
