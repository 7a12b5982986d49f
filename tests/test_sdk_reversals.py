"""Lost answers and crashes, through the SDK against real servers and real
SIGKILLs: a request whose answer never came is reversed (store-and-forward,
across restarts of the server and of the client), it is never reported
approved, nothing moves twice (the card's balances and core.audit say so),
and a serial is never used twice, whatever was killed when.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tally_client import ClientSettings, Outcome, ResultCode, SerialAllocator, SerialsInUse, TransactionState
from tally_client.codes import Channel
from tally_client.reversals import ReversalQueue
from tests.support import DEMO_PERSONAL_CARD, REPO, Terminal
from tests.test_admin_service import AdminClient
from tests.test_sdk_client import free_port, open_client, secured_server, server_on

# Card 2 has 300.00 personal: a 400.00 sale takes all of it and 100.00
# from the channel, whose simulated latency keeps the sale in flight.
PERSONAL_START_MINOR = 30_000
SALE_MINOR = 40_000
# A sale's time, shorter than the channel's latency: its answer is lost.
# The Reverse gets the client's usual attempts (QUICK), longer than the
# latency (the server answers a Reverse once the channel undid its part).
LOST_AFTER_S = 0.5


def sale(client, timeout_s=None):
    return client.pay(SALE_MINOR, card_id=DEMO_PERSONAL_CARD, use_personal=True, channel=Channel.ALIPAY,
                      timeout_s=timeout_s)


def personal_minor(server) -> int:
    return Terminal(server.channel()).card(DEMO_PERSONAL_CARD).balances.personal_minor


def wait_for(condition, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def audit_is_clean(data_dir: str):
    result = subprocess.run([sys.executable, "-m", "core.audit", data_dir], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def assert_undone(server, original_serial: int):
    """The sale stands nowhere: the card has its money, the original is
    reversed or never completed."""
    wait_for(lambda: personal_minor(server) == PERSONAL_START_MINOR)
    stored = _query_client(server).query(original_serial)
    if stored.transaction is not None:
        transaction = stored.transaction
        assert transaction.reversed or transaction.state in (TransactionState.ABORTED, TransactionState.RELEASED)
    assert stored.answer is None or stored.answer.result is not ResultCode.APPROVED or stored.transaction.reversed


class _query_client:
    """Query as terminal 101 through the server's stubs (no state directory
    to open while the test's client holds the terminal's)."""

    def __init__(self, server):
        from tally.v1 import payment_pb2

        self.payments = Terminal(server.channel()).payments
        self.payment_pb2 = payment_pb2

    def query(self, serial):
        from tally_client import results

        answer = self.payments.Query(self.payment_pb2.QueryRequest(terminal_id=101, serial=serial))
        return results.query_result(_sdk_message(answer, "QueryAnswer"), serial)


def _sdk_message(message, name):
    from tally_client import _proto

    return _proto.tally(name).FromString(message.SerializeToString())


# ------------------------------------------------------------ lost answers


def test_a_lost_answer_is_reported_reversed_and_the_reverse_undoes_the_sale(server_factory, tmp_path):
    server = server_factory("--channel-latency-ms", "1500", "1500")
    with open_client(server.address, tmp_path, drain=False) as client:
        result = sale(client, LOST_AFTER_S)
        assert result.outcome is Outcome.REVERSED and not result.approved
        assert result.result is ResultCode.RESULT_CODE_UNSPECIFIED and result.serial == 1
        [pending] = client.pending_reversals()
        assert (pending.original_serial, pending.method, pending.reverse_serial) == (1,
                "/tally.v1.PaymentService/Pay", 2)
        assert client.drain_reversals(timeout_s=20) == 0
        answered = client.reversals.answered[-1]
        assert (answered.original_serial, answered.reverse_serial, answered.result) == (1, 2, ResultCode.APPROVED)
        assert client.pending_reversals() == []
    assert_undone(server, 1)
    server.stop()
    audit_is_clean(server.data_dir)


def test_a_server_killed_mid_call_is_reversed_after_both_restart(tmp_path):
    """SIGKILL while the sale waits for its channel; the client's time runs
    out (REVERSED), its drainer cannot reach the server, the client is
    closed; server and client start again and the queue drains."""
    port, data_dir, state_dir = free_port(), str(tmp_path / "data"), tmp_path / "state"
    server = server_on(port, data_dir, "--channel-latency-ms", "3000", "3000").start()
    settings = ClientSettings(attempt_timeout_s=1, operation_timeout_s=2, backoff_initial_s=0.05, backoff_max_s=0.2,
                              drain_interval_s=0.1, reversal_backoff_max_s=0.3)
    outcome = []
    try:
        with open_client(server.address, state_dir, settings=settings) as client:
            paying = threading.Thread(target=lambda: outcome.append(sale(client)))
            paying.start()
            time.sleep(0.7)
            server.kill()
            paying.join(30)
            [result] = outcome
            assert result.outcome is Outcome.REVERSED and not result.approved
            time.sleep(0.5)  # the drainer tries, and fails: nobody listens
            assert [entry.original_serial for entry in client.pending_reversals()] == [result.serial]
            used = client.serials.reserved_through
        # On disk, for whoever opens the terminal next.
        assert os.listdir(state_dir / "terminal-101.reversals") == [f"{result.serial}.json"]
        server = server_on(port, data_dir).start()
        with open_client(server.address, state_dir, settings=settings, drain=False) as client:
            assert [entry.original_serial for entry in client.pending_reversals()] == [result.serial]
            assert client.drain_reversals(timeout_s=20) == 0
            assert client.serials.next() >= used  # no serial of the first run again
        assert_undone(server, result.serial)
    finally:
        server.kill()
    audit_is_clean(data_dir)


CLIENT_SCRIPT = """
import sys
from tally_client import ClientSettings, TerminalClient
from tally_client.codes import Channel
client = TerminalClient(sys.argv[1], station_id=1, terminal_id=101, operator_id=7, state_dir=sys.argv[2],
                        settings=ClientSettings(attempt_timeout_s=30, operation_timeout_s=60))
