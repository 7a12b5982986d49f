"""Loads run beside Pay by `bench e2e --beside KIND`: what they share.

Owns: BesideLoad, N daemon threads each running `one_client` against the
server until stopped, and their tallies. Each kind is a subclass with its
own module: login_flood.py, back_office_load.py.
"""

import threading

JOIN_TIMEOUT_S = 30.0


class BesideLoad:
    def __init__(self, address: str, clients: int):
        assert clients > 0
        self.address = address
        self.clients = clients
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads = []

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

    def count(self, name: str, by: int = 1):
        with self.lock:
            setattr(self, name, getattr(self, name) + by)

    def one_client(self):
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError
