"""Real parts for tests: a Tally server in a subprocess, stubs, requests.

A test talks to a real server over 127.0.0.1, started with the same command
line a user types (`python -m server ...`) and stopped with SIGTERM, or
killed with SIGKILL for crash tests.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc

from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING_LINE = re.compile(r"serving on (\S+:\d+) \(kernel: (\w+)")
START_TIMEOUT_S = 60

DEMO_COMPANY_CARD = 6200000000000001
DEMO_PERSONAL_CARD = 6200000000000002
DEMO_RESTRICTED_CARD = 6200000000000003


class ServerProcess:
    """`python -m server` on a free port; its log is kept for assertions."""

    def __init__(self, data_dir: str, *extra_args: str, demo: bool = True):
        self.data_dir = data_dir
        self.args = [sys.executable, "-m", "server", "--data", data_dir, "--listen", "127.0.0.1:0", *extra_args]
        if demo:
            self.args.append("--demo")
        self.process = None
        self.address = None
        self.kernel = None
        self.log_lines: list[str] = []

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(
            self.args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        ready = threading.Event()

        def read_log():
            for line in self.process.stderr:
                self.log_lines.append(line)
                match = SERVING_LINE.search(line)
                if match:
                    self.address, self.kernel = match.group(1), match.group(2)
                    ready.set()

        threading.Thread(target=read_log, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server did not start:\n" + "".join(self.log_lines))
        return self

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def logged(self, text: str, timeout_s: float = 10.0) -> bool:
        """Whether the server's log says `text` within timeout_s: its lines
        reach this process through a pipe a moment after the server wrote
        them (after the answer that a test waited for, possibly)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM: a clean shutdown; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self):
        """SIGKILL: a crash, nothing flushed or closed."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)


class Terminal:
    """A terminal that numbers its requests, like a real POS."""

    def __init__(self, channel, station_id: int = 1, terminal_id: int = 101, operator_id: int = 7, serial: int = 0):
        self.payments = payment_pb2_grpc.PaymentServiceStub(channel)
        self.cards = card_pb2_grpc.CardServiceStub(channel)
        self.station_id = station_id
        self.terminal_id = terminal_id
        self.operator_id = operator_id
        self.serial = serial

    def context(self, serial: int | None = None) -> common_pb2.TerminalContext:
        if serial is None:
            self.serial += 1
            serial = self.serial
        return common_pb2.TerminalContext(
            station_id=self.station_id, terminal_id=self.terminal_id, serial=serial, operator_id=self.operator_id
        )

    def pay(self, amount_minor: int, card_id: int = DEMO_COMPANY_CARD, serial=None, **plan):
        plan.setdefault("use_fleet", True)
        request = payment_pb2.PayRequest(
            terminal=self.context(serial), amount_minor=amount_minor, plan=payment_pb2.PaymentPlan(card_id=card_id, **plan)
        )
        return self.payments.Pay(request), request

    def open_card(self, card_id: int, card_type: int = 2, **limits):
        return self.cards.OpenCard(card_pb2.OpenCardRequest(card_id=card_id, card_type=card_type, **limits))

    def topup(self, card_id: int, amount: int, account: int = common_pb2.PERSONAL):
        return self.cards.TopUp(card_pb2.TopUpRequest(terminal=self.context(), card_id=card_id, account=account, amount=amount))

    def card(self, card_id: int):
        return self.cards.GetCard(card_pb2.GetCardRequest(card_id=card_id)).card