print("paying", flush=True)
client.pay(40000, card_id=6200000000000002, use_personal=True, channel=Channel.ALIPAY)
print("answered", flush=True)
"""


def test_a_client_killed_mid_call_leaves_its_reversal_armed_on_disk(server_factory, tmp_path):
    """The POS dies while its sale is in flight: the entry it wrote before
    sending is found by the next client, and the sale is reversed."""
    server = server_factory("--channel-latency-ms", "2000", "2000")
    state_dir = tmp_path / "state"
    pos = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.address, str(state_dir)], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert pos.stdout.readline() == "paying\n"
        wait_for(lambda: os.listdir(state_dir / "terminal-101.reversals") == ["1.json"], 10)
        time.sleep(0.3)
        pos.send_signal(signal.SIGKILL)
        pos.wait()
    finally:
        pos.kill()
    armed = json.loads((state_dir / "terminal-101.reversals" / "1.json").read_text())
    assert armed["reverse_serial"] == 0  # armed, never made due: its client died first
    wait_for(lambda: personal_minor(server) == 0)  # the sale went through after all
    with open_client(server.address, state_dir, drain=False) as client:
        [pending] = client.pending_reversals()
        assert pending.original_serial == 1
        assert client.drain_reversals(timeout_s=20) == 0
        assert client.reversals.answered[-1].reverse_serial > 1
    assert_undone(server, 1)
    server.stop()
    audit_is_clean(server.data_dir)


def test_the_background_drainer_sends_the_reverse_by_itself(server_factory, tmp_path):
    server = server_factory("--channel-latency-ms", "1000", "1000")
    answered = []
    with open_client(server.address, tmp_path, on_reversal=answered.append) as client:
        assert sale(client, LOST_AFTER_S).outcome is Outcome.REVERSED
        wait_for(lambda: answered, 20)
        assert answered[0].original_serial == 1 and client.pending_reversals() == []
    assert_undone(server, 1)


def test_a_refusal_after_an_attempt_that_may_have_run_counts_as_a_lost_answer(tmp_path):
    """The first attempt times out while its sale waits for the channel (the
    server may have it); the terminal is disabled meanwhile, so the retry is
    refused. That refusal does not prove nothing happened: the sale is
    reported REVERSED (not an error), and its Reverse waits, refused, until
    the terminal is enabled; then the client signs on again and sends it."""
    process, secrets = secured_server(tmp_path, "--channel-latency-ms", "1500", "1500")
    process.start()
    root = AdminClient(process.channel(), "root")
    state_dir = tmp_path / "state"
    try:
        impatient = ClientSettings(attempt_timeout_s=0.5, operation_timeout_s=10, backoff_initial_s=0.3,
                                   backoff_max_s=0.4)
        with open_client(process.address, state_dir, terminal_id=104, station_id=12, secret=secrets[104],
                         settings=impatient, drain=False) as client:
            client.sign_on()
            disable = threading.Timer(0.2, lambda: root.DisableTerminal(terminal_id=104, reason="lane closed"))
            disable.start()
            result = sale(client)
            disable.join()
            assert result.outcome is Outcome.REVERSED and not result.approved
            assert client.drain_reversals(timeout_s=1) == 1  # refused while disabled: kept
        wait_for(lambda: personal_minor(process) == 0)  # the first attempt's sale went through
        root.EnableTerminal(terminal_id=104)
        with open_client(process.address, state_dir, terminal_id=104, station_id=12, secret=secrets[104],
                         drain=False) as client:
            assert client.drain_reversals(timeout_s=20) == 0
            assert client.reversals.answered[-1].result == ResultCode.APPROVED
        wait_for(lambda: personal_minor(process) == PERSONAL_START_MINOR)
    finally:
        process.stop()
    audit_is_clean(process.data_dir)


# ------------------------------------------------------------ the state on disk


ALLOCATOR_SCRIPT = """
import sys
from tally_client import SerialAllocator
serials = SerialAllocator(sys.argv[1], block=10)
while True:
    print(serials.next(), flush=True)
