"""A flood of wrong logins against a running server, for `bench e2e --login-flood`.

Owns: LoginFlood, N threads that call AdminService.Login as fast as they
are answered, each with an unknown username and a wrong password, so that
every attempt costs the server a full argon2id check (the worst case: a
known user would be locked after ten and then refused without hashing).
Used by: bench/e2e.py, which measures Pay with and without it.
"""

import itertools

import grpc

from bench.beside import BesideLoad
from tally.v1 import admin_pb2, admin_pb2_grpc

LOGIN_TIMEOUT_S = 30.0
WRONG_PASSWORD = "not the password at all"


class LoginFlood(BesideLoad):
    def __init__(self, address: str, clients: int, rate_per_s: float | None = None):
        super().__init__(address, clients, rate_per_s)
        self.attempts = 0
        self.busy = 0  # refused at once (RESOURCE_EXHAUSTED: the hash gate was full)
        self._names = itertools.count()

    def summary(self) -> str:
        return (f"login flood: {self.attempts} wrong logins by {self.clients} clients, {self.busy} refused at once "
                "(RESOURCE_EXHAUSTED)")

    def one_client(self):
        with grpc.insecure_channel(self.address) as channel:
            login = admin_pb2_grpc.AdminServiceStub(channel).Login
            while not self.stopping.is_set():
                request = admin_pb2.LoginRequest(username=f"flood-{next(self._names)}", password=WRONG_PASSWORD)
                self.pace()
                try:
                    login(request, timeout=LOGIN_TIMEOUT_S)
                except grpc.RpcError as error:
                    self.count("attempts")
                    self.count("busy", error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
