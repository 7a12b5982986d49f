"""Floods of wrong logins against a running server, for `bench e2e
--beside login-flood` and `--beside login-flood-known`.

Owns: LoginFlood, N threads that call AdminService.Login as fast as they
are answered, each with an unknown username and a wrong password (the
server answers those after a wait as long as a real check, without
hashing); KnownUserLoginFlood, the same against users that exist, made in
the data directory before the server starts, so that every attempt costs
a real argon2id check until the user is locked (ten each), the worst a
flood can do.
Used by: bench/e2e.py, which measures Pay with and without it.
"""

import itertools
import time

import grpc

from bench.beside import BesideLoad
from bench.directory_admin import directory_admin
from tally.v1 import admin_pb2, admin_pb2_grpc

LOGIN_TIMEOUT_S = 30.0
WRONG_PASSWORD = "not the password at all"


class LoginFlood(BesideLoad):
    def __init__(self, address: str, clients: int, rate_per_s: float | None = None):
        super().__init__(address, clients, rate_per_s)
        self.attempts = 0
        self.busy = 0  # refused at once (RESOURCE_EXHAUSTED: the hash gate was full)
        self._names = itertools.count()

    def next_username(self) -> str:
        return f"flood-{next(self._names)}"

    def summary(self) -> str:
        return (f"login flood: {self.attempts} wrong logins by {self.clients} clients, {self.busy} refused at once "
                "(RESOURCE_EXHAUSTED)")

    def one_client(self):
        with grpc.insecure_channel(self.address) as channel:
            login = admin_pb2_grpc.AdminServiceStub(channel).Login
            while not self.stopping.is_set():
                request = admin_pb2.LoginRequest(username=self.next_username(), password=WRONG_PASSWORD)
                self.pace()
                try:
                    login(request, timeout=LOGIN_TIMEOUT_S)
                except grpc.RpcError as error:
                    self.count("attempts")
                    self.count("busy", error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)


# Users made for each run of a known-user flood: ten checks each before the
# lockout, so 64 keep a flood at one check a second busy for ten minutes.
KNOWN_USERS_PER_RUN = 64
KNOWN_USERS_HEADQUARTERS_ID = 900_001
KNOWN_USERS_PASSWORD = "the flooded users' real password"


class KnownUserLoginFlood(LoginFlood):
    def __init__(self, address: str, clients: int, rate_per_s: float | None = None, usernames: tuple = ()):
        super().__init__(address, clients, rate_per_s)
        assert usernames
        self._usernames = itertools.cycle(usernames)

    @classmethod
    def prepare(cls, data_dir: str) -> dict:
        """KNOWN_USERS_PER_RUN new users in `data_dir` (the server is not
        running), named for this run so that earlier runs' lockouts do not
        spare this one its checks."""
        from core.admin.errors import AlreadyExists
        from core.admin.model import Role

        run = time.time_ns()
        usernames = tuple(f"flooded-{run}-{index}" for index in range(KNOWN_USERS_PER_RUN))
        with directory_admin(data_dir) as (admin, actor):
            try:
                admin.create_headquarters(actor, "Login flood", org_id=KNOWN_USERS_HEADQUARTERS_ID)
            except AlreadyExists:
                pass  # made for an earlier run
            for username in usernames:
                admin.create_user(actor, username, KNOWN_USERS_PASSWORD, KNOWN_USERS_HEADQUARTERS_ID, Role.OPERATIONS)
        return {"usernames": usernames}

    def next_username(self) -> str:
        return next(self._usernames)