"""


def test_a_serial_is_never_handed_out_twice_across_a_sigkill(tmp_path):
    path = str(tmp_path / "terminal-101.serial")
    seen = []
    for _ in range(3):
        worker = subprocess.Popen([sys.executable, "-c", ALLOCATOR_SCRIPT, path], cwd=REPO, stdout=subprocess.PIPE,
                                  text=True)
        seen.extend(int(worker.stdout.readline()) for _ in range(25))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    serials = SerialAllocator(path, block=10)
    assert serials.next() > max(seen)
    with pytest.raises(SerialsInUse):
        SerialAllocator(path)  # one client per terminal, in this process too
    serials.close()
    assert SerialAllocator(path).next() > max(seen)


def test_a_serial_file_that_is_not_ours_is_refused_not_guessed(tmp_path):
    path = tmp_path / "terminal-7.serial"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="refusing to guess"):
        SerialAllocator(str(path))
    with pytest.raises(ValueError, match="block: must be within"):
        SerialAllocator(str(tmp_path / "x"), block=0)


def test_the_queue_keeps_due_reversals_and_answers_across_reopening(tmp_path):
    queue = ReversalQueue(str(tmp_path))
    armed = queue.arm(101, 1, 7, serial=5, method="/tally.v1.PaymentService/Pay")
    other = queue.arm(101, 1, 7, serial=6, method="/tally.v1.PaymentService/Pay")
    queue.disarm(other)
    assert queue.due() == []  # armed entries are in flight, not due
    reopened = ReversalQueue(str(tmp_path))
    [due] = reopened.due()  # its client is gone: due now
    assert due == armed
    due = reopened.make_due(due, reverse_serial=9)
    reopened.answer(due, ResultCode.APPROVED, "approved", 0)
    with open(tmp_path / "answered.log", "a") as log:
        log.write('{"original_serial": 1')  # torn by a crash mid-append
    again = ReversalQueue(str(tmp_path))
    assert again.due() == [] and [a.reverse_serial for a in again.answered] == [9]
