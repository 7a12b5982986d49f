"""Loads run beside Pay by `bench e2e --beside KIND`: what they share.

Owns: BesideLoad, N daemon threads each running `one_client` against the
server until stopped, and their tallies. Each kind is a subclass with its
own module: login_flood.py, back_office_load.py.
"""

import threading
import time

JOIN_TIMEOUT_S = 30.0


class BesideLoad:
    def __init__(self, address: str, clients: int, rate_per_s: float | None = None):
        assert clients > 0 and (rate_per_s is None or rate_per_s > 0)
        self.address = address
        self.clients = clients
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads = []
        # Calls of all clients together are spaced this far apart (None: none).
        self._interval_s = None if rate_per_s is None else 1.0 / rate_per_s
        self._next_call_s = time.monotonic()

    @classmethod
    def prepare(cls, data_dir: str) -> dict:
        """Before each run, while the server is stopped: what the load
        needs in the data directory; the keyword arguments it is then made
        with."""
        return {}

    def start(self) -> "BesideLoad":
        for _ in range(self.clients):
            thread = threading.Thread(target=self.one_client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> str:
        """Stop every client; a line saying what the load did."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        return self.summary()

    def pace(self):
        """Before each call: wait for this call's turn at the load's rate."""
        if self._interval_s is None:
            return
        with self.lock:
            turn_s = max(self._next_call_s, time.monotonic())
            self._next_call_s = turn_s + self._interval_s
        self.stopping.wait(max(0.0, turn_s - time.monotonic()))

    def count(self, name: str, by: int = 1):
        with self.lock:
            setattr(self, name, getattr(self, name) + by)

    def one_client(self):
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError
